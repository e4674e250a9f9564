#!/usr/bin/env bash
# First contact with an NVIDIA GPU: the one prepared script of checks and benchmarks. From the
# repository root, on the GPU machine:
#
#     pip install -e ".[test,gpu]" torch     # numba-cuda (pinned in setup.cfg) and torch with CUDA
#     bash benchmarks/gpu_check.sh           # a few minutes; writes runs/gpu_check/
#
# 1. the device, driver and compiler versions; 2. that numba's simulator is off (else every
# "GPU" result below would be the CPU's); 3. the CUDA tests on the GPU, each launch synchronised
# (CUDA_LAUNCH_BLOCKING=1, so an error names the kernel that made it); 4. compute-sanitizer's
# memcheck, racecheck and synccheck on the shared-memory kernels (the products with their split-K
# tickets, the per-channel sums of batch norm), where the tool is installed; 5. benchmarks/bench_gpu.py at batch 32 and 256 against
# PyTorch CUDA. Stops at the first failure; everything it prints is also in runs/gpu_check/log.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/gpu_check
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1

echo "== 1. device, driver, compiler"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || echo "nvidia-smi: not found"
python - <<'EOF'
import numba
from numba import config, cuda
print("numba", numba.__version__)
try:
    import numba_cuda
    print("numba-cuda", numba_cuda.__version__)
except ImportError:
    print("numba-cuda: not installed (numba's built-in CUDA target)")
# == 2.
assert not config.ENABLE_CUDASIM, "NUMBA_ENABLE_CUDASIM=1 is set: unset it, or nothing here runs on the GPU"
assert cuda.is_available(), "numba.cuda sees no GPU: check the driver (nvidia-smi) and the gpu extra"
cuda.detect()
print("driver CUDA", cuda.cudadrv.driver.driver.get_version(), "| runtime", cuda.runtime.get_version())
EOF

echo "== 3. the CUDA tests on the GPU, launches synchronised"
CUDA_LAUNCH_BLOCKING=1 python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_contract.py -k "cuda or matmul"

echo "== 4. compute-sanitizer"
if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck synccheck; do
        compute-sanitizer --tool "$tool" --error-exitcode 1 \
            python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_contract.py \
            -k "matmul or weight_gradient or batch_norm or ((conv2d or batchnorm or dense) and cuda)"
    done
else
    echo "compute-sanitizer: not installed (it comes with the CUDA toolkit); skipped"
fi

echo "== 5. training steps against PyTorch CUDA"
python benchmarks/bench_gpu.py --batches 32 256 | tee "$out/bench_gpu.txt"
