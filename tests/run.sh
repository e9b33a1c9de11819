#!/usr/bin/env bash
# Set up .venv (a no-op when it is current), lint, then run every test, slow ones included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash jobs/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
