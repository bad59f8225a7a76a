"""Classification metrics for routers, computed with scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-domain precision/recall/F1/support and the confusion matrix.

    Macro-F1 averages over the domains present in y_true, so a file that holds only
    some domains is not marked down for the ones it lacks.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support  # not when serving

    labels = list(labels)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_domain = {
        label: {
            "precision": round(float(p), 4),
            "recall": round(float(r), 4),
            "f1": round(float(f), 4),
            "support": int(s),
        }
        for label, p, r, f, s in zip(labels, precision, recall, f1, support)
    }
    present = [label for label in labels if per_domain[label]["support"] > 0]
    macro_f1 = sum(per_domain[label]["f1"] for label in present) / len(present) if present else 0.0
    return {
        "n": len(y_true),
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(macro_f1, 4),
        "per_domain": per_domain,
        "confusion": {
            "labels": labels,  # rows: true domain, columns: predicted domain
            "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        },
    }
