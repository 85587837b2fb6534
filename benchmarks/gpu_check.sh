#!/usr/bin/env bash
# GPU readiness check (issue 13, part 4), on one CUDA GPU in under 8 minutes:
#   1. the CUDA tests (tests that skip without CUDA; selected with -k cuda),
#   2. the optimizer benchmark with --device cuda (time-boxed: --budget-min 2.5),
#   3. the throughput comparison SGD / SAM / XSAM / cheap schedules (ResNet-18, synthetic
#      CIFAR-shaped batches of 128, bf16 autocast, channels_last) -> benchmarks/results/
#      throughput_cuda.{md,json}.
# QUICK=1 (or --smoke) runs step 3 alone, tiny (small_cnn, batch 4), on the CPU, in seconds: tests/
# test_gpu_check.py does that so the script cannot rot where there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
QUICK=${QUICK:-0}
[ "${1:-}" = "--smoke" ] && QUICK=1

if [ "$QUICK" = 1 ]; then
    exec "$PY" benchmarks/gpu_throughput.py --smoke --device cpu "${@:2}"
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: no CUDA GPU here (QUICK=1 runs the CPU smoke mode)" >&2
    exit 2
fi
start=$(date +%s)
"$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
echo "== 1/3 CUDA tests"
timeout 150 "$PY" -m pytest -q -rs -k cuda tests/
echo "== 2/3 optimizer benchmark, --device cuda"
timeout 200 "$PY" benchmarks/bench_optimizer.py --device cuda --budget-min 2.5 \
    --out benchmarks/results/optimizer_cuda.json > benchmarks/results/optimizer_cuda.md
echo "== 3/3 throughput, ResNet-18, bf16 autocast, channels_last"
timeout 150 "$PY" benchmarks/gpu_throughput.py --device cuda
echo "gpu_check.sh: done in $(( $(date +%s) - start )) s; results under benchmarks/results/"
