"""Training the embedding + linear router on the vendored data.

1. A balanced sample of the data (every domain alike, every source within it alike), plus
   one user-like variant of each text (router/augment.py).
2. Everything is embedded once.
3. A model fitted without the held-out sources (router/data.py) is tested on them: that
   dev split gives the honest metrics, the temperature that calibrates the confidences and
   the confidence threshold for the target misroute rate.
4. The final model is fitted on everything, with that temperature and threshold.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from expertmesh.router.augment import variant
from expertmesh.router.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    softmax,
    threshold_for_misroute_rate,
)
from expertmesh.router.data import (
    HELD_OUT_SOURCES,
    Example,
    balanced_sample,
    fingerprint,
    load_routing_data,
    training_files,
    vendored_data_dir,
)
from expertmesh.router.embed_linear import EmbeddingLinearClassifier
from expertmesh.router.encoder import build_encoder
from expertmesh.router.metrics import classification_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    per_domain: int = 1500  # originals drawn per domain, shared evenly among its sources
    variants_per_example: int = 1  # user-like variants added per original
    seed: int = 0
    # Strong L2 regularisation: measured by leave-one-source-out, C=4 gave 0.65 mean accuracy,
    # C=0.25 0.70, C=0.015 0.72 (BENCHMARKS.md); weak features of one source then generalise less.
    regularization_c: float = 0.02
    max_length: int = 128
    target_misroute: float = 0.05  # the threshold keeps routed decisions at most this often wrong
    encoder: str = "minilm"  # router/encoder.py: minilm, minilm-static or minilm+static


@dataclass
class Corpus:
    """The training texts and their embeddings, row-aligned."""

    examples: list[Example]
    x: np.ndarray
    labels: list[str]
    y: np.ndarray = field(init=False)
    original: np.ndarray = field(init=False)  # True where the text is not an augmentation
    source: np.ndarray = field(init=False)  # "domain/source" per row

    def __post_init__(self) -> None:
        self.y = np.array([self.labels.index(e.domain) for e in self.examples])
        self.original = np.array([not e.transform for e in self.examples])
        self.source = np.array([e.origin or f"{e.domain}/{e.source}" for e in self.examples])


@dataclass
class TrainResult:
    folder: Path
    classifier: EmbeddingLinearClassifier  # the final model
    held_out_classifier: EmbeddingLinearClassifier  # fitted without the held-out sources
    corpus: Corpus
    dev: np.ndarray  # indices of the held-out sources' original texts
    metrics: dict


def build_examples(data_dir: Path, domains: list[str], settings: TrainSettings) -> list[Example]:
    originals = balanced_sample(load_routing_data(data_dir, domains), settings.per_domain, settings.seed)
    rng = random.Random(settings.seed)
    variants = []
    for example in originals:
        for _ in range(settings.variants_per_example):
            if made := variant(example.text, rng):
                variants.append(replace(example, text=made[1], transform=made[0], parent=example.text))
    return originals + variants


def fit_linear(x: np.ndarray, y: np.ndarray, n_labels: int, settings: TrainSettings) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression; rows for labels absent from y get no probability mass."""
    from sklearn.linear_model import LogisticRegression  # here: serving never trains, nor imports sklearn

    model = LogisticRegression(C=settings.regularization_c, max_iter=2000, class_weight="balanced").fit(x, y)
    coef = np.zeros((n_labels, x.shape[1]), dtype=np.float32)
    intercept = np.full(n_labels, -1e4, dtype=np.float32)
    coef[model.classes_], intercept[model.classes_] = model.coef_, model.intercept_
    return coef, intercept


def logits_of(coef: np.ndarray, intercept: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ coef.T + intercept


def held_out_mask(corpus: Corpus) -> np.ndarray:
    held_out = {f"{domain}/{source}" for domain, source in HELD_OUT_SOURCES.items()}
    return np.array([(e.origin or f"{e.domain}/{e.source}") in held_out for e in corpus.examples])


def calibrate_on_dev(corpus: Corpus, settings: TrainSettings) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, dict]:
    """Fit without the held-out sources; measure, calibrate and pick the threshold on them."""
    held_out = held_out_mask(corpus)
    coef, intercept = fit_linear(corpus.x[~held_out], corpus.y[~held_out], len(corpus.labels), settings)
    dev = np.nonzero(held_out & corpus.original)[0]
    metrics = held_out_report(logits_of(coef, intercept, corpus.x[dev]), corpus, dev, settings.target_misroute)
    return (coef, intercept), dev, metrics


def held_out_report(logits: np.ndarray, corpus: Corpus, dev: np.ndarray, target_misroute: float) -> dict:
    """Metrics and calibration (temperature, ECE, reliability, threshold) on the held-out sources."""
    return held_out_report_for(logits, [corpus.examples[i] for i in dev], corpus.labels, target_misroute)


def held_out_report_for(logits: np.ndarray, examples: list[Example], labels: list[str], target_misroute: float) -> dict:
    gold = np.array([labels.index(e.domain) for e in examples])
    temperature = fit_temperature(logits, gold)
    raw, calibrated = softmax(logits), softmax(logits / temperature)
    metrics = classification_metrics([labels[i] for i in gold], [labels[i] for i in calibrated.argmax(1)], labels)
    metrics["sources"] = {d: s for d, s in HELD_OUT_SOURCES.items() if d in labels}
    calibration = {
        "temperature": round(temperature, 4),
        "ece_before": round(expected_calibration_error(raw, gold), 4),
        "ece_after": round(expected_calibration_error(calibrated, gold), 4),
        "reliability": reliability_bins(calibrated, gold),
        "threshold": threshold_for_misroute_rate(calibrated, gold, target_misroute),
    }
    return {"held_out_sources": metrics, "calibration": calibration}


def train_embed_linear(
    out: Path,
    domains: list[str],
    settings: TrainSettings = TrainSettings(),
    data_dir: Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_embedded: Callable[[int], None] | None = None,
    extra: Sequence[Example] = (),
) -> TrainResult:
    """Train, calibrate on the held-out sources, and write the artifact folder. `extra`: more
    labelled rows to train on as they are (e.g. `expertmesh log export`'s, from the gateway's traffic)."""
    data_dir = data_dir or vendored_data_dir()
    examples = build_examples(data_dir, domains, settings) + [replace(e, origin=e.origin or f"{e.domain}/{e.source}")
                                                               for e in extra]  # fmt: skip
    labels = [d for d in domains if any(e.domain == d for e in examples)]
    if on_start:
        on_start(len(examples))
    started = time.perf_counter()
    encoder = build_encoder(settings.encoder, settings.max_length)
    corpus = Corpus(examples, encoder.encode([e.text for e in examples], on_batch=on_embedded), labels)
    embed_seconds = time.perf_counter() - started

    (dev_coef, dev_intercept), dev, metrics = calibrate_on_dev(corpus, settings)
    calibration = metrics["calibration"]
    temperature = calibration["temperature"]
    held_out_classifier = EmbeddingLinearClassifier(encoder, labels, dev_coef, dev_intercept, temperature)
    coef, intercept = fit_linear(corpus.x, corpus.y, len(labels), settings)
    classifier = EmbeddingLinearClassifier(encoder, labels, coef, intercept, temperature)
    manifest = {
        "labels": labels,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_fingerprint": fingerprint(training_files(data_dir), **asdict(settings)),
        "settings": asdict(settings),
        "train_examples": len(examples),
        "extra_examples": len(extra),
        "originals": int(corpus.original.sum()),
        "examples_per_domain": dict(Counter(e.domain for e in examples)),
        "embed_seconds": round(embed_seconds, 1),
        "temperature": temperature,
        "threshold": calibration["threshold"]["threshold"],
        "metrics": {"held_out_sources": _summary(metrics["held_out_sources"])},
    }
    write_artifact(out, classifier, manifest, metrics)
    return TrainResult(out, classifier, held_out_classifier, corpus, dev, metrics)


def _summary(metrics: dict) -> dict:
    return {key: metrics[key] for key in ("accuracy", "macro_f1", "n")}


def write_artifact(out: Path, classifier: EmbeddingLinearClassifier, manifest: dict, metrics: dict) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    classifier.save(tmp, manifest)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    # Replace the old artifact only once the new one is complete.
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("router artifact written to %s", out)


def current_fingerprint(settings: TrainSettings, data_dir: Path | None = None) -> str:
    return fingerprint(training_files(data_dir or vendored_data_dir()), **asdict(settings))
