"""Each training-text transform, and the balanced sampler."""

from __future__ import annotations

import random

import pytest

from expertmesh.router.augment import (
    add_typos,
    conversational,
    drop_punctuation,
    lowercase,
    short_query,
    strip_options,
    variant,
)
from expertmesh.router.data import Example, _water_fill, balanced_sample

MCQ = "Which vitamin deficiency causes scurvy?\nA. Vitamin A\nB. Vitamin C\nC. Vitamin D\nD. Vitamin K"


def test_strip_options_keeps_the_stem_of_exam_items_only():
    assert strip_options(MCQ) == "Which vitamin deficiency causes scurvy?"
    assert strip_options("Line one\nline two without options") is None
    assert strip_options("Pick one:\n(A) red\n(B) blue") == "Pick one:"


def test_lowercase_and_punctuation():
    assert lowercase("What Is GDP?") == "what is gdp?"
    assert lowercase("already lower") is None
    assert drop_punctuation("Hello, world! Isn't it?") == "Hello world Isn't it"
    assert drop_punctuation("no punctuation") is None


def test_typos_are_seeded_and_change_only_some_words():
    text = "patients with chronic kidney disease should monitor potassium levels carefully"
    first = add_typos(text, random.Random(3), rate=0.5)
    assert first == add_typos(text, random.Random(3), rate=0.5)
    assert first != text and len(first.split()) == len(text.split())
    changed = sum(a != b for a, b in zip(first.split(), text.split()))
    assert 1 <= changed < len(text.split())
    assert add_typos("a an the of", random.Random(0), rate=1.0) is None  # nothing long enough


def test_short_query_is_short_and_from_the_question():
    text = "I have been coughing for weeks and my chest hurts at night. Should I get an x-ray for this cough?"
    short = short_query(text, random.Random(0))
    assert len(short.split()) <= 8 and short.lower().split()[0] in {"should", "get", "i"}
    assert short_query("Tell me more.", random.Random(0)) is None


def test_conversational_wraps_the_stem():
    wrapped = conversational(MCQ, random.Random(1))
    assert "vitamin deficiency causes scurvy" in wrapped.lower() and "\nA." not in wrapped
    assert wrapped.lower() != "which vitamin deficiency causes scurvy?"


def test_variant_always_strips_options_and_names_its_transforms():
    rng = random.Random(0)
    for _ in range(20):
        names, text = variant(MCQ, rng)
        assert names.split("+")[0] == "strip_options" and "Vitamin K" not in text
    results = [variant("How do I merge two dicts in Python?", random.Random(seed)) for seed in range(30)]
    applied = {name for r in results if r for name in r[0].split("+")}
    assert {"short_query", "conversational", "lowercase", "typos"} <= applied


@pytest.mark.parametrize(("sizes", "total", "expected"), [
    ({"a": 10, "b": 1000, "c": 300}, 900, {"a": 10, "b": 590, "c": 300}),
    ({"a": 5, "b": 5}, 100, {"a": 5, "b": 5}),
    ({"a": 100, "b": 100, "c": 100}, 10, {"a": 4, "b": 3, "c": 3}),
])  # fmt: skip
def test_water_fill_shares_evenly_within_sizes(sizes, total, expected):
    assert _water_fill(sizes, total) == expected


def test_balanced_sample_balances_domains_and_sources():
    examples = [Example(f"m{i}", "medical", "huge") for i in range(1000)]
    examples += [Example(f"n{i}", "medical", "tiny") for i in range(5)]
    examples += [Example(f"l{i}", "legal", "one") for i in range(50)]
    sample = balanced_sample(examples, per_domain=40, seed=0)
    count = lambda source: sum(e.source == source for e in sample)  # noqa: E731
    assert (count("huge"), count("tiny"), count("one")) == (35, 5, 40)
    assert sample == balanced_sample(examples, per_domain=40, seed=0)
