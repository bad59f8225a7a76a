"""The routing data as vendored: the written corpus and dev set, relabels, conversations."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter

import pytest

from expertmesh.router.corpus import CorpusSettings, build_split, conversation_rows
from expertmesh.router.data import (
    ConversationExample,
    DataError,
    Example,
    apply_relabels,
    read_conversations,
    read_examples,
    read_labelled,
    read_relabels,
    row_id,
    vendored_data_dir,
    vendored_path,
)
from expertmesh.router.text import HEAD_CHARS, TAIL_CHARS, bounded, conversation_context

DOMAINS = ["medical", "legal", "finance", "code", "math", "science", "general"]


def folded(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def last_user_turn(conversation: ConversationExample) -> str:
    return [m["content"] for m in conversation.messages if m["role"] == "user"][-1]


@pytest.fixture(scope="module")
def written():
    return read_examples(vendored_data_dir() / "written", DOMAINS)


@pytest.fixture(scope="module")
def conversations():
    return read_conversations(vendored_path("conversations"), DOMAINS)


@pytest.fixture(scope="module")
def dev():
    return read_labelled(vendored_path("dev"), DOMAINS)


def test_the_label_definition_is_vendored_beside_the_data():
    text = vendored_path("DOMAINS.md").read_text()
    assert "last user turn" in text and all(f"| {d} |" in text for d in DOMAINS)


def test_written_corpus_is_large_and_covers_every_domain(written):
    counts = Counter(e.domain for e in written)
    assert len(written) >= 6000 and counts["general"] >= 1500
    assert all(counts[d] >= 600 for d in DOMAINS), counts
    assert len({folded(e.text) for e in written}) == len(written)  # de-duplicated


@pytest.mark.parametrize("which", ["written", "conversations", "dev"])
def test_no_phrase_is_shared_by_more_than_one_percent_of_rows(which, request):
    rows = request.getfixturevalue(which)
    texts = [e.text if isinstance(e, Example) else "\n".join(m["content"] for m in e.messages if m["role"] == "user")
             for e in rows if isinstance(e, Example) or which != "dev"]  # fmt: skip
    counts = Counter()
    for text in texts:
        words = folded(text).split()
        counts.update({" ".join(words[i : i + 4]) for i in range(len(words) - 3)})
    phrase, most = counts.most_common(1)[0]
    assert most <= 0.01 * len(texts), (phrase, most, len(texts))


def test_conversations_have_two_to_four_user_turns_each_labelled(conversations):
    assert len(conversations) >= 1500
    kinds = Counter(c.kind for c in conversations)
    assert kinds["follow_up"] >= 500 and kinds["switch"] >= 500
    for conversation in conversations:
        users = [m for m in conversation.messages if m["role"] == "user"]
        assert 2 <= len(users) <= 4 and len(conversation.turn_domains) == len(users)
        assert conversation.turn_domains[-1] == conversation.domain
        if conversation.kind == "follow_up":
            assert conversation.turn_domains[-1] == conversation.turn_domains[-2]
        if conversation.kind == "switch":
            assert conversation.turn_domains[-1] != conversation.turn_domains[-2]


def test_dev_set_is_apart_from_everything_trained_on(dev, written, conversations):
    prompts = [e for e in dev if isinstance(e, Example)]
    dev_conversations = [e for e in dev if isinstance(e, ConversationExample)]
    assert len(prompts) >= 1500 and len(dev_conversations) >= 400
    trained = {folded(e.text) for e in written} | {folded(last_user_turn(c)) for c in conversations}
    trained |= {folded(e.text) for e in read_examples(vendored_data_dir())}
    assert not {folded(e.text) for e in prompts} & trained
    split = build_split(vendored_data_dir(), DOMAINS, CorpusSettings(max_per_source=50))
    assert not {folded(e.text) for e in split.train} & {folded(e.text) for e in prompts}


def test_every_relabel_names_a_vendored_row_and_is_applied():
    relabels = read_relabels()
    assert len(relabels) >= 500 and set(relabels.values()) <= {*DOMAINS, "drop"}
    examples = read_examples(vendored_data_dir())
    ids = {row_id(e.domain, e.source, e.text): e for e in examples}
    assert set(relabels) <= set(ids)
    applied = {row_id(e.origin.split("/")[0], e.source, e.text): e for e in apply_relabels(examples, relabels)}
    for rid, label in relabels.items():
        if label == "drop":
            assert rid not in applied
        else:
            assert applied[rid].domain == label and applied[rid].origin == f"{ids[rid].domain}/{ids[rid].source}"


def test_public_rows_carry_their_attribution():
    for data in (vendored_data_dir() / "public").glob("*.jsonl.gz"):
        source = data.name.removesuffix(".jsonl.gz")
        with (
            gzip.open(data, "rt") as rows_file,
            gzip.open(vendored_path("public-provenance", f"{source}.tsv.gz"), "rt") as tsv,
        ):
            rows, provenance = rows_file.read().splitlines(), tsv.read().splitlines()
        assert len(provenance) == len(rows) + 1  # a header, then one line a row
        assert all(json.loads(row)["source"] == source for row in rows)


def test_conversation_lines_are_read_and_checked(tmp_path):
    path = tmp_path / "c.jsonl"
    line = {"messages": [{"role": "user", "content": "ibuprofen dose?"}, {"role": "assistant", "content": "..."},
                         {"role": "user", "content": "and for kids?"}], "domain": "medical", "kind": "follow_up"}  # fmt: skip
    path.write_text(json.dumps(line) + "\n" + json.dumps({"text": "what is a tort", "domain": "legal"}) + "\n")
    conversation, text = read_labelled(path, DOMAINS)
    assert isinstance(conversation, ConversationExample) and conversation.kind == "follow_up"
    assert text == Example("what is a tort", "legal", "")
    with pytest.raises(DataError, match="conversation"):
        read_examples(path)
    path.write_text(json.dumps({**line, "turn_domains": ["medical"]}) + "\n")
    with pytest.raises(DataError, match="one label per user turn"):
        read_labelled(path, DOMAINS)
    path.write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"}], "domain": "medical"}) + "\n")
    with pytest.raises(DataError, match="no user turn"):
        read_labelled(path, DOMAINS)


def test_each_turn_of_a_conversation_is_a_row_with_the_earlier_turns_as_context():
    conversation = ConversationExample(
        ({"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "b"},
         {"role": "user", "content": "c"}), "math", turn_domains=("legal", "legal", "math"))  # fmt: skip
    rows = conversation_rows(conversation, history_turns=3)
    assert [(r.text, r.context, r.domain) for r in rows] == [
        ("a", "", "legal"),
        ("b", "a", "legal"),
        ("c", "b\na", "math"),
    ]
    assert conversation_context(["1", "2", "3", "4"], 2) == "4\n3"  # the most recent first, at most 2


def test_long_text_is_bounded_to_its_head_and_tail():
    text = "Q" * 10 + "x" * 1_000_000 + "END"
    clipped = bounded(text)
    assert len(clipped) <= HEAD_CHARS + TAIL_CHARS + 3 and clipped.startswith("Q" * 10) and clipped.endswith("END")
    assert bounded("short") == "short"
