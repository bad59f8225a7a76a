"""Calibration: temperature scaling, expected calibration error, and the confidence threshold.

A router's top probability should mean what it says: of the decisions made at confidence
0.8, about 80% should be right. Temperature scaling divides the logits by one scalar T fitted
on held-out data (minimum negative log-likelihood); it changes no decision, only confidences.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the negative log-likelihood of softmax(logits / T)."""

    def nll(log_t: float) -> float:
        probabilities = softmax(logits / np.exp(log_t))
        return float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels] + 1e-12)))

    from scipy.optimize import minimize_scalar  # here: serving never calibrates, nor imports scipy

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per confidence bin: mean confidence, accuracy and count (for the reliability plot)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            rows.append({"low": round(float(low), 3), "high": round(float(high), 3), "count": int(in_bin.sum()),
                         "confidence": round(float(confidence[in_bin].mean()), 4),
                         "accuracy": round(float(correct[in_bin].mean()), 4)})  # fmt: skip
    return rows


def threshold_for_misroute_rate(probabilities: np.ndarray, labels: np.ndarray, target: float) -> dict:
    """The lowest confidence threshold at which the routed decisions (confidence >= t) are
    wrong at most `target` of the time; below it, requests go to the fallback expert.

    Returns the threshold, the misroute rate and the share of traffic routed at it.
    """
    confidence = probabilities.max(axis=1)
    wrong = probabilities.argmax(axis=1) != labels
    order = np.argsort(-confidence)  # most confident first
    misroute = np.cumsum(wrong[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(misroute <= target)[0]
    if len(ok) == 0:
        return {"threshold": 1.0, "misroute_rate": 0.0, "routed_share": 0.0, "target": target}
    last = ok[-1]  # the largest prefix of confident decisions that meets the target
    return {
        "threshold": round(float(confidence[order][last]), 4),
        "misroute_rate": round(float(misroute[last]), 4),
        "routed_share": round(float((last + 1) / len(order)), 4),
        "target": target,
    }
