"""The router shipped in the repository: it loads, routes, reads conversations, matches the data
it was trained on, and bounds its cost on long input."""

from __future__ import annotations

import json
import time
from dataclasses import fields

import numpy as np
import pytest
from typer.testing import CliRunner

from expertmesh import paths
from expertmesh.cli import app
from expertmesh.config import load_config
from expertmesh.router.classifier import load_classifier
from expertmesh.router.finetune import FinetuneSettings
from expertmesh.router.policy import RoutingPolicy
from expertmesh.router.training import current_fingerprint


@pytest.fixture(scope="module")
def shipped():
    return load_classifier(paths.packaged_router())


@pytest.fixture(scope="module")
def policy(shipped):
    return RoutingPolicy(shipped, load_config())


def conversation(*turns: str) -> list[dict]:
    messages = []
    for turn in turns:
        messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": "(answer)"}]
    return messages[:-1]


def test_the_default_config_uses_the_shipped_artifact_which_fits_the_repository():
    folder = paths.packaged_router()
    assert load_config().router.artifact == folder and load_config().router.kind == "finetune"
    assert (folder / "model.onnx").stat().st_size < 30_000_000
    assert sum(p.stat().st_size for p in folder.iterdir()) < 30_000_000


def test_its_fingerprint_matches_the_vendored_data_and_its_recorded_settings():
    manifest = json.loads((paths.packaged_router() / "manifest.json").read_text())
    settings = FinetuneSettings(**manifest["settings"])
    assert {f.name for f in fields(FinetuneSettings)} == set(manifest["settings"])
    assert manifest["data_fingerprint"] == current_fingerprint(settings)
    assert manifest["onnx"] == "int8" and manifest["kind"] == "finetune"


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("my 4 year old has had a fever of 39.5 since yesterday and wont eat", "medical"),
        ("can my landlord keep my whole deposit for a stain on the carpet", "legal"),
        ("should i pay off my car loan early or put the money in my 401k", "finance"),
        ("TypeError: 'NoneType' object is not subscriptable when I read the json, why", "code"),
        ("I save $40 a week, how many weeks until I have $1,000?", "math"),
        ("why is the sky blue", "science"),
        ("write a birthday poem for my grandma who loves gardening", "general"),
    ],
)
def test_it_routes_clear_requests(policy, text, domain):
    assert policy.route_messages([{"role": "user", "content": text}]).domain == domain


def test_a_follow_up_keeps_the_domain_and_a_new_question_switches(policy):
    kept = policy.route_messages(conversation("what is the usual ibuprofen dose for an adult?", "and for kids?"))
    assert (kept.domain, kept.conversation) == ("medical", "kept")
    switched = policy.route_messages(conversation("what is the usual ibuprofen dose for an adult?",
                                                  "thanks. unrelated: how do I reverse a list in python?"))  # fmt: skip
    assert (switched.domain, switched.conversation) == ("code", "switched")


def test_a_megabyte_message_is_routed_by_its_head_and_tail(policy, shipped):
    question = "my python script crashes with KeyError when reading the config, how do I fix it?"
    huge = question + "\n" + "lorem ipsum dolor sit amet " * 40_000  # ~1 MB of pasted filler
    assert len(huge) > 1_000_000
    assert policy.route_messages([{"role": "user", "content": huge}]).domain == "code"
    # Only a bounded head and tail is tokenized: the ids are those of the bounded text.
    start = time.perf_counter()
    rows = shipped.tokenizer.ids([huge], [""])
    assert time.perf_counter() - start < 1.0 and len(rows[0]) <= shipped.max_length + 2


def test_scores_do_not_depend_on_batch_mates(shipped):
    texts, contexts = ["and for kids?", "what is a tort"], ["ibuprofen dose", ""]
    together = shipped.predict_proba(texts, contexts)
    alone = np.vstack([shipped.predict_proba([t], [c]) for t, c in zip(texts, contexts)])
    assert np.allclose(together, alone, atol=1e-5)


def test_router_evaluate_reads_conversations_through_the_gateways_logic(tmp_path):
    data = tmp_path / "mixed.jsonl"
    rows = [
        {"messages": conversation("what is the usual ibuprofen dose for an adult?", "and for kids?"), "domain": "medical",
         "kind": "follow_up"},
        {"messages": conversation("how do i reverse a list in python", "whats the capital of australia"), "domain": "general",
         "kind": "switch"},
        {"text": "can my landlord keep my deposit", "domain": "legal"},
    ]  # fmt: skip
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = CliRunner().invoke(app, ["router", "evaluate", "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics["n"] == 3 and set(metrics["conversations"]["by_kind"]) == {"follow_up", "switch"}
    assert metrics["conversations"]["n"] == 2
