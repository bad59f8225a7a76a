"""Transforms that make training text look more like what users type.

The vendored data is mostly exam questions and templated FAQs; users type short, lower-case,
misspelled, conversational questions. Each transform maps one text to a variant of it (or
None where it does not apply), deterministically for a given random generator. The domain
label never changes: a variant of a medical question is still a medical question.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable

Transform = Callable[[str, random.Random], "str | None"]

_OPTION_LINE = re.compile(r"^\s*\(?[A-Ea-e][.)]\s+\S")
_PUNCTUATION = str.maketrans("", "", string.punctuation.replace("'", ""))
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_KEYBOARD_NEIGHBOURS = {
    "a": "qwsz", "b": "vghn", "c": "xdfv", "d": "serfcx", "e": "wsdr", "f": "drtgvc", "g": "ftyhbv",
    "h": "gyujnb", "i": "ujko", "j": "huikmn", "k": "jiolm", "l": "kop", "m": "njk", "n": "bhjm",
    "o": "iklp", "p": "ol", "q": "wa", "r": "edft", "s": "awedxz", "t": "rfgy", "u": "yhji",
    "v": "cfgb", "w": "qase", "x": "zsdc", "y": "tghu", "z": "asx",
}  # fmt: skip
_OPENERS = [
    "hey, quick question: ", "hi! ", "can you help me? ", "i was wondering, ", "question: ",
    "so ", "ok so ", "please help: ", "hello, ", "quick one - ", "i need some help. ",
]  # fmt: skip
_CLOSERS = ["", "", " thanks!", " thank you", " any idea?", " pls", " thx", " asap", "??"]


def strip_options(text: str, rng: random.Random | None = None) -> str | None:
    """An exam item without its answer options ("stem\\nA. ...\\nB. ..." -> "stem")."""
    lines = text.splitlines()
    options = [i for i, line in enumerate(lines) if _OPTION_LINE.match(line)]
    if len(options) < 2:
        return None
    stem = " ".join(line.strip() for line in lines[: options[0]] if line.strip())
    return stem or None


def lowercase(text: str, rng: random.Random | None = None) -> str | None:
    lowered = text.lower()
    return lowered if lowered != text else None


def drop_punctuation(text: str, rng: random.Random | None = None) -> str | None:
    stripped = " ".join(text.translate(_PUNCTUATION).split())
    return stripped if stripped and stripped != text else None


def add_typos(text: str, rng: random.Random, rate: float = 0.08) -> str | None:
    """Misspell about `rate` of the words: a swapped, dropped, doubled or neighbouring key."""
    words = text.split(" ")
    changed = False
    for index, word in enumerate(words):
        if len(word) < 4 or not word.isalpha() or rng.random() > rate:
            continue
        words[index] = _misspell(word, rng)
        changed = True
    return " ".join(words) if changed else None


def _misspell(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    neighbours = _KEYBOARD_NEIGHBOURS.get(word[i].lower())
    return word[:i] + rng.choice(neighbours) + word[i + 1 :] if neighbours else word


def short_query(text: str, rng: random.Random, max_words: int = 8) -> str | None:
    """A terse search-box version: the question sentence, cut to at most max_words words."""
    stem = strip_options(text) or text
    sentences = [s for s in _SENTENCE_END.split(" ".join(stem.split())) if s]
    if not sentences:
        return None
    questions = [s for s in sentences if s.endswith("?")]
    words = (questions[-1] if questions else sentences[0]).rstrip("?.!").split()
    if len(words) <= 3:
        return None
    cut = words[-max_words:] if questions and len(words) > max_words and rng.random() < 0.5 else words[:max_words]
    short = " ".join(cut)
    return short if short != text else None


def conversational(text: str, rng: random.Random) -> str | None:
    """Wrapped the way people write to a chat assistant."""
    stem = strip_options(text) or text
    body = stem[0].lower() + stem[1:] if stem[:1].isupper() and rng.random() < 0.5 else stem
    return f"{rng.choice(_OPENERS)}{body}{rng.choice(_CLOSERS)}"


TRANSFORMS: dict[str, Transform] = {
    "strip_options": strip_options,
    "lowercase": lowercase,
    "drop_punctuation": drop_punctuation,
    "typos": add_typos,
    "short_query": short_query,
    "conversational": conversational,
}


STRUCTURAL = ["short_query", "conversational"]
SURFACE = ["lowercase", "drop_punctuation", "typos"]


def variant(text: str, rng: random.Random) -> tuple[str, str] | None:
    """One user-like variant: maybe a structural change (short or conversational), then
    each surface change (lower case, no punctuation, typos) with probability 0.35.

    Returns (the names of the transforms applied, joined by "+", the variant) or None.
    """
    applied: list[str] = []
    current = strip_options(text)
    if current is not None:
        applied.append("strip_options")  # users rarely paste the answer options
    else:
        current = text
    structural = rng.choice([None, *STRUCTURAL])
    if structural and (changed := TRANSFORMS[structural](current, rng)):
        current = changed
        applied.append(structural)
    for name in SURFACE:
        if rng.random() < 0.35 and (changed := TRANSFORMS[name](current, rng)):
            current = changed
            applied.append(name)
    return ("+".join(applied), current) if applied and current != text else None
