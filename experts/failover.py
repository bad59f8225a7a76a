"""Asking an expert, then its fallbacks in turn, until one answers.

Each expert in the chain gets its own tries (the client retries across its replicas first);
an error that a fallback cannot help with (the caller's bad request, the gateway's own time
limit) ends the chain at once. What failed on the way is returned, for the response's
`expertmesh` field, its headers and the metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from expertmesh.experts.client import ExpertClient
from expertmesh.experts.errors import ExpertCircuitOpen, ExpertError, ExpertRateLimited, RequestTimedOut

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class FailedExpert:
    """An expert that could not answer before another one did."""

    expert: str
    error: str  # the error's kind: unavailable, circuit_open, timeout, failed, rate_limited, misconfigured
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"expert": self.expert, "error": self.error, "message": self.message}


async def ask_in_turn(
    chain: list[ExpertClient], call: Callable[[ExpertClient], Awaitable[T]]
) -> tuple[T, ExpertClient, list[FailedExpert]]:
    """`call` on the first expert of `chain` that answers: (its result, that expert, the
    experts that failed before it). Raises the last expert's error if none answers (a 429 if
    any of them was overloaded: the caller should come back later)."""
    failed: list[FailedExpert] = []
    rate_limited: ExpertRateLimited | None = None
    for position, client in enumerate(chain):
        try:
            return await call(client), client, failed
        except ExpertError as exc:
            # A skipped expert (all its servers out) is logged once, when its breaker opened.
            (log.debug if isinstance(exc, ExpertCircuitOpen) else log.warning)("%s", exc.for_log())
            if isinstance(exc, ExpertRateLimited):
                rate_limited = exc
            last = position == len(chain) - 1
            if last or not exc.failover or isinstance(exc, RequestTimedOut):
                if rate_limited is not None and exc.failover and not isinstance(exc, RequestTimedOut):
                    raise rate_limited from exc
                raise
            failed.append(FailedExpert(client.name, exc.kind, str(exc)))
    raise AssertionError("an expert chain is never empty")
