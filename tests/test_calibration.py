"""Temperature scaling, ECE and the misroute-rate threshold."""

from __future__ import annotations

import numpy as np
import pytest

from expertmesh.router.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    softmax,
    threshold_for_misroute_rate,
)


def overconfident_logits(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), but the model reports 3 * z: overconfident by T = 3."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, size=(n, 4))
    labels = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    return true_logits * 3.0, labels


def test_temperature_scaling_recovers_the_overconfidence_and_lowers_ece():
    logits, labels = overconfident_logits()
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits / temperature), labels)
    assert after < 0.03 < before
    assert (softmax(logits / temperature).argmax(1) == softmax(logits).argmax(1)).all()  # no decision changes


def test_ece_of_a_perfectly_calibrated_bin_is_zero_and_of_a_wrong_one_is_its_gap():
    probabilities = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probabilities, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(probabilities, np.array([1, 1, 1, 1])) == pytest.approx(0.75)
    bins = reliability_bins(probabilities, np.array([0, 0, 0, 1]))
    assert bins == [{"low": 0.733, "high": 0.8, "count": 4, "confidence": 0.75, "accuracy": 0.75}]


def test_threshold_routes_the_most_confident_share_within_the_target():
    # confidences 0.95 .. 0.55; the two least confident decisions are wrong
    probabilities = np.array([[c, 1 - c] for c in (0.95, 0.9, 0.85, 0.8, 0.6, 0.55)])
    labels = np.array([0, 0, 0, 0, 1, 1])
    chosen = threshold_for_misroute_rate(probabilities, labels, target=0.0)
    assert chosen == {"threshold": 0.8, "misroute_rate": 0.0, "routed_share": round(4 / 6, 4), "target": 0.0}
    loose = threshold_for_misroute_rate(probabilities, labels, target=0.2)
    assert loose["threshold"] == 0.6 and loose["misroute_rate"] == 0.2
    assert threshold_for_misroute_rate(probabilities, np.array([1] * 6), 0.0)["routed_share"] == 0.0
