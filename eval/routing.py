"""Evaluating a router's domain predictions on labelled {"text", "domain"} data."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from expertmesh.router.classifier import DomainClassifier
from expertmesh.router.data import Example
from expertmesh.router.metrics import classification_metrics

BATCH = 64


def evaluate_classifier(
    classifier: DomainClassifier,
    examples: Sequence[Example],
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Metrics of the classifier's top domain against the gold domain (no threshold)."""
    predicted: list[str] = []
    for start in range(0, len(examples), BATCH):
        batch = examples[start : start + BATCH]
        probabilities = classifier.predict_proba([e.text for e in batch])
        predicted += [classifier.labels[i] for i in np.argmax(probabilities, axis=1)]
        if on_batch:
            on_batch(len(batch))
    return classification_metrics([e.domain for e in examples], predicted, classifier.labels)


def render_metrics(console: Console, metrics: dict, title: str) -> None:
    """Per-domain precision/recall/F1 and the confusion matrix, as rich tables."""
    table = Table(title=f"{title}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, n={metrics['n']}")
    for column in ("domain", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "domain" else "right")
    for domain, row in metrics["per_domain"].items():
        table.add_row(domain, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    console.print(table)

    labels = metrics["confusion"]["labels"]
    matrix = Table(title="confusion matrix (rows: true domain, columns: predicted)")
    matrix.add_column("true \\ pred")
    for label in labels:
        matrix.add_column(label[:8], justify="right")
    for label, row in zip(labels, metrics["confusion"]["matrix"]):
        matrix.add_row(label, *[str(v) for v in row])
    console.print(matrix)
