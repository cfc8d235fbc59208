#!/usr/bin/env bash
# The one prepared GPU check (docs/contract.md, "GPU checks"): run on a machine with a CUDA GPU, CuPy and a
# CUDA build of torch, from the repository root or anywhere:
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]        # default: benchmarks/results
#
# 1. the kernels against their PyTorch references (pytest -m gpu tests/test_kernels_gpu.py),
# 2. timings: kernel vs eager vs torch.compile, bandwidth vs a device copy (benchmarks/gpu_bench.py),
# within about 8 minutes (each step has its own time limit). Writes RESULTS_DIR/gpu_tests.txt,
# gpu_kernels.md and gpu_kernels.json, and exits non-zero if the tests or the benchmark failed.
# Set PRN_GPU_CHECK_NO_COMPILE=1 to skip torch.compile (its warm-ups take most of the time).
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-benchmarks/results}
PY=${PYTHON:-python}
mkdir -p "$RESULTS"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
"$PY" - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device available: {torch.cuda.is_available()}")
from prn_edge import kernels
print("fused kernels:", kernels.fused_available())
PY

echo "== correctness: pytest -m gpu tests/test_kernels_gpu.py"
timeout 300 "$PY" -m pytest -q -m gpu -p no:cacheprovider -rs tests/test_kernels_gpu.py 2>&1 | tee "$RESULTS/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}

echo "== timings: benchmarks/gpu_bench.py"
extra=()
[ "${PRN_GPU_CHECK_NO_COMPILE:-0}" = "1" ] && extra+=(--no-compile)
timeout 270 "$PY" benchmarks/gpu_bench.py --out "$RESULTS/gpu_kernels.md" "${extra[@]}"
bench_rc=$?

echo "== done: tests exit $tests_rc, benchmark exit $bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
