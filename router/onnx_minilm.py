"""MiniLM through ONNX Runtime: sentence embeddings with the same numbers as
sentence-transformers (mean pooling, L2 normalisation), or a fine-tuned classifier's logits,
~2.5x faster than torch on CPU; with int8 weights ~5x faster, at a small cost in accuracy
(BENCHMARKS.md has both, measured side by side).

The ONNX graph is exported from the model folder once and cached (a few seconds); the export
needs torch, inference only onnxruntime.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from expertmesh import paths

OPSET = 17


def import_onnxruntime():
    """onnxruntime, imported so that it writes nothing in the user's home.

    On import, ONNX Runtime creates a telemetry device id and database under
    $XDG_CACHE_HOME/Microsoft/DeveloperTools (~/.cache when unset). Unless the user chose
    XDG_CACHE_HOME, it goes under $EXPERTMESH_HOME with expertmesh's other files; the variable is
    set for the import only, so that nothing else (child processes included) sees it. Telemetry
    events are switched off: a gateway has no business reporting on its users.
    """
    if "onnxruntime" in sys.modules or os.environ.get("XDG_CACHE_HOME"):
        import onnxruntime
    else:
        os.environ["XDG_CACHE_HOME"] = str(paths.home())
        try:
            import onnxruntime
        finally:
            del os.environ["XDG_CACHE_HOME"]
    onnxruntime.disable_telemetry_events()
    return onnxruntime


HEADS = ("mean_pooled", "logits")  # a sentence embedding, or a sequence classifier's logits


def cached_model(model_dir: str, quantized: bool, head: str = "mean_pooled", cache: Path | None = None) -> Path:
    """The path of the exported (and, if asked, int8-quantised) graph, exported on first use
    into `cache` (default: $EXPERTMESH_HOME/onnx)."""
    if head not in HEADS:
        raise ValueError(f"unknown head '{head}'; known heads: {list(HEADS)}")
    onnxruntime = import_onnxruntime()

    # The weights' size and time stamp are in the key: a model retrained in place is exported again.
    weights = sorted(Path(model_dir).glob("*.safetensors")) + sorted(Path(model_dir).glob("*.bin"))
    stamp = [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights]
    key = hashlib.sha256(f"{model_dir}|{stamp}|{head}|{onnxruntime.__version__}".encode()).hexdigest()[:12]
    folder = (cache or paths.onnx_cache()).expanduser()
    fp32 = folder / f"minilm-{key}.onnx"
    if not fp32.exists():
        _atomic_write(fp32, lambda tmp: _export(model_dir, tmp, head))
    if not quantized:
        return fp32
    int8 = folder / f"minilm-{key}-int8.onnx"
    if not int8.exists():
        _atomic_write(int8, lambda tmp: _quantize(fp32, tmp))
    return int8


def _atomic_write(target: Path, write) -> None:
    """Write beside the target and rename: processes that export at once never read half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a graph is read by whoever serves it
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _export(model_dir: str, target: Path, head: str) -> None:
    import warnings

    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    class Logits(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    class MeanPooled(torch.nn.Module):
        """MiniLM + the sentence-transformers head (mean over real tokens, then L2 norm)."""

        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if head == "logits":
        module = Logits(AutoModelForSequenceClassification.from_pretrained(model_dir).eval()).eval()
    else:
        module = MeanPooled(AutoModel.from_pretrained(model_dir).eval()).eval()
    sample = tokenizer(["an example sentence"], return_tensors="pt")
    dynamic = {
        "input_ids": {0: "batch", 1: "tokens"},
        "attention_mask": {0: "batch", 1: "tokens"},
        "embedding": {0: "batch"},
    }
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python branches
        torch.onnx.export(
            module, (sample["input_ids"], sample["attention_mask"]), str(target),
            input_names=["input_ids", "attention_mask"], output_names=["output"],
            dynamic_axes=dynamic, opset_version=OPSET, dynamo=False,
        )  # fmt: skip


def export_logits(model_dir: Path, target: Path) -> None:
    """A fine-tuned sequence classifier's logits graph, written to `target`."""
    _atomic_write(Path(target), lambda tmp: _export(str(model_dir), tmp, "logits"))


def quantize_int8(source: Path, target: Path) -> None:
    _atomic_write(Path(target), lambda tmp: _quantize(Path(source), tmp))


def _quantize(source: Path, target: Path) -> None:
    import_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel scales: per-tensor int8 cost the fine-tuned router 1.2 points of held-out
    # accuracy, per-channel 0.2 (BENCHMARKS.md), at the same 23 MB.
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)


THREADS_ENV = "EXPERTMESH_ROUTER_THREADS"


def router_threads() -> int:
    """Threads for the encoder: $EXPERTMESH_ROUTER_THREADS if set (the gateway's worker processes
    split the cores between them), else as many as CPUs this process may run on (not the
    machine's count: a gateway pinned to one core would otherwise run two threads that take
    turns on it)."""
    if os.environ.get(THREADS_ENV):
        return max(1, int(os.environ[THREADS_ENV]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0


class OnnxModel:
    """Runs tokenised batches through an ONNX Runtime session (thread-safe: run() may be called
    concurrently; the tokenizer is the caller's to guard)."""

    def __init__(self, model_dir: str, quantized: bool = False, head: str = "mean_pooled", graph: Path | None = None) -> None:
        onnxruntime = import_onnxruntime()
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # the exported graph's harmless shape warnings
        # ONNX Runtime's worker threads spin while waiting for work by default: on a machine that
        # the gateway shares with model servers, that spinning takes their CPU.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.intra_op_num_threads = router_threads()
        graph = graph or cached_model(model_dir, quantized, head)
        self._session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    @classmethod
    def from_file(cls, graph: Path) -> OnnxModel:
        """A graph exported before (a shipped router artifact's model.onnx)."""
        return cls("", graph=Path(graph))

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        return self._session.run(None, feeds)[0]
