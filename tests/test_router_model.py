"""The real MiniLM + logistic regression router: training, artifact, CLI commands."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from expertmesh.cli import app
from expertmesh.config import load_config
from expertmesh.router.classifier import ArtifactError, load_classifier
from expertmesh.router.embed_linear import EmbeddingLinearClassifier
from expertmesh.router.policy import RoutingPolicy
from expertmesh.router.training import TrainSettings, current_fingerprint

pytestmark = pytest.mark.slow


def test_artifact_holds_model_labels_fingerprint_and_metrics(trained_router):
    manifest = json.loads((trained_router / "manifest.json").read_text())
    assert manifest["kind"] == "embed-linear"
    assert manifest["labels"] == json.loads((trained_router / "labels.json").read_text())
    settings = TrainSettings(**manifest["settings"])
    assert settings.per_domain == 120
    assert manifest["data_fingerprint"] == current_fingerprint(settings)
    assert (trained_router / "linear.npz").is_file()
    assert manifest["temperature"] > 0 and 0 < manifest["threshold"] <= 1


def test_report_has_every_section_and_its_plots(trained_router):
    report = json.loads((trained_router / "report.json").read_text())
    for split in ("held_out_sources", "random_split"):
        assert 0.5 < report[split]["macro_f1"] <= 1.0, report[split]
    assert report["held_out_sources"]["sources"]["medical"] == "meqsum_consumer_questions"
    loso = report["leave_one_source_out"]
    assert 27 <= len(loso["per_source"]) <= 120 and 0.3 < loso["mean_accuracy"] <= 1.0
    calibration = report["calibration"]
    assert calibration["ece_after"] <= calibration["ece_before"] + 1e-9
    assert calibration["threshold"]["misroute_rate"] <= calibration["threshold"]["target"]
    assert {"as written", "typos (15% of words)", "lower-case", "code pasted into the question"} <= set(report["slices"])
    assert report["multi_turn"]["follow_up"]["n"] > 0 and 0 <= report["multi_turn"]["switch"]["accuracy"] <= 1
    markdown = (trained_router / "report.md").read_text()
    assert "## Leave one source out" in markdown and "![reliability](reliability.png)" in markdown
    for image in ("confusion.png", "reliability.png"):
        assert (trained_router / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reloaded_router_predicts_like_the_saved_one(trained_router):
    first = load_classifier(trained_router)
    second = EmbeddingLinearClassifier.load(trained_router, encoder=first.encoder)
    texts = ["how do I treat a sprained ankle", "is a verbal contract binding"]
    assert np.allclose(first.predict_proba(texts), second.predict_proba(texts))
    assert np.allclose(first.predict_proba(texts).sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("What is the recommended dose of ibuprofen for a child with a fever?", "medical"),
        ("Write a Python function that reverses a linked list.", "code"),
        ("If a train travels 120 miles in 2 hours, what is its average speed?", "math"),
        ("Can my landlord keep my security deposit if I break the lease?", "legal"),
    ],
)
def test_routes_clear_questions_to_their_domain(trained_router, text, domain):
    policy = RoutingPolicy(load_classifier(trained_router), load_config())
    assert policy.route(text).domain == domain


def test_route_command_prints_a_decision(trained_router):
    result = CliRunner().invoke(app, ["route", "What are the side effects of metformin?", "--router", str(trained_router)])
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)
    assert decision["expert"] == "medical" and set(decision["scores"]) == set(load_config().domains)


def test_evaluate_json_on_a_file_and_a_folder(trained_router, tmp_path):
    rows = [{"text": "my chest hurts when I breathe", "domain": "medical"},
            {"text": "how do I sort a dict by value in python", "domain": "code"},
            {"text": "solve 3x + 5 = 20", "domain": "math"}]  # fmt: skip
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.write(json.dumps(rows[2]) + "\n")
    for data, n in ((tmp_path / "a.jsonl", 2), (tmp_path, 3)):
        result = CliRunner().invoke(app, ["router", "evaluate", "--data", str(data), "--router", str(trained_router),
                                          "--json", "--report", str(tmp_path / "report")])  # fmt: skip
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.output.strip().splitlines()[-1])
        assert metrics["n"] == n and {"accuracy", "macro_f1", "per_domain"} <= set(metrics)
        assert set(metrics["per_domain"]["medical"]) == {"precision", "recall", "f1", "support"}
        assert "confusion matrix" in result.output
        assert json.loads((tmp_path / "report" / "report.json").read_text())["evaluation"]["n"] == n
        assert (tmp_path / "report" / "confusion.png").is_file() and (tmp_path / "report" / "report.md").is_file()


def test_evaluate_refuses_unknown_labels_and_missing_artifacts(trained_router, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "x", "domain": "medicine"}) + "\n")
    result = CliRunner().invoke(app, ["router", "evaluate", "--data", str(path), "--router", str(trained_router)])
    assert result.exit_code == 2 and "unknown domain label 'medicine'" in result.output
    result = CliRunner().invoke(app, ["router", "evaluate", "--data", str(path), "--router", str(tmp_path)])
    assert result.exit_code == 2 and "expertmesh router train" in result.output
    with pytest.raises(ArtifactError):
        load_classifier(tmp_path)


def test_a_decision_does_not_depend_on_its_batch_mates(trained_router):
    """Batched routing must not let other users' requests change a request's decision."""
    policy = RoutingPolicy(load_classifier(trained_router), load_config())
    target = "my toddler has a fever of 39C, should I give paracetamol?"
    others = ["x " * 120, "short", "Write a SQL query that joins three tables and groups by month.", "¿qué es la ley?"]
    alone = policy.route(target)
    for batch in ([target, *others], [*others, target], [others[0], target, others[2]], [target] * 5):
        together = policy.route_batch(batch)[batch.index(target)]
        assert together.expert == alone.expert and together.domain == alone.domain
        for domain, score in alone.scores.items():
            assert together.scores[domain] == pytest.approx(score, abs=1e-3)


@pytest.fixture(scope="module")
def static_router(tmp_path_factory):
    folder = tmp_path_factory.mktemp("static") / "router"
    result = CliRunner().invoke(app, ["router", "train", "--kind", "embed-linear", "--encoder", "minilm-static", "--per-domain", "120", "--out", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


def test_static_encoder_router_is_saved_loaded_and_batch_independent(static_router):
    manifest = json.loads((static_router / "manifest.json").read_text())
    assert manifest["encoder"] == "minilm-static" and (static_router / "static-encoder").is_dir()
    classifier = load_classifier(static_router)
    assert classifier.encoder.name == "minilm-static" and classifier.encoder.dimension == 256
    policy = RoutingPolicy(classifier, load_config())
    target = "how do I merge two dataframes in pandas"
    alone = policy.route(target)
    assert alone.domain == "code"
    batch = ["filler text " * 50, target, "a contract dispute", *["x"] * 40]
    assert policy.route_batch(batch)[1].scores == alone.scores


def test_unknown_encoder_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["router", "train", "--kind", "embed-linear", "--encoder", "word2vec", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown encoder 'word2vec'" in result.output


FILLER = ("I have been reading a lot of articles lately about many different subjects, from travel to "
          "cooking to history, and I keep a long diary about all of them with many details. ") * 8  # fmt: skip


def test_long_inputs_keep_their_head_and_their_tail(trained_router):
    classifier = load_classifier(trained_router)
    encoder = classifier.encoder
    text = FILLER + "Anyway, my question: how do I fix a Python TypeError when adding a str and an int?"
    assert encoder.token_count(text) > encoder.max_length
    cut = encoder.head_and_tail(text)
    assert encoder.token_count(cut) <= encoder.max_length
    assert cut.startswith("i have been reading") and cut.endswith("adding a str and an int?")
    assert encoder.head_and_tail("short text") == "short text"
    assert RoutingPolicy(classifier, load_config()).route(text).domain == "code"


TEXTS_OF_ALL_LENGTHS = [
    "hi",
    "What is the maximum dose of ibuprofen for an adult?",
    "def add(a, b): return a + b  # why does this fail on strings and ints?",
    "A tenant signed a one-year lease; the landlord sold the building. " * 12,  # over 128 tokens
]


@pytest.mark.slow
def test_onnx_runtime_gives_sentence_transformers_embeddings():
    """The default runtime is ONNX Runtime for speed; it must compute the same function."""
    from expertmesh.router.encoder import TextEncoder

    reference = TextEncoder(runtime="torch").encode(TEXTS_OF_ALL_LENGTHS)
    onnx = TextEncoder(runtime="onnx").encode(TEXTS_OF_ALL_LENGTHS)
    int8 = TextEncoder(runtime="onnx-int8").encode(TEXTS_OF_ALL_LENGTHS)
    assert np.allclose(onnx, reference, atol=1e-4)
    # int8 weights move the embeddings a little (hence its own encoder name and head), not much.
    assert (int8 * reference).sum(axis=1).min() > 0.85


def test_unknown_runtime_is_refused():
    from expertmesh.router.encoder import TextEncoder

    with pytest.raises(ValueError, match="unknown runtime 'tpu'"):
        TextEncoder(runtime="tpu")
