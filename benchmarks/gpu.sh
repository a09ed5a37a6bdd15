#!/usr/bin/env bash
# The GPU benchmark: training MFU (small, medium) vs Hugging Face Llama, batch-1 and batch-64 decode vs HF generate,
# serving throughput at 32 concurrent streams. Writes benchmarks/gpu.md. Under 8 minutes on one H100/H200.
#
#   bash benchmarks/gpu.sh                 # from the repository, with minimind installed (pip install -e .)
#   bash benchmarks/gpu.sh --parts train   # one part; any flag of benchmarks/gpu.py
#   bash benchmarks/gpu.sh --smoke         # toy sizes, any machine (writes benchmarks/gpu-smoke.md)
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/gpu.md
for arg in "$@"; do [ "$arg" = "--smoke" ] && out=benchmarks/gpu-smoke.md; done
if [ "$out" = benchmarks/gpu.md ] && ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu.sh: no CUDA device visible to torch (python -c 'import torch; print(torch.cuda.is_available())');" \
         "run it on a GPU machine, or add --smoke to check the script here" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
# 9 minutes at most: the report is written after each part, so a slow part still leaves the others' numbers.
timeout 540 python benchmarks/gpu.py --out "$out" "$@"
echo "report: $out"
