"""Training the embedding + linear router on the vendored data.

The texts are embedded once; every split (source-held-out, random) and the final
model are logistic regressions fitted on those embeddings.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from router.data import (
    HELD_OUT_SOURCES,
    cap_per_source,
    data_files,
    fingerprint,
    read_examples,
    split_held_out_sources,
    vendored_data_dir,
)
from router.embed_linear import EmbeddingLinearClassifier
from router.encoder import ENCODER_NAME, TextEncoder
from router.metrics import classification_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    max_per_source: int = 1500
    seed: int = 0
    test_size: float = 0.2  # of the random split
    regularization_c: float = 4.0
    max_length: int = 128


@dataclass
class TrainResult:
    folder: Path
    metrics: dict  # {"held_out_sources": ..., "random_split": ..., "train": ...}


def _fit(x: np.ndarray, y: np.ndarray, settings: TrainSettings) -> LogisticRegression:
    model = LogisticRegression(C=settings.regularization_c, max_iter=2000, class_weight="balanced")
    return model.fit(x, y)


def _evaluate_split(x, y, train_idx, test_idx, labels, settings) -> dict:
    model = _fit(x[train_idx], y[train_idx], settings)
    predicted = model.classes_[model.predict_proba(x[test_idx]).argmax(axis=1)]
    return classification_metrics(
        [labels[i] for i in y[test_idx]], [labels[i] for i in predicted], labels
    )


def train_embed_linear(
    out: Path,
    domains: list[str],
    settings: TrainSettings = TrainSettings(),
    data_dir: Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_embedded: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train, evaluate on held-out sources and a random split, and write the artifact."""
    data_dir = data_dir or vendored_data_dir()
    examples = cap_per_source(read_examples(data_dir, domains), settings.max_per_source, settings.seed)
    labels = [d for d in domains if any(e.domain == d for e in examples)]
    texts = [e.text for e in examples]
    y = np.array([labels.index(e.domain) for e in examples])

    if on_start:
        on_start(len(texts))
    started = time.perf_counter()
    encoder = TextEncoder(max_length=settings.max_length)
    x = encoder.encode(texts, on_batch=on_embedded)
    embed_seconds = time.perf_counter() - started

    train_idx, test_idx = split_held_out_sources(examples)
    held_out = _evaluate_split(x, y, np.array(train_idx), np.array(test_idx), labels, settings)
    held_out["sources"] = {d: s for d, s in HELD_OUT_SOURCES.items() if d in labels}
    rnd_train, rnd_test = train_test_split(
        np.arange(len(y)), test_size=settings.test_size, random_state=settings.seed, stratify=y
    )
    random_split = _evaluate_split(x, y, rnd_train, rnd_test, labels, settings)

    final = _fit(x, y, settings)
    classifier = EmbeddingLinearClassifier(encoder, labels, final.coef_, final.intercept_)
    metrics = {"held_out_sources": held_out, "random_split": random_split}
    manifest = {
        "encoder": ENCODER_NAME,
        "labels": labels,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data_fingerprint": fingerprint(data_files(data_dir), **asdict(settings)),
        "settings": asdict(settings),
        "train_examples": len(texts),
        "examples_per_domain": dict(Counter(e.domain for e in examples)),
        "embed_seconds": round(embed_seconds, 1),
        "metrics": {name: {k: m[k] for k in ("accuracy", "macro_f1", "n")} for name, m in metrics.items()},
    }
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    classifier.save(tmp, manifest)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    # Replace the old artifact only once the new one is complete.
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("router artifact written to %s", out)
    return TrainResult(out, metrics)


def current_fingerprint(settings: TrainSettings, data_dir: Path | None = None) -> str:
    return fingerprint(data_files(data_dir or vendored_data_dir()), **asdict(settings))
