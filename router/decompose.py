"""Splitting a cross-domain question into per-domain parts, by rule.

A question such as "How should I treat a sprained ankle? And can I deduct the physiotherapy
from my taxes?" has parts that belong to different experts. The rule: split into sentences
(and clauses separated by ";"), route each part, and keep the split only if at least two parts
go confidently (at or above the policy's threshold) to different experts; each expert then gets
its parts, with the whole question as context. A single-clause question that mixes domains
("the tax consequences of a malpractice settlement") is not split: dynamic top-p sends it whole
to the experts the router hesitates between. A rule, not a model: the small chat models here
cannot be trusted to rewrite questions, and a rule cannot invent a part that is not there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from expertmesh.router.policy import RoutingPolicy

_PARTS = re.compile(r"(?<=[?.!;])\s+(?=[A-Z0-9\"'(])|;\s+")
MIN_PART_WORDS = 3  # "Thanks." or "Also:" is not a question of its own


@dataclass(frozen=True)
class SubQuestion:
    expert: str
    domain: str
    text: str  # this expert's parts of the question
    confidence: float


def split_parts(text: str) -> list[str]:
    parts = [part.strip() for part in _PARTS.split(text.strip()) if part.strip()]
    return [part for part in parts if len(part.split()) >= MIN_PART_WORDS]


def decompose(policy: RoutingPolicy, text: str) -> list[SubQuestion]:
    """Per-expert sub-questions, or [] when the question does not split across experts."""
    parts = split_parts(text)
    if len(parts) < 2:
        return []
    decisions = policy.route_batch(parts)
    by_expert: dict[str, list[tuple[str, float, str]]] = {}
    for part, decision in zip(parts, decisions):
        if decision.routed_by != "router":
            continue  # an unsure part stays with the whole question
        by_expert.setdefault(decision.expert, []).append((part, decision.confidence or 0.0, decision.domain or ""))
    if len(by_expert) < 2:
        return []
    return [
        SubQuestion(expert, items[0][2], " ".join(part for part, _, _ in items), max(c for _, c, _ in items))
        for expert, items in by_expert.items()
    ]
