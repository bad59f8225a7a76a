"""Answer extraction on the outputs small models really write, and the MBPP sandbox."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expertmesh.eval.answers import (
    choice_from_logprobs,
    extract_choice,
    extract_label,
    extract_number,
    short_answer_correct,
)
from expertmesh.eval.bench_tasks import all_suites, all_tasks, load_items
from expertmesh.eval.sandbox import extract_code, run_tests

LETTERS = ("A", "B", "C", "D")
OPTIONS = ("make more phone calls", "quit eating lunch out", "buy less with monopoly money", "have lunch with friends")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("b) quit eating lunch out", "B"),
        ("**C**", "C"),
        ("(D)", "D"),
        ("The answer is (B).", "B"),
        ("I think the correct answer is: **C** because ...", "C"),
        ("Answer: d", "D"),
        ("Option C is right.", "C"),
        ("They should quit eating lunch out.", "B"),  # the option's text, no letter
        ("A person should save money.", None),  # "A" the article
        ("It could be A or B, hard to say.", None),  # no commitment
        ("The answer is E.", None),  # not an option
        ("The answer is a bit unclear.", None),  # "a" the article again
        ("The answer is B because lunches add up.", "B"),
        ("", None),
    ],
)
def test_multiple_choice_extraction(text, expected):
    assert extract_choice(text, LETTERS, OPTIONS) == expected


def test_choice_likelihood_reads_the_first_tokens_alternatives():
    top = [{"token": "The", "logprob": -0.5}, {"token": " B", "logprob": -1.2}, {"token": "A", "logprob": -1.5},
           {"token": "b", "logprob": -3.0}]  # fmt: skip
    assert choice_from_logprobs(top, LETTERS) == "B"
    assert choice_from_logprobs([{"token": "Sure", "logprob": -0.1}], LETTERS) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She sold 48 + 24 = 72 clips.\nAnswer: 72", 72),
        ("#### 1,234", 1234),
        ("The total is $1,234.50 in all.", 1234.5),
        ("So the answer is -3, not 5.", -3),
        ("First 12, then 7. Answer: **15**", 15),
        ("Step 1: 3 apples. Step 2: 4 pears. In total 7", 7),  # no marker: the last number
        ("\\boxed{42}", 42),
        ("I don't know.", None),
    ],
)
def test_number_extraction(text, expected):
    assert extract_number(text) == expected


def test_short_answers_match_normalised_words_and_numbers():
    assert short_answer_correct("It was in December 1972.", ["14 December 1972 UTC", "December 1972"])
    assert short_answer_correct("The Beatles", ["beatles"])  # article and case folded
    assert not short_answer_correct("Beatlemania", ["beatles"])  # words, not substrings
    assert short_answer_correct("Revenue was 1,496.5 million", ["1496.5"])
    assert short_answer_correct("2017, 2018 and 2019", ["2017", "2018", "2019"], match_all=True)
    assert not short_answer_correct("2017 and 2018", ["2017", "2018", "2019"], match_all=True)


def test_labels_prefer_the_first_and_the_longest():
    assert extract_label("Not unfair, I think.", ["unfair", "not unfair"]) == "not unfair"
    assert extract_label("Answer: Yes. (No doubt.)", ["No", "Yes"]) == "Yes"
    assert extract_label("Maybe", ["No", "Yes"]) is None
    assert extract_label("False, it is irrelevant", ["True", "False"]) == "False"


def test_every_task_file_loads_and_every_suite_names_known_tasks():
    tasks, suites = all_tasks(), all_suites()
    assert {"smoke", "full"} <= set(suites)
    for spec in tasks.values():
        items = load_items(spec, 3, seed=0)
        assert len(items) == 3 and all(item.prompt.strip() for item in items), spec.name
        if spec.kind == "multiple_choice":
            assert all(item.gold in item.choices for item in items), spec.name
    # The same seed gives the same items; another seed, others.
    assert load_items(tasks["medmcqa"], 5, 0) == load_items(tasks["medmcqa"], 5, 0)
    assert load_items(tasks["medmcqa"], 5, 0) != load_items(tasks["medmcqa"], 5, 1)


def test_code_is_taken_from_its_block_even_when_cut_off():
    assert extract_code("Sure:\n```python\ndef f():\n    return 1\n```\nThat's it.") == "def f():\n    return 1\n"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"
    assert extract_code("def g(): pass") == "def g(): pass"


class TestSandbox:
    def test_passing_and_failing_solutions(self):
        assert run_tests("def add(a, b):\n    return a + b", ["assert add(1, 2) == 3"]).passed
        failed = run_tests("def add(a, b):\n    return a - b", ["assert add(1, 2) == 3"])
        assert not failed.passed and "AssertionError" in failed.summary

    def test_an_endless_loop_is_stopped(self):
        outcome = run_tests("while True:\n    pass", [], time_limit_s=1.5)
        assert not outcome.passed and outcome.summary == "timed out after 1.5 s"

    def test_no_writes_outside_its_directory(self, tmp_path):
        target = tmp_path / "outside.txt"
        outcome = run_tests(f"open({str(target)!r}, 'w').write('x')", [])
        assert not outcome.passed and "not allowed" in outcome.summary and not target.exists()
        victim = tmp_path / "keep.txt"
        victim.write_text("precious")
        assert not run_tests(f"import os\nos.remove({str(victim)!r})", []).passed
        assert victim.read_text() == "precious"
        # Inside its own temporary directory, files work (some solutions need them).
        assert run_tests("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'", []).passed

    def test_no_processes_and_bounded_memory(self):
        assert "not allowed" in run_tests("import subprocess\nsubprocess.run(['true'])", []).summary
        assert "not allowed" in run_tests("import os\nos.fork()", []).summary
        assert "MemoryError" in run_tests("x = bytearray(4_000_000_000)", []).summary

    def test_its_directory_is_removed(self):
        before = {p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("expertmesh-sandbox-*")}
        run_tests("open('x', 'w').write('y')", [])
        after = {p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("expertmesh-sandbox-*")}
        assert after <= before
