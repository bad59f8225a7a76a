"""The fine-tuned encoder router, trained for real on a small sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from expertmesh.cli import app
from expertmesh.config import load_config
from expertmesh.router.classifier import load_classifier
from expertmesh.router.policy import RoutingPolicy

pytestmark = pytest.mark.slow
TRAIN = ["router", "train", "--kind", "finetune", "--per-domain", "20", "--epochs", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finetune") / "router"
    result = CliRunner().invoke(app, [*TRAIN, "--out", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


def test_artifact_has_model_checkpoints_calibration_and_report(finetuned):
    manifest = json.loads((finetuned / "manifest.json").read_text())
    assert manifest["kind"] == "finetune" and manifest["settings"]["epochs"] == 2
    assert 0 < manifest["temperature"] and 0 < manifest["threshold"] <= 1
    assert (finetuned / "model" / "model.safetensors").is_file()
    assert any((finetuned / "checkpoints").glob("checkpoint-*"))
    report = json.loads((finetuned / "report.json").read_text())
    assert {"held_out_sources", "calibration", "slices", "multi_turn", "latency"} <= set(report)
    assert (finetuned / "report.md").is_file() and (finetuned / "confusion.png").is_file()


def test_loads_and_routes_like_any_router(finetuned):
    classifier = load_classifier(finetuned)
    probabilities = classifier.predict_proba(["how do I sort a list in python", "is my contract valid", ""][:2])
    assert probabilities.shape == (2, 7) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    decision = RoutingPolicy(classifier, load_config()).route("what is the dose of ibuprofen for a child?")
    assert decision.router == "finetune" and set(decision.scores) == set(load_config().domains)


def test_training_is_reproducible_with_a_seed(finetuned, tmp_path):
    again = tmp_path / "again"
    result = CliRunner().invoke(app, [*TRAIN, "--out", str(again)])
    assert result.exit_code == 0, result.output
    texts = ["chest pain after running", "what is a tort", "net income growth in 2019"]
    first, second = load_classifier(finetuned).logits(texts), load_classifier(again).logits(texts)
    assert np.allclose(first, second, atol=1e-4)


def test_epochs_option_is_refused_for_embed_linear(tmp_path):
    result = CliRunner().invoke(app, ["router", "train", "--kind", "embed-linear", "--epochs", "2", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--epochs does not apply to the 'embed-linear'" in result.output
