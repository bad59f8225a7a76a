"""Evaluating a router's domain predictions on labelled data: single texts ({"text", "domain"})
and conversations ({"messages", "domain"}), the latter through the same multi-turn logic the
gateway uses (router/policy.py)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from expertmesh.config import MultiTurnConfig
from expertmesh.router.classifier import DomainClassifier
from expertmesh.router.data import ConversationExample, Example
from expertmesh.router.metrics import classification_metrics
from expertmesh.router.policy import conversation_probabilities, inputs_to_score

BATCH = 64
Labelled = Example | ConversationExample


def messages_of(item: Labelled) -> list[dict]:
    if isinstance(item, ConversationExample):
        return list(item.messages)
    return [{"role": "user", "content": item.text}]


def predict_domains(
    classifier: DomainClassifier,
    items: Sequence[Labelled],
    multi_turn: MultiTurnConfig | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """The top domain the gateway's router would give each item (no confidence threshold)."""
    multi_turn = multi_turn or MultiTurnConfig()
    predicted: list[str] = []
    for start in range(0, len(items), BATCH):
        batch = items[start : start + BATCH]
        inputs = [inputs_to_score(classifier, multi_turn, messages_of(item)) for item in batch]
        rows = classifier.predict_proba([t for texts, _ in inputs for t in texts], [c for _, cs in inputs for c in cs])
        offset = 0
        for texts, _ in inputs:
            probabilities, _ = conversation_probabilities(classifier, multi_turn, rows[offset : offset + len(texts)])
            predicted.append(classifier.labels[int(np.argmax(probabilities))])
            offset += len(texts)
        if on_batch:
            on_batch(len(batch))
    return predicted


def evaluate_classifier(
    classifier: DomainClassifier,
    items: Sequence[Labelled],
    on_batch: Callable[[int], None] | None = None,
    multi_turn: MultiTurnConfig | None = None,
) -> dict:
    """Metrics of the router's top domain against the gold domain (no threshold); for
    conversations, also the accuracy by kind (follow_up: kept, switch: followed)."""
    predicted = predict_domains(classifier, items, multi_turn, on_batch)
    metrics = classification_metrics([e.domain for e in items], predicted, classifier.labels)
    conversations = [(item, p) for item, p in zip(items, predicted) if isinstance(item, ConversationExample)]
    if conversations:
        metrics["conversations"] = conversation_accuracy(conversations)
    return metrics


def conversation_accuracy(scored: list[tuple[ConversationExample, str]]) -> dict:
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for item, predicted in scored:
        by_kind[item.kind or "unknown"].append(predicted == item.domain)
    every = [ok for oks in by_kind.values() for ok in oks]
    return {"accuracy": round(float(np.mean(every)), 4), "n": len(every),
            "by_kind": {k: {"accuracy": round(float(np.mean(v)), 4), "n": len(v)} for k, v in sorted(by_kind.items())}}  # fmt: skip


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
    if "conversations" in metrics:
        conversations = metrics["conversations"]
        kinds = ", ".join(f"{k} {v['accuracy']:.3f} (n={v['n']})" for k, v in conversations["by_kind"].items())
        console.print(f"Conversations: accuracy {conversations['accuracy']:.4f} (n={conversations['n']}); {kinds}")
