#!/usr/bin/env bash
# The GPU check in one command: versions, the GPU-marked tests, the kernel benchmarks (group -1 and
# group 128 act-order) and the 40-layer synthetic StarCoder-15B. Every log and JSON goes to OUTDIR.
# Usage: scripts/gpu_check.sh [--dry-run] OUTDIR
#   PYTHON picks the interpreter (default python3). --dry-run prints the stages without running them.
# Each stage runs under its own timeout; together they stay under 6 minutes, so a second run after
# fixes still fits in the same GPU session.
set -uo pipefail

dry=0
if [ "${1:-}" = "--dry-run" ]; then
    dry=1
    shift
fi
if [ $# -ne 1 ]; then
    echo "usage: $0 [--dry-run] OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
out=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the Triton interpreter is for the CPU tests; on the GPU every kernel must be compiled for real
unset TRITON_INTERPRET

# seconds per stage; their sum (340) plus start-up stays under 360
T_VERSIONS=30
T_TESTS=90
T_KERNELS=40
T_SYNTHETIC=110
T_DECODE=60

status=0
summary=()

stage() {  # stage NAME SECONDS COMMAND...: run COMMAND under its timeout, output in OUTDIR/NAME.log
    local name=$1 seconds=$2
    shift 2
    local log="$out/$name.log"
    if [ "$dry" = 1 ]; then
        echo "[dry-run] $name (timeout ${seconds}s): $* > $log"
        summary+=("$(printf '%-22s %-26s %s' "$name" "not run (dry run)" "$log")")
        return 0
    fi
    echo "== $name (timeout ${seconds}s)"
    local start=$SECONDS rc verdict
    timeout --kill-after=10 "$seconds" "$@" >"$log" 2>&1
    rc=$?
    case $rc in
        0) verdict="ok" ;;
        124 | 137) verdict="TIMEOUT after ${seconds}s" ;;
        *) verdict="FAILED (exit $rc)" ;;
    esac
    [ "$rc" = 0 ] || status=1
    summary+=("$(printf '%-22s %-26s %4ds  %s' "$name" "$verdict" $((SECONDS - start)) "$log")")
    if [ "$rc" != 0 ]; then
        tail -n 15 "$log" | sed "s/^/    $name| /"
    fi
}

if ! command -v "$py" >/dev/null; then
    echo "no $py here: set PYTHON to the interpreter that has torch" >&2
    exit 1
fi
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    if [ "$dry" = 0 ]; then
        echo "no CUDA device: $py sees no GPU (or has no torch); this check needs one" >&2
        exit 1
    fi
    echo "[dry-run] no CUDA device here; showing the stages anyway"
fi

stage versions "$T_VERSIONS" "$py" - "$out/versions.json" <<'EOF'
import importlib, json, os, platform, sys
info = {"python": platform.python_version(), "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET")}
for name in ("torch", "triton", "transformers", "huggingface_hub", "numpy", "safetensors", "pytest", "gradio"):
    try:
        info[name] = importlib.import_module(name).__version__
    except Exception as exc:
        info[name] = f"missing ({type(exc).__name__})"
import torch
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_GiB=round(p.total_memory / 2**30, 1),
                cuda=torch.version.cuda)
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info, indent=1))
EOF

if "$py" -c "import pytest" 2>/dev/null; then
    # test folders whose conftest needs a package this machine lacks are not collected (the GPU
    # image has no gradio, and so no uvicorn/openai server stack); their GPU tests, if any, are named
    ignore=()
    for need in "tests/ui:gradio" "tests/api:uvicorn,openai"; do
        dir=${need%%:*} modules=${need##*:}
        if ! "$py" -c "import $modules" 2>/dev/null; then
            ignore+=("--ignore=$dir")
            echo "note: $dir not collected: $py cannot import $modules"
        fi
    done
    stage gpu_tests "$T_TESTS" "$py" -m pytest -q -p no:cacheprovider -m gpu \
        --junitxml="$out/gpu_tests.xml" "${ignore[@]}" tests
else
    echo "note: pytest is not installed for $py: the GPU-marked tests were not run" >&2
    summary+=("$(printf '%-22s %-26s' gpu_tests "NOT RUN (no pytest)")")
    status=1
fi

stage kernels_g-1 "$T_KERNELS" "$py" bench/kernels.py --json "$out/kernels_g-1.json"
stage kernels_g128_act "$T_KERNELS" "$py" bench/kernels.py --group-size 128 --act-order \
    --json "$out/kernels_g128_act.json"
stage starcoder_synthetic "$T_SYNTHETIC" "$py" bench/starcoder_synthetic.py --json "$out/starcoder_synthetic.json"
# the decode step eager against captured (static cache, CUDA graphs), host overhead and the demo model
stage decode_overhead "$T_DECODE" "$py" bench/decode_overhead.py --models overhead40,demo \
    --out "$out/decode_overhead.json"

echo
echo "== summary (outputs in $out)"
printf '%s\n' "${summary[@]}"
exit $status
