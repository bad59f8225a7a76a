"""The rows the fine-tuned router learns from, and the held-out rows it is checked on.

1. Every labelled text of the routing data (the vendored public sources with their DOMAINS.md
   relabels, and the written prompts), at most `max_per_source` from any one source, so that a
   large templated source cannot teach its style as the domain's.
2. A user-like variant (router/augment.py) of a share of the public-source texts, most of which
   are exam questions or FAQs.
3. Every user turn of the written conversations, with the earlier user turns as its context:
   the follow-ups that keep a domain and the switches that leave it.
4. Pairs of unrelated requests, one as the context of the other: a self-contained request is
   routed by itself, whatever came before.

The held-out sources (router/data.py) are left out of all of it and form the dev split, on which
training keeps its best checkpoint and calibrates.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from expertmesh.router.augment import variant
from expertmesh.router.data import (
    CONVERSATIONS_DIR,
    HELD_OUT_SOURCES,
    ConversationExample,
    Example,
    load_routing_data,
    read_conversations,
    vendored_data_dir,
    vendored_path,
)
from expertmesh.router.text import conversation_context, user_turns

WRITTEN_PREFIX = "written"  # the sources of the project's own written data


@dataclass(frozen=True)
class CorpusSettings:
    seed: int = 0
    max_per_source: int = 800
    variant_share: float = 0.3  # public-source texts that also get a user-like variant
    history_turns: int = 3  # earlier user turns given as context (as the gateway's router.multi_turn)
    unrelated_pairs: int = 3000  # requests given an unrelated earlier request as context
    max_dev_per_source: int = 400  # held-out rows checked per source, at most max_per_source too


@dataclass
class TrainingSplit:
    train: list[Example]
    dev: list[Example]
    origins: dict[str, int] = field(default_factory=dict)  # training rows by where they came from


def held_out_origins(held_out: dict[str, str] = HELD_OUT_SOURCES) -> set[str]:
    return {f"{domain}/{source}" for domain, source in held_out.items()}


def build_split(data_dir: Path, domains: list[str], settings: CorpusSettings,
                held_out: set[str] | None = None) -> TrainingSplit:  # fmt: skip
    """Training rows without the `held_out` sources (each an origin "domain/source", or a source
    name, which holds out that source in every domain; default: the held-out sources of
    router/data.py), and those sources' texts as the dev split."""
    held_out = held_out_origins() if held_out is None else held_out
    rng = random.Random(settings.seed)
    texts = load_routing_data(data_dir, domains)
    out = [e.origin in held_out or e.source in held_out for e in texts]
    dev_cap = min(settings.max_dev_per_source, settings.max_per_source)
    dev = cap_per_source([e for e, o in zip(texts, out) if o], dev_cap, random.Random(settings.seed))
    singles = cap_per_source([e for e, o in zip(texts, out) if not o], settings.max_per_source, rng)
    variants = user_like_variants([e for e in singles if not e.source.startswith(WRITTEN_PREFIX)],
                                  settings.variant_share, rng)  # fmt: skip
    turns: list[Example] = []
    if Path(data_dir) == vendored_data_dir() and vendored_path(*CONVERSATIONS_DIR).exists():
        for conversation in read_conversations(vendored_path(*CONVERSATIONS_DIR), domains):
            turns += conversation_rows(conversation, settings.history_turns)
    turns = cap_per_source(turns, settings.max_per_source, rng)
    pairs = unrelated_pairs(singles, min(settings.unrelated_pairs, len(singles) // 6), rng)
    train = singles + variants + turns + pairs
    origins = {"texts": len(singles), "variants": len(variants), "conversation turns": len(turns),
               "unrelated pairs": len(pairs)}  # fmt: skip
    return TrainingSplit(train, dev, origins)


def cap_per_source(examples: list[Example], cap: int, rng: random.Random) -> list[Example]:
    by_origin: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_origin[example.origin or f"{example.domain}/{example.source}"].append(example)
    out = []
    for key in sorted(by_origin):
        group = by_origin[key]
        out += group if len(group) <= cap else rng.sample(group, cap)
    return out


def user_like_variants(examples: list[Example], share: float, rng: random.Random) -> list[Example]:
    out = []
    for example in examples:
        if rng.random() < share and (made := variant(example.text, rng)):
            out.append(replace(example, text=made[1], transform=made[0], parent=example.text))
    return out


def conversation_rows(conversation: ConversationExample, history_turns: int) -> list[Example]:
    """One row per labelled user turn, with the earlier user turns as its context (only the last
    turn, where the data labels only the conversation)."""
    turns = user_turns(conversation.messages)
    labels = conversation.turn_domains or (None,) * (len(turns) - 1) + (conversation.domain,)
    source = conversation.source or f"{WRITTEN_PREFIX}_conversations"
    return [
        Example(turn, label, source, context=conversation_context(turns[:i], history_turns), origin=f"{label}/{source}")
        for i, (turn, label) in enumerate(zip(turns, labels))
        if label is not None
    ]


def unrelated_pairs(examples: list[Example], count: int, rng: random.Random) -> list[Example]:
    """Requests preceded by another, unrelated request: mostly from another domain, a third
    from the same one."""
    if not examples or count <= 0:
        return []
    by_domain: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_domain[example.domain].append(example)
    out = []
    for example in rng.sample(examples, min(count, len(examples))):
        pool = by_domain[example.domain] if rng.random() < 1 / 3 else examples
        earlier = rng.choice(pool)
        if earlier.text != example.text:
            out.append(replace(example, context=conversation_context([earlier.text], 1), transform="unrelated-context"))
    return out


def describe(split: TrainingSplit) -> dict[str, dict[str, int]]:
    return {"train_by_domain": dict(Counter(e.domain for e in split.train)),
            "dev_by_domain": dict(Counter(e.domain for e in split.dev))}  # fmt: skip
