#!/usr/bin/env bash
# The GPU checks in one go: GPU-marked kernel and decode tests, then the GPU benchmarks (JSON in bench/out/).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-}:$PWD"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
status=0
if python -c "import pytest" 2>/dev/null; then
    python -m pytest -q -p no:cacheprovider -m gpu tests/kernels || status=1
    python -m pytest -q -p no:cacheprovider -m gpu tests/backend/test_decode.py || status=1
else
    echo "pytest is not installed here: skipping the GPU tests, running the benchmarks" >&2
fi
python bench/kernels.py || status=1
python bench/kernels.py --group-size 128 --act-order || status=1
timeout 480 python bench/starcoder_synthetic.py || status=1
timeout 300 python bench/decode_overhead.py --models overhead40,demo --out bench/out/decode_overhead_gpu.json || status=1
exit $status
