"""Fine-tuning against training from scratch, with few labelled selfies: the post's central recipe
at small scale. For each number of labelled selfies and each seed it trains the reference net
twice on the same images, from random weights and from selfie_pretrain.py's weights (first
``--freeze`` layers frozen), and compares test accuracy as a share of the label ceiling.

    python examples/selfie_finetune.py          # ~15 min on 2 cores (pretrains first if needed)

Writes runs/selfie-finetune/: table.md (the table, also printed), finetune.png (the same as a
chart) and results.json. Every run uses the same 16,000 generated selfies (--data-seed 0); a
seed picks the split, the labelled subset, the initial weights and the batch order.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import convlib as cl
from convlib.io import atomic_file
from lib import plots

HERE = os.path.dirname(os.path.abspath(__file__))


def command(script, *args):
    """Run another example command in its own process, as a user would; SystemExit if it fails."""
    done = subprocess.run([sys.executable, os.path.join(HERE, script), *map(str, args)])
    if done.returncode:
        raise SystemExit(f"error: {script} {' '.join(map(str, args))} failed (exit status {done.returncode})")


def run(n, seed, pretrained, freeze, epochs, out):
    """Test accuracy and label ceiling of one selfie_train.py run (no pictures), read back from
    the model file it writes."""
    t0 = time.perf_counter()
    command("selfie_train.py", "--n-labelled", n, "--seed", seed, "--epochs", epochs, "--no-pictures",
            "--no-progress", "--out", out, *(["--pretrained", pretrained, "--freeze", freeze] if pretrained else []))
    meta = cl.load(os.path.join(out, "model.npz"), with_metadata=True)[1]
    acc, ceiling = meta["test_accuracy"], meta["label_ceiling"]
    return dict(n=n, seed=seed, method="fine-tuned" if pretrained else "scratch", acc=acc, ceiling=ceiling,
                share=acc / ceiling, minutes=(time.perf_counter() - t0) / 60)


def table(results, sizes):
    """Markdown: per size, median share of the ceiling [range over seeds] for both methods."""
    lines = ["| labelled selfies | from scratch | fine-tuned | gain (median of paired runs) |",
             "|---|---|---|---|"]
    for n in sizes:
        cell = {}
        for m in ("scratch", "fine-tuned"):
            s = [100 * r["share"] for r in results if r["n"] == n and r["method"] == m]
            cell[m] = f"{np.median(s):.1f}% [{min(s):.1f}–{max(s):.1f}]"
        gains = [100 * (f["share"] - s["share"]) for f in results for s in results
                 if f["n"] == s["n"] == n and f["seed"] == s["seed"] and f["method"] == "fine-tuned"
                 and s["method"] == "scratch"]
        lines.append(f"| {n:,} | {cell['scratch']} | {cell['fine-tuned']} | {np.median(gains):+.1f} pt |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--freeze", type=int, default=6, help="layers kept frozen when fine-tuning")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--pretrained", default="runs/selfie-pretrain/model.npz")
    ap.add_argument("--out", default="runs/selfie-finetune")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if not os.path.exists(args.pretrained):
        print(f"no {args.pretrained} yet: pretraining first")
        command("selfie_pretrain.py", "--no-progress", "--out", os.path.dirname(args.pretrained) or ".")
    results = []
    for n in args.sizes:
        for seed in args.seeds:
            for pretrained in (None, args.pretrained):
                results.append(run(n, seed, pretrained, args.freeze, args.epochs, os.path.join(args.out, "last")))
                r = results[-1]
                print(f"== {n} labelled, seed {seed}, {r['method']}: {100 * r['acc']:.1f}% "
                      f"= {100 * r['share']:.1f}% of the {100 * r['ceiling']:.1f}% ceiling", flush=True)
    text = table(results, args.sizes)
    os.makedirs(args.out, exist_ok=True)
    with atomic_file(os.path.join(args.out, "table.md"), ".md") as tmp, open(tmp, "w") as f:
        f.write(text + "\n")
    with atomic_file(os.path.join(args.out, "results.json"), ".json") as tmp, open(tmp, "w") as f:
        json.dump(dict(results=results, freeze=args.freeze, epochs=args.epochs), f, indent=1)
    series = {m: [100 * np.median([r["share"] for r in results if r["n"] == n and r["method"] == m])
                  for n in args.sizes] for m in ("scratch", "fine-tuned")}
    chart = plots.line_chart(series, f"% of label ceiling, median of {len(args.seeds)} seeds",
                             "labelled selfies", size=(560, 320), xlabels=[f"{n:,}" for n in args.sizes])
    plots.save_png(chart, os.path.join(args.out, "finetune.png"))
    print("\n" + text)
    print(f"\nwrote {args.out}/: table.md finetune.png results.json "
          f"({(time.perf_counter() - t0) / 60:.1f} min)")
    return results


if __name__ == "__main__":
    main()
