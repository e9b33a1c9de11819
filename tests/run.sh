#!/usr/bin/env bash
# Set up .venv (a no-op when it is current) and Chromium, lint, then run every test, slow ones
# included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash jobs/setup.sh
# The report tests open pages in Debian's Chromium (driven by Playwright, no browser download).
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "tests: installing Debian's chromium for the report tests"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium fonts-dejavu-core >/dev/null
    else
        echo "tests: the report tests need Chromium: sudo apt-get install chromium" >&2
    fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Two workers, each test file on one of them (its module fixtures run once), the files in the
# order conftest.py gives them (slow ones first). The suite is CPU-bound on two cores (its
# studies start Ray, actors, servers): three workers took as long here (20.5-21 min), four
# longer. The slowest tests are listed at the end, to see where its minutes go.
.venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=25 "$@"
