"""Router v1: MiniLM sentence embeddings and a multinomial logistic regression.

The trained regression is stored as plain arrays (no pickle) and applied with numpy:
a softmax over `(embedding @ coef.T + intercept) / temperature`: sklearn's predict_proba
with the calibration temperature fitted on held-out sources.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from expertmesh.router.classifier import MANIFEST, ArtifactError, read_manifest
from expertmesh.router.encoder import ENCODER_NAME, Encoder, load_encoder

WEIGHTS = "linear.npz"
LABELS = "labels.json"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class EmbeddingLinearClassifier:
    kind = "embed-linear"
    reads_context = False  # a conversation is weighed by router/policy.py's combine_turns

    def __init__(
        self,
        encoder: Encoder,
        labels: list[str],
        coef: np.ndarray,
        intercept: np.ndarray,
        temperature: float = 1.0,
        threshold: float | None = None,
    ) -> None:
        if coef.shape != (len(labels), encoder.dimension) or intercept.shape != (len(labels),):
            raise ArtifactError(
                f"weights of shape {coef.shape} / {intercept.shape} do not match "
                f"{len(labels)} labels and a {encoder.dimension}-d encoder"
            )
        self.encoder = encoder
        self.labels = list(labels)
        self._coef_t = np.ascontiguousarray(coef.T, dtype=np.float32)
        self._intercept = intercept.astype(np.float32)
        self.temperature = float(temperature)
        self.threshold = threshold  # the calibrated confidence threshold, if trained with one

    def token_count(self, text: str) -> int:
        return self.encoder.token_count(text)

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    def predict_proba(self, texts: Sequence[str], contexts: Sequence[str] | None = None) -> np.ndarray:
        return self.proba_from_embeddings(self.encoder.encode(texts))

    def proba_from_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        return softmax((embeddings @ self._coef_t + self._intercept) / self.temperature)

    def save(self, folder: Path, manifest: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.save(folder)
        np.savez(folder / WEIGHTS, coef=self._coef_t.T, intercept=self._intercept, temperature=self.temperature)
        (folder / LABELS).write_text(json.dumps(self.labels))
        manifest = {**manifest, "kind": self.kind, "encoder": self.encoder.name, "encoder_max_length": self.encoder.max_length}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))

    @classmethod
    def load(cls, folder: Path, encoder: Encoder | None = None) -> EmbeddingLinearClassifier:
        manifest = read_manifest(folder)
        try:
            labels = json.loads((folder / LABELS).read_text())
            with np.load(folder / WEIGHTS) as weights:
                coef, intercept = weights["coef"], weights["intercept"]
                temperature = float(weights["temperature"]) if "temperature" in weights else 1.0
        except (OSError, KeyError, ValueError) as exc:
            raise ArtifactError(f"router artifact {folder} is incomplete or corrupt: {exc}") from exc
        name = manifest.get("encoder", "minilm")
        name = "minilm" if name == ENCODER_NAME else name  # artifacts of the first slice named the model
        encoder = encoder or load_encoder(name, folder, manifest.get("encoder_max_length", 128))
        return cls(encoder, labels, coef, intercept, temperature, manifest.get("threshold"))
