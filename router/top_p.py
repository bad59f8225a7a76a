"""Dynamic top-p: how many experts a request needs, from the router's domain probabilities.

The smallest set of experts whose probabilities sum to at least p, at most k of them: one
expert when the router is confident, several when it hesitates between domains (harder or
cross-domain inputs get more experts, as in dynamic routing for mixtures of experts). Domains
that share an expert add up (science and general both go to the general expert by default).
"""

from __future__ import annotations

from collections.abc import Mapping


def select_experts(
    scores: Mapping[str, float], expert_for_domain: Mapping[str, str], top_p: float, max_experts: int
) -> list[tuple[str, float]]:
    """[(expert, probability)] in decreasing probability: the smallest prefix reaching top_p, capped at max_experts."""
    per_expert: dict[str, float] = {}
    for domain, probability in scores.items():
        expert = expert_for_domain.get(domain)
        if expert is not None:
            per_expert[expert] = per_expert.get(expert, 0.0) + float(probability)
    ranked = sorted(per_expert.items(), key=lambda pair: (-pair[1], pair[0]))
    chosen, total = [], 0.0
    for expert, probability in ranked[:max_experts]:
        chosen.append((expert, round(probability, 4)))
        total += probability
        if total >= top_p:
            break
    return chosen
