"""Asking several experts at once, and combining their answers into one.

`ask_experts` calls the chosen experts concurrently, each with its own reformatted prompt and
its own time limit; an expert that fails or is too slow is left out and reported, never turned
into a failed request unless every expert fails. If the caller is cancelled (the client went
away), the requests still in flight are cancelled with it.

Strategies (a registry): `all` (every answer, labelled), `best` (the answer of the expert the
router scored highest), `synthesize` (an aggregator expert writes one answer from the others,
saying which expert said what; it can stream).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from expertmesh.experts.client import ExpertClient
from expertmesh.experts.errors import ExpertError, ExpertUnavailable, RequestTimedOut
from expertmesh.experts.failover import ask_in_turn
from expertmesh.experts.pool import ExpertPool

Status = Literal["answered", "dropped"]

SYNTHESIS_INSTRUCTION = (
    "Several domain experts answered the question below. Write one answer to the question from their "
    "answers: keep what is correct and relevant, resolve disagreements, and say which expert each "
    "point comes from, in brackets, e.g. (medical)."
)


@dataclass
class Assignment:
    """One expert's part of a fanned-out request."""

    expert: str
    score: float  # the router's probability for this expert
    messages: list[dict[str, Any]]  # what it is asked (the question, or its sub-question)
    sub_question: str | None = None


@dataclass
class ExpertAnswer:
    expert: str
    score: float
    status: Status
    latency_ms: float
    text: str = ""
    reason: str | None = None  # why it was dropped
    usage: dict[str, int] = field(default_factory=dict)
    sub_question: str | None = None

    def summary(self, with_text: bool = False) -> dict[str, Any]:
        """What the response reports about this expert: its whole text only if asked for."""
        left_out = ("usage",) if with_text else ("text", "usage")
        return {k: v for k, v in asdict(self).items() if k not in left_out and v is not None}


class AllExpertsFailed(ExpertUnavailable):
    """Nobody answered: the request fails (502), naming each expert's reason."""

    def __init__(self, answers: list[ExpertAnswer]) -> None:
        reasons = "; ".join(f"{a.expert}: {a.reason}" for a in answers)
        super().__init__("fan-out", f"every expert failed ({reasons})")


async def ask_experts(
    pool: ExpertPool, assignments: list[Assignment], request: dict[str, Any], timeout_s: float
) -> list[ExpertAnswer]:
    """Every assignment's answer (or why it was dropped), in decreasing router score."""
    answers = await asyncio.gather(*(_ask_one(pool, a, request, timeout_s) for a in assignments))
    answers = sorted(answers, key=lambda a: -a.score)
    if all(answer.status == "dropped" for answer in answers):
        raise AllExpertsFailed(answers)
    return answers


async def _ask_one(pool: ExpertPool, assignment: Assignment, request: dict[str, Any], timeout_s: float) -> ExpertAnswer:
    client = pool.get(assignment.expert)
    start = time.perf_counter()
    elapsed = lambda: round((time.perf_counter() - start) * 1000, 1)  # noqa: E731
    base = {"expert": assignment.expert, "score": assignment.score, "sub_question": assignment.sub_question}
    if client is None:
        return ExpertAnswer(**base, status="dropped", latency_ms=0.0, reason="no such expert")
    body = client.request_body({**request, "messages": assignment.messages, "stream": None, "stream_options": None})
    limit = min(timeout_s, client.config.timeout_s)
    try:  # the deadline stops the client's retries too: a retry past it could not be waited for
        async with asyncio.timeout(limit):
            answer = await client.complete(body, deadline=time.monotonic() + limit)
    except (TimeoutError, RequestTimedOut):
        return ExpertAnswer(**base, status="dropped", latency_ms=elapsed(), reason=f"no answer within {timeout_s:g} s")
    except ExpertError as exc:
        return ExpertAnswer(**base, status="dropped", latency_ms=elapsed(), reason=str(exc))
    choice = (answer.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    return ExpertAnswer(**base, status="answered", latency_ms=elapsed(), text=text, usage=answer.get("usage") or {})


# --- strategies ---------------------------------------------------------------------------------


def answered(answers: list[ExpertAnswer]) -> list[ExpertAnswer]:
    return [answer for answer in answers if answer.status == "answered"]


def combine_all(answers: list[ExpertAnswer]) -> str:
    return "\n\n".join(f"**{a.expert}** ({a.score:.2f}):\n{a.text.strip()}" for a in answered(answers))


def pick_best(answers: list[ExpertAnswer]) -> str:
    return answered(answers)[0].text  # answers come in decreasing router score


def synthesis_messages(question: str, answers: list[ExpertAnswer]) -> list[dict[str, str]]:
    parts = []
    for answer in answered(answers):
        asked = f" (asked: {answer.sub_question})" if answer.sub_question else ""
        parts.append(f"[{answer.expert} expert]{asked}\n{answer.text.strip()}")
    content = f"{SYNTHESIS_INSTRUCTION}\n\nQuestion: {question}\n\n" + "\n\n".join(parts)
    return [{"role": "user", "content": content}]


# Strategies that need no model: the combined text straight from the answers.
DIRECT_STRATEGIES: dict[str, Callable[[list[ExpertAnswer]], str]] = {"all": combine_all, "best": pick_best}
STRATEGIES = (*DIRECT_STRATEGIES, "synthesize")


async def synthesize(pool: ExpertPool, aggregator: str, question: str, answers: list[ExpertAnswer],
                     request: dict[str, Any]) -> tuple[str, dict[str, int]]:  # fmt: skip
    """The aggregator's one answer and its usage (its fallbacks write it if it cannot)."""
    messages = synthesis_messages(question, answers)

    async def write(client: ExpertClient) -> dict[str, Any]:
        return await client.complete(client.request_body({**request, "messages": messages, "stream": None,
                                                          "stream_options": None}))  # fmt: skip

    answer, _, _ = await ask_in_turn(pool.chain(aggregator), write)
    return answer["choices"][0]["message"].get("content") or "", answer.get("usage") or {}


async def combine(pool: ExpertPool, strategy: str, aggregator: str, question: str, answers: list[ExpertAnswer],
                  request: dict[str, Any]) -> tuple[str, dict[str, int]]:  # fmt: skip
    """One text from the answers by `strategy`, and the usage that combining cost (the aggregator's)."""
    if strategy in DIRECT_STRATEGIES:
        return DIRECT_STRATEGIES[strategy](answers), {}
    return await synthesize(pool, aggregator, question, answers, request)


def sum_usage(usages: list[dict]) -> dict[str, int]:
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {key: sum(int(u.get(key, 0)) for u in usages if u) for key in keys}


async def synthesize_stream(pool: ExpertPool, aggregator: str, question: str, answers: list[ExpertAnswer],
                            request: dict[str, Any]) -> AsyncIterator[bytes]:  # fmt: skip
    """The aggregator's SSE lines, as it writes (the caller re-labels them); its fallbacks write
    if it cannot start."""
    messages = synthesis_messages(question, answers)
    async with AsyncExitStack() as stack:

        async def start(client: ExpertClient) -> AsyncIterator[bytes]:
            body = client.request_body({**request, "messages": messages, "stream": True,
                                        "stream_options": {"include_usage": True}})  # fmt: skip
            return await stack.enter_async_context(client.stream(body))

        lines, _, _ = await ask_in_turn(pool.chain(aggregator), start)
        async for line in lines:
            yield line
