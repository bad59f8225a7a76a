"""Where expertmesh keeps what it makes: one folder, $EXPERTMESH_HOME (default ~/.cache/expertmesh).

Router artifacts, the converted embedded model, the router's ONNX exports, vLLM server logs and
the vLLM servers' own compile caches all live under it, so one variable moves (or isolates) all
of it. Read when a path is needed, never at import: a test or a command may set it first.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "EXPERTMESH_HOME"
DEFAULT_HOME = "~/.cache/expertmesh"


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def router_artifacts() -> Path:
    """Where `expertmesh router train` writes routers, unless told otherwise."""
    return home() / "routers"


def packaged_router() -> Path:
    """The trained router shipped inside the package (router/artifacts/finetune in the
    repository): the default, so that a new install routes without training first."""
    from importlib import resources

    return Path(str(resources.files("expertmesh.router").joinpath("artifacts", "finetune")))


def model_cache() -> Path:
    """Models converted for serving (the packaged SmolLM2 GGUF -> safetensors)."""
    return home() / "models"


def onnx_cache() -> Path:
    """The router encoder's ONNX exports."""
    return home() / "onnx"


def logs() -> Path:
    return home() / "logs"


def vllm_cache() -> Path:
    """VLLM_CACHE_ROOT for the vLLM servers that `expertmesh experts serve` starts."""
    return home() / "vllm"
