"""The result type of a routing decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RoutedBy = Literal["router", "fallback", "explicit"]
# For a multi-turn conversation: did the last turn keep the conversation's domain or switch it?
Conversation = Literal["kept", "switched"]


@dataclass(frozen=True)
class RoutingDecision:
    """Which expert answers a request, and why."""

    expert: str
    routed_by: RoutedBy
    domain: str | None = None  # the router's top domain (None when the model was explicit)
    confidence: float | None = None  # probability of the top domain
    scores: dict[str, float] = field(default_factory=dict)  # probability per domain
    router: str | None = None  # the router kind that decided
    latency_ms: float = 0.0
    conversation: Conversation | None = None  # None: a single user turn was routed
    threshold: float | None = None  # the confidence below which the fallback expert answers

    def to_dict(self) -> dict:
        # By hand: dataclasses.asdict deep-copies recursively, a measurable cost on every request.
        return {"expert": self.expert, "routed_by": self.routed_by, "domain": self.domain,
                "confidence": self.confidence, "scores": dict(self.scores), "router": self.router,
                "latency_ms": self.latency_ms, "conversation": self.conversation,
                "threshold": self.threshold}  # fmt: skip
