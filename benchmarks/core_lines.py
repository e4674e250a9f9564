"""How big is the teaching core? Code lines (no docstrings, comments or blank lines) per file of
convlib/, the speed machinery beside it counted apart.

    python benchmarks/core_lines.py            # a table per part and the totals; exit 1 over the budget
    python benchmarks/core_lines.py --markdown # the teaching core's table in docs/reading-guide.md

The teaching core is what a learner reads: every module of convlib/ except the CPU and CUDA
kernels (convlib/kernels/cpu/, convlib/kernels/cuda/), the fused units (fused.py), the
distributed pieces and the deprecated aliases of moved modules. Its budget is 1,700 code lines
(docs/reading-guide.md).
"""
import ast
import io
import os
import sys
import tokenize

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "convlib")
BUDGET = 1700
SPEED = ("kernels/cpu/", "kernels/cuda/", "distributed.py", "fused.py")   # the speed machinery, beside the core
ALIASES = ("threads.py", "kernels/cuda_memory.py")                  # deprecated aliases of moved modules


def code_lines(source):
    """The number of lines of ``source`` that hold code: not blank, not only a comment, not part
    of a docstring (the first string of a module, class or function)."""
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            value = getattr(first, "value", None)
            if isinstance(first, ast.Expr) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    lines = set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in docstrings)
    return len(lines)


def count():
    """{part: {path relative to convlib/: code lines}} for the parts "core", "speed" and "aliases"."""
    parts = {"core": {}, "speed": {}, "aliases": {}}
    for folder, _, files in sorted(os.walk(ROOT)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/")
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    n = code_lines(f.read())
                part = "aliases" if path in ALIASES else "speed" if path.startswith(SPEED) else "core"
                parts[part][path] = n
    return parts


# The reading order of docs/reading-guide.md, and what each file holds.
ORDER = {
    "kernels/reference.py": "the maths of every op, forward and backward, in NumPy",
    "layers.py": "`Parameter`, the `Layer` contract, every layer calling its ops",
    "model.py": "the containers `Sequential` and `Residual`",
    "losses.py": "softmax and the cross-entropy loss",
    "optim.py": "SGD, Adam, AdamW and learning-rate schedules",
    "train.py": "`fit`, `evaluate`, `predict_proba`",
    "gradcheck.py": "gradients by central differences, to check any layer",
    "io.py": "model files: JSON architecture + arrays, never pickle",
    "data.py": "images and IDX files to arrays, augmentations",
    "kernels/__init__.py": "how a call to an op finds the backend for its array",
    "backend.py": "host and GPU arrays, copies between them",
    "progress.py": "the progress bar",
    "rng.py": "the random generator of initialisation and dropout",
    "__init__.py": "what `import convlib as cl` gives you",
}


def markdown(core):
    """The teaching core's files in reading order with their code lines, as a Markdown table."""
    rows = [f"| {i} | [`convlib/{path}`](../convlib/{path}) | {core[path]:,} | {what} |"
            for i, (path, what) in enumerate(ORDER.items(), 1)]
    rest = sorted(set(core) - set(ORDER))
    rows += [f"| | [`convlib/{path}`](../convlib/{path}) | {core[path]:,} | |" for path in rest]
    return "\n".join(["| # | file | code lines | what it holds |", "| --- | --- | ---: | --- |", *rows,
                      f"| | **teaching core** | **{sum(core.values()):,}** | budget {BUDGET:,} |"])


def main():
    parts = count()
    if "--markdown" in sys.argv:
        print(markdown(parts["core"]))
        return 0
    for part, files in parts.items():
        print(f"\n{part}: {sum(files.values()):,} code lines")
        for path, n in sorted(files.items(), key=lambda kv: -kv[1]):
            print(f"  {n:5d}  convlib/{path}")
    total = sum(parts["core"].values())
    print(f"\nteaching core: {total:,} code lines (budget {BUDGET:,})\n\nrerun: python benchmarks/core_lines.py")
    return 0 if total <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
