"""The teaching core: its size, one declaration per op, and that it runs on its own (the NumPy
reference, no compiled kernel) with the switch CONVLIB_KERNELS=reference."""
import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import convlib as cl
from convlib.kernels import OPS, reference

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))
from core_lines import BUDGET, code_lines, count  # noqa: E402


def test_the_teaching_core_stays_within_its_budget_of_code_lines():
    parts = count()
    assert "layers.py" in parts["core"] and "kernels/cpu/conv.py" in parts["speed"]
    assert sum(parts["core"].values()) <= BUDGET, parts["core"]


def test_code_lines_skip_docstrings_comments_and_blank_lines():
    source = ('"""Module\ndocstring."""\nimport os  # why\n\n# a comment\n'
              'def f(x):\n    """Doc."""\n    return (x +\n            1)\n')
    assert code_lines(source) == 4                                  # import, def, and the return's two lines


def test_each_op_is_declared_once_in_the_reference_and_a_layer_reaches_its_maths_in_one_hop():
    declared = [name for name, fn in inspect.getmembers(reference, inspect.isfunction)
                if name in OPS and fn.__wrapped__ is OPS[name]]
    assert sorted(declared) == sorted(OPS) and len(OPS) > 30
    assert all(inspect.getsourcefile(fn) == inspect.getsourcefile(reference) for fn in OPS.values())
    assert inspect.getsourcefile(cl.Conv2d.forward) == inspect.getsourcefile(cl.MaxPool2d.forward)
    layers = inspect.getsource(inspect.getmodule(cl.Conv2d))
    assert "ops.conv2d_backward(" in inspect.getsource(cl.Conv2d.backward)
    assert "from .kernels import reference as ops" in layers and "kernels_for" not in layers


_REFERENCE_RUN = """
import json, numpy as np, convlib as cl
from convlib.kernels import kernels_for
compiled_at_import = {}
def compiled():
    import numba, sys
    return {f"{m}.{n}": len(f.signatures) for m, mod in list(sys.modules.items()) if m.startswith("convlib.")
            for n, f in vars(mod).items() if isinstance(f, numba.core.registry.CPUDispatcher) and f.signatures}
at_import = compiled()
cl.manual_seed(0)
net = cl.Sequential(cl.Conv2d(1, 4, 3, padding=1), cl.BatchNorm2d(4), cl.ReLU(), cl.MaxPool2d(2), cl.Flatten(),
                    cl.Linear(36, 2))
x = np.random.default_rng(0).random((16, 1, 6, 6), dtype=np.float32)
y = (x.mean((1, 2, 3)) > 0.5).astype(int)
hist = cl.fit(net, (x, y), epochs=2, batch_size=8, progress=False)
print(json.dumps({"at_import": at_import, "after_fit": compiled(), "set": kernels_for(x).name,
                  "loss": hist["loss"]}))
"""


def _run(kernels):
    env = {k: v for k, v in os.environ.items() if k != "CONVLIB_KERNELS"}
    if kernels:
        env["CONVLIB_KERNELS"] = kernels
    out = subprocess.run([sys.executable, "-c", _REFERENCE_RUN], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_with_the_reference_switch_training_compiles_no_kernel_and_learns_the_same():
    ref, fast = _run("reference"), _run(None)
    assert ref["set"] == "reference" and ref["at_import"] == {} and ref["after_fit"] == {}
    assert fast["set"] == "cpu" and fast["at_import"] == {} and fast["after_fit"]   # compiled on first use only
    np.testing.assert_allclose(ref["loss"], fast["loss"], rtol=1e-5)


def test_use_kernels_rejects_an_unknown_name_and_keeps_the_set():
    from convlib.kernels import kernels_for
    before = kernels_for(np.zeros(1)).name                          # "cpu", or "reference" under the switch
    with pytest.raises(ValueError, match="unknown kernel set 'fast'"):
        cl.use_kernels("fast")
    assert kernels_for(np.zeros(1)).name == before == os.environ.get("CONVLIB_KERNELS", "cpu")
