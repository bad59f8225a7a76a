"""Domain classifiers: the part of the router that scores each domain for a text.

A classifier kind is registered by name; `load_classifier` reads the kind from the
artifact's manifest, so a config only has to point at an artifact folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

MANIFEST = "manifest.json"


class DomainClassifier(Protocol):
    kind: str
    labels: list[str]
    threshold: float | None  # the confidence threshold chosen at training, if any
    max_length: int  # tokens read of a text; the rest is cut
    reads_context: bool  # whether it scores a turn together with the conversation before it

    def token_count(self, text: str) -> int:
        """How many tokens the classifier's tokenizer makes of a text."""
        ...

    def predict_proba(self, texts: Sequence[str], contexts: Sequence[str] | None = None) -> np.ndarray:
        """One row of domain probabilities (in `labels` order) per text. contexts[i], where given,
        holds the earlier user turns of text i's conversation; a classifier whose
        `reads_context` is false ignores them."""
        ...


class ArtifactError(Exception):
    """A router artifact folder is missing or unusable."""


def _load_embed_linear(folder: Path) -> DomainClassifier:
    from expertmesh.router.embed_linear import EmbeddingLinearClassifier

    return EmbeddingLinearClassifier.load(folder)


def _load_finetune(folder: Path) -> DomainClassifier:
    from expertmesh.router.finetune import FinetunedClassifier

    return FinetunedClassifier.load(folder)


CLASSIFIER_LOADERS: dict[str, Callable[[Path], DomainClassifier]] = {
    "embed-linear": _load_embed_linear,
    "finetune": _load_finetune,
}


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"no router artifact in {folder} (missing {MANIFEST}); train one with `expertmesh router train`"
        )
    return json.loads(path.read_text())


def load_classifier(folder: Path) -> DomainClassifier:
    manifest = read_manifest(folder)
    kind = manifest.get("kind")
    loader = CLASSIFIER_LOADERS.get(kind)
    if loader is None:
        raise ArtifactError(
            f"router artifact {folder} has kind {kind!r}; known kinds: {sorted(CLASSIFIER_LOADERS)}"
        )
    return loader(Path(folder))
