"""The fine-tuned, conversation-reading router, trained for real on a small sample."""

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
TRAIN = ["router", "train", "--kind", "finetune", "--max-per-source", "12", "--epochs", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finetune") / "router"
    result = CliRunner().invoke(app, [*TRAIN, "--out", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


def test_artifact_is_an_onnx_graph_a_tokenizer_calibration_and_a_report(finetuned):
    manifest = json.loads((finetuned / "manifest.json").read_text())
    assert manifest["kind"] == "finetune" and manifest["settings"]["epochs"] == 1
    assert 0 < manifest["temperature"] and 0 < manifest["threshold"] <= 1
    assert manifest["rows_by_origin"]["conversation turns"] > 0
    assert {p.name for p in finetuned.iterdir()} >= {"model.onnx", "tokenizer.json", "manifest.json", "metrics.json"}
    assert not (finetuned / "work").exists() and not (finetuned / "torch").exists()  # no training leftovers
    report = json.loads((finetuned / "report.json").read_text())
    assert {"held_out_sources", "calibration", "slices", "multi_turn", "latency", "dev_set"} <= set(report)
    assert report["dev_set"]["prompts"]["n"] >= 1500 and report["dev_set"]["conversations"]["n"] >= 400
    assert set(report["dev_set"]["conversations"]["conversations"]["by_kind"]) == {"follow_up", "switch", "mixed"}
    assert (finetuned / "report.md").is_file() and (finetuned / "confusion.png").is_file()


def test_loads_and_routes_like_any_router_and_reads_context(finetuned):
    classifier = load_classifier(finetuned)
    assert classifier.reads_context
    probabilities = classifier.predict_proba(["how do I sort a list in python", "and for kids?"], ["", "ibuprofen dose"])
    assert probabilities.shape == (2, 7) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    # The context changes the scores of a turn (the model reads it), and only of that turn.
    alone = classifier.predict_proba(["and for kids?"])[0]
    assert not np.allclose(alone, probabilities[1], atol=1e-4)
    policy = RoutingPolicy(classifier, load_config())
    decision = policy.route_messages([{"role": "user", "content": "ibuprofen dose"}, {"role": "assistant", "content": "..."},
                                      {"role": "user", "content": "and for kids?"}])  # fmt: skip
    assert decision.router == "finetune" and decision.conversation in ("kept", "switched")


def test_training_is_reproducible_with_a_seed(finetuned, tmp_path):
    again = tmp_path / "again"
    result = CliRunner().invoke(app, [*TRAIN, "--out", str(again)])
    assert result.exit_code == 0, result.output
    texts = ["chest pain after running", "what is a tort", "net income growth in 2019"]
    first, second = load_classifier(finetuned).logits(texts), load_classifier(again).logits(texts)
    assert np.allclose(first, second, atol=1e-4)


@pytest.mark.parametrize(("option", "kind"), [("--epochs", "embed-linear"), ("--per-domain", "finetune")])
def test_options_of_the_other_kind_are_refused(tmp_path, option, kind):
    result = CliRunner().invoke(app, ["router", "train", "--kind", kind, option, "20", "--out", str(tmp_path)])
    assert result.exit_code == 2 and f"{option} does not apply to the '{kind}'" in result.output
