"""Reading an answer out of a model's free text, and scoring it, per answer kind.

Small models rarely answer in the requested format: "The answer is (B).", "**B**", "b) 4",
the text of an option without its letter, "Answer: $1,234.50", a number inside a sentence. Each
extractor tries the explicit forms first, then weaker evidence, and returns None rather than
guess. The tests in tests/test_eval_answers.py hold the tricky outputs this was written for.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Sequence

from expertmesh.eval.bench_tasks import Item

# --- multiple choice ----------------------------------------------------------------------------

_EXPLICIT = [
    r"answer(?:\s*(?:is|was|:|=))*\s*(?:option\s*)?[\(\[\*]*\s*([A-Z])\b(?![a-z'])",  # "The answer is (B)", "Answer: **C**"
    r"\boption\s*[\(\[]?([A-Z])\b(?![a-z'])",  # "option C"
    r"\bcorrect (?:option|choice|answer) is\s*[\(\[\*]*([A-Z])\b",
]
_LEADING = r"^[\s\*\(\[]*([A-Z])\s*(?:[\)\]\.:,]|\*\*|$)"  # "B", "B.", "(B)", "**B**", "b) 4"


def extract_choice(text: str, letters: Sequence[str], options: Sequence[str] | None = None) -> str | None:
    """The chosen letter, or None when the text commits to no single option."""
    allowed = set(letters)
    for pattern in _EXPLICIT:
        for match in re.finditer(pattern, text, flags=re.IGNORECASE):
            letter = match.group(1).upper()
            if match.group(1).islower() and re.match(r"\s+[a-z]", text[match.end() :]):
                continue  # "the answer is a bit unclear": the article, not option A
            if letter in allowed:
                return letter
    # A letter alone or before punctuation; "A person ..." (the article) does not match.
    leading = re.match(_LEADING, text.strip(), flags=re.IGNORECASE)
    if leading and leading.group(1).upper() in allowed:
        return leading.group(1).upper()
    if options:  # the text of exactly one option, without its letter
        said = normalize(text)
        hits = {letters[i] for i, option in enumerate(options) if normalize(option) and normalize(option) in said}
        if len(hits) == 1:
            return hits.pop()
    return None


def choice_from_logprobs(top_logprobs: list[dict], letters: Sequence[str]) -> str | None:
    """The most likely letter among the first generated token's alternatives (choice likelihood)."""
    best: dict[str, float] = {}
    for candidate in top_logprobs:
        letter = candidate["token"].strip().strip("(*[").upper()
        if letter in letters:
            best[letter] = max(best.get(letter, -math.inf), candidate["logprob"])
    return max(best, key=best.get) if best else None


# --- numbers ------------------------------------------------------------------------------------

_NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\s?\.\d+"


def parse_number(text: str) -> float | None:
    cleaned = text.replace("$", "").replace(",", "").replace(" ", "")
    try:
        return float(cleaned)
    except ValueError:
        return None


def extract_number(text: str) -> float | None:
    """The final answer: after "####", "Answer:" or "answer is" if present, else the last number."""
    for marker in (r"####\s*", r"answer\s*(?:is|:|=)\s*\**", r"\\boxed\{"):
        found = list(re.finditer(marker + f"({_NUMBER})", text, flags=re.IGNORECASE))
        if found:
            return parse_number(found[-1].group(1))
    numbers = re.findall(_NUMBER, text)
    return parse_number(numbers[-1]) if numbers else None


def same_number(predicted: float | None, gold: float, tolerance: float = 1e-4) -> bool:
    return predicted is not None and math.isclose(predicted, gold, rel_tol=tolerance, abs_tol=tolerance)


# --- short answers ------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation) | {"’", "‘", "“", "”"})
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def short_answer_correct(text: str, accepted: Sequence[str], match_all: bool = False) -> bool:
    """An accepted answer (every one, for multi-span golds) appears in the answer, as words;
    numeric golds also match a number of the answer (1,234.0 = 1234)."""
    said = f" {normalize(text)} "
    numbers = [parse_number(n) for n in re.findall(_NUMBER, text)]

    def found(gold: str) -> bool:
        value = parse_number(gold.strip().rstrip("%"))
        if value is not None and any(same_number(n, value) for n in numbers):
            return True
        return bool(normalize(gold)) and f" {normalize(gold)} " in said

    hits = [found(gold) for gold in accepted]
    return all(hits) if match_all else any(hits)


# --- labels -------------------------------------------------------------------------------------


def extract_label(text: str, labels: Sequence[str]) -> str | None:
    """The label the text names first (longest label first at the same position: "Not unfair" over "unfair")."""
    lowered = text.lower()
    best: tuple[int, int, str] | None = None
    for label in labels:
        match = re.search(rf"(?<![a-z]){re.escape(label.lower())}(?![a-z])", lowered)
        if match and (best is None or (match.start(), -len(label)) < (best[0], best[1])):
            best = (match.start(), -len(label), label)
    return best[2] if best else None


# --- one registry: kind -> (extract the prediction, is it right) ----------------------------------


def _score_choice(item: Item, text: str) -> tuple[str | None, bool]:
    predicted = extract_choice(text, item.choices, item.extra.get("options"))
    return predicted, predicted == item.gold


def _score_number(item: Item, text: str) -> tuple[str | None, bool]:
    predicted = extract_number(text)
    return (None if predicted is None else f"{predicted:g}"), same_number(predicted, float(item.gold))


def _score_short(item: Item, text: str) -> tuple[str | None, bool]:
    accepted = item.gold if isinstance(item.gold, list) else [str(item.gold)]
    first_lines = "\n".join(text.strip().splitlines()[:3])  # the answer, not a rambling continuation
    return first_lines[:120], short_answer_correct(first_lines, accepted, item.extra.get("match_all", False))


def _score_label(item: Item, text: str) -> tuple[str | None, bool]:
    predicted = extract_label(text, item.choices)
    return predicted, predicted is not None and predicted.lower() == str(item.gold).lower()


def _score_code(item: Item, text: str) -> tuple[str | None, bool]:
    from expertmesh.eval.sandbox import extract_code, run_tests

    code = extract_code(text)
    outcome = run_tests(code, item.tests, setup=item.extra.get("setup", ""))
    return outcome.summary, outcome.passed


SCORERS: dict[str, Callable[[Item, str], tuple[str | None, bool]]] = {
    "multiple_choice": _score_choice,
    "number": _score_number,
    "short_answer": _score_short,
    "label": _score_label,
    "code_tests": _score_code,
}


def score(item: Item, text: str) -> tuple[str | None, bool]:
    """(what was extracted, whether it is right) for a generated answer."""
    return SCORERS[item.kind](item, text)
