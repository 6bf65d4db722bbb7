#!/usr/bin/env bash
# Set up .venv if needed, then start the app (on the demo model unless told otherwise): scripts/run.sh [app.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh requirements.txt
exec .venv/bin/python app.py "$@"
