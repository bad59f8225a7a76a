"""Router pieces that need no model: data handling, metrics, the routing policy."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from expertmesh.config import load_config
from expertmesh.router.data import (
    DataError,
    Example,
    fingerprint,
    read_examples,
    split_held_out_sources,
    vendored_data_dir,
)
from expertmesh.router.metrics import classification_metrics
from expertmesh.router.policy import RoutingPolicy
from tests.conftest import KeywordClassifier


def test_vendored_data_covers_every_domain_with_sources():
    examples = read_examples(vendored_data_dir())
    domains = {e.domain for e in examples}
    assert domains == {"medical", "legal", "finance", "code", "math", "science", "general"}
    assert all(e.source for e in examples)
    sources = {e.source for e in examples}
    # The 22 shared sources (27 domain/source pairs), 5 more public ones, the 8 written slices.
    assert len({(e.domain, e.source) for e in examples if not e.source.startswith("written_")}) >= 27
    assert {"medquad", "onstartups_se", "written_medical", "written_general"} <= sources


def test_held_out_split_holds_out_whole_sources():
    examples = [Example("a", "medical", "meqsum_consumer_questions"), Example("b", "medical", "medquad"),
                Example("c", "math", "svamp"), Example("d", "math", "gsm8k_train")]  # fmt: skip
    train, test = split_held_out_sources(examples)
    assert train == [1, 3] and test == [0, 2]


def test_read_examples_reads_files_folders_and_gzip(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "x", "domain": "math"}) + "\n\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"text": "y", "domain": "legal", "source": "s"}) + "\n")
    assert [e.domain for e in read_examples(tmp_path)] == ["math", "legal"]
    assert read_examples(tmp_path / "a.jsonl")[0] == Example("x", "math", "")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "x", "domain": "astrology"}', "bad.jsonl:2: unknown domain label 'astrology'"),
        ("{not json", "bad.jsonl:2: not valid JSON"),
        ('{"text": "x"}', 'bad.jsonl:2: expected an object with string fields "text" and "domain"'),
    ],
)
def test_bad_lines_are_errors_that_name_file_line_and_label(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "ok", "domain": "math"}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        read_examples(path, ["math", "legal"])


def test_missing_data_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_examples(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no .jsonl"):
        read_examples(tmp_path)


def test_fingerprint_changes_with_data_and_parameters(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("one")
    first = fingerprint([path], seed=0)
    assert first == fingerprint([path], seed=0) != fingerprint([path], seed=1)
    path.write_text("two")
    assert fingerprint([path], seed=0) != first


def test_metrics_macro_f1_averages_domains_present():
    metrics = classification_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b", "c"])
    assert metrics["accuracy"] == 0.75 and metrics["n"] == 4
    assert metrics["per_domain"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert metrics["per_domain"]["c"]["support"] == 0
    assert metrics["macro_f1"] == pytest.approx((0.6667 + 0.8) / 2, abs=1e-4)
    assert metrics["confusion"]["matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]


def test_policy_maps_domains_to_experts_and_falls_back_below_threshold():
    config = load_config()
    policy = RoutingPolicy(KeywordClassifier(), config)
    decision = policy.route("symptom of flu")
    assert (decision.expert, decision.domain, decision.routed_by) == ("medical", "medical", "router")
    assert decision.confidence == pytest.approx(0.88) and sum(decision.scores.values()) == pytest.approx(1.0)
    assert decision.latency_ms >= 0
    unsure = policy.route("hello there")  # general at 0.30 < 0.35
    assert (unsure.expert, unsure.routed_by, unsure.domain) == ("general", "fallback", "general")


def test_policy_refuses_an_artifact_with_unknown_domains():
    class Odd(KeywordClassifier):
        labels = [*KeywordClassifier.labels, "astrology"]

    with pytest.raises(ValueError, match="astrology"):
        RoutingPolicy(Odd(), load_config())


def conversation(*user_texts: str) -> list[dict]:
    messages: list[dict] = [{"role": "system", "content": "Be brief."}]
    for text in user_texts:
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
    return messages[:-1]


def test_follow_up_turn_keeps_the_conversations_domain():
    policy = RoutingPolicy(KeywordClassifier(), load_config())
    decision = policy.route_messages(conversation("what is this symptom on my arm?", "and for children?"))
    assert (decision.domain, decision.expert, decision.conversation) == ("medical", "medical", "kept")
    assert policy.route("and for children?").domain == "general"  # alone it would not be medical


def test_a_confident_new_domain_switches_the_conversation():
    policy = RoutingPolicy(KeywordClassifier(), load_config())
    decision = policy.route_messages(conversation("a symptom question", "now write python code to parse a csv"))
    assert (decision.domain, decision.conversation) == ("code", "switched")


def test_an_unsure_new_domain_does_not_switch(monkeypatch):
    config = load_config()
    multi_turn = config.router.multi_turn.model_copy(update={"switch_confidence": 0.95})
    config = config.model_copy(update={"router": config.router.model_copy(update={"multi_turn": multi_turn})})
    decision = RoutingPolicy(KeywordClassifier(), config).route_messages(conversation("a symptom", "python?"))
    assert (decision.domain, decision.conversation) == ("medical", "kept")


def test_single_turns_and_disabled_history_route_the_last_turn_alone():
    config = load_config()
    single = RoutingPolicy(KeywordClassifier(), config).route_messages(conversation("python please"))
    assert (single.domain, single.conversation) == ("code", None)
    multi_turn = config.router.multi_turn.model_copy(update={"history_turns": 0})
    config = config.model_copy(update={"router": config.router.model_copy(update={"multi_turn": multi_turn})})
    decision = RoutingPolicy(KeywordClassifier(), config).route_messages(conversation("a symptom", "and for kids?"))
    assert (decision.domain, decision.conversation) == ("general", None)


def test_a_domain_conversation_never_switches_to_general():
    """Generic follow-ups ("why is that?") look like 'general'; even a confident one keeps the specialist."""
    from expertmesh.router.policy import combine_turns

    labels = KeywordClassifier.labels
    medical, general = labels.index("medical"), labels.index("general")
    last = np.full(len(labels), 0.01)
    last[general] = 0.94
    context = np.full(len(labels), 0.02)
    context[medical] = 0.88
    multi_turn = load_config().router.multi_turn
    probabilities, conversation = combine_turns(last, context, multi_turn, labels)
    assert (int(np.argmax(probabilities)), conversation) == (medical, "kept")
    allowed = multi_turn.model_copy(update={"never_switch_to": []})
    probabilities, conversation = combine_turns(last, context, allowed, labels)
    assert (int(np.argmax(probabilities)), conversation) == (general, "switched")


def test_never_switch_to_names_known_domains(tmp_path):
    import yaml

    from expertmesh.config import ConfigError, default_config_path

    raw = yaml.safe_load(default_config_path().read_text())
    raw["router"]["multi_turn"] = {"never_switch_to": ["astrology"]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"router.multi_turn.never_switch_to: unknown domain\(s\) \['astrology'\]"):
        load_config(path)
