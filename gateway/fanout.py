"""The fan-out path of a routed request: several experts, one combined answer, as an OpenAI
chat completion (or SSE stream) whose `expertmesh` field tells who answered, with what score and
timing, who was dropped and why, and the strategy used.

Streaming: the first chunk names the experts being asked; once they have answered, a chunk
reports each one's status; then the combined answer follows (for `synthesize`, as the aggregator
writes it). A client that disconnects cancels the requests still in flight.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi.responses import Response, StreamingResponse

from expertmesh.config import FanoutConfig
from expertmesh.experts.errors import ExpertError
from expertmesh.experts.fanout import (
    DIRECT_STRATEGIES,
    Assignment,
    ExpertAnswer,
    ask_experts,
    combine,
    sum_usage,
    synthesize_stream,
)
from expertmesh.experts.pool import ExpertPool
from expertmesh.gateway.errors import from_expert_error
from expertmesh.gateway.protocol import ChatCompletionRequest, FanoutOptions
from expertmesh.router.decision import RoutingDecision
from expertmesh.router.decompose import decompose
from expertmesh.router.policy import RoutingPolicy
from expertmesh.router.text import routing_text
from expertmesh.router.top_p import select_experts

Disconnected = Callable[[], Awaitable[bool]]
DISCONNECT_POLL_S = 0.1


class ClientGone(Exception):
    """The client disconnected while the experts were still answering."""


async def unless_disconnected(work: Coroutine, disconnected: Disconnected):
    """Await `work`, but cancel it (and raise ClientGone) as soon as the client disconnects:
    nobody is left to read the answer, so the experts' time is freed. (Starlette notices a
    non-streaming disconnect only when it writes the response, after the experts are done.)"""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await disconnected():
                task.cancel()
                raise ClientGone
    finally:
        if not task.done():
            task.cancel()


@dataclass(frozen=True)
class FanoutSettings:
    enabled: bool
    top_p: float
    max_experts: int
    strategy: str
    decompose: bool
    aggregator: str
    expert_timeout_s: float
    include_answers: bool = False

    @classmethod
    def merge(cls, config: FanoutConfig, fallback_expert: str, options: FanoutOptions | None) -> FanoutSettings:
        asked = options.model_dump(exclude_none=True) if options else {}
        return cls(
            enabled=asked.get("fanout", config.enabled), top_p=asked.get("top_p", config.top_p),
            max_experts=asked.get("max_experts", config.max_experts), strategy=asked.get("strategy", config.strategy),
            decompose=asked.get("decompose", config.decompose), aggregator=config.aggregator or fallback_expert,
            expert_timeout_s=config.expert_timeout_s, include_answers=asked.get("include_answers", False),
        )  # fmt: skip


def plan_assignments(
    policy: RoutingPolicy, decision: RoutingDecision, messages: list[dict], settings: FanoutSettings
) -> list[Assignment]:
    """Which experts to ask, with what: sub-questions if the question splits across experts,
    else the whole conversation to the dynamic top-p set."""
    question = routing_text(messages)
    if settings.decompose:
        parts = decompose(policy, question)
        if parts:
            context = [m for m in messages if m.get("role") != "user"]
            return [
                Assignment(part.expert, part.confidence, [*context, {"role": "user", "content":
                           f"{part.text}\n\n(Part of the question: {question})"}], sub_question=part.text)  # fmt: skip
                for part in parts[: settings.max_experts]
            ]
    chosen = select_experts(decision.scores, policy.expert_for_domain, settings.top_p, settings.max_experts)
    return [Assignment(expert, score, messages) for expert, score in chosen]


class FanoutResponder:
    def __init__(self, experts: ExpertPool) -> None:
        self.experts = experts

    async def respond(self, request: ChatCompletionRequest, decision: RoutingDecision, assignments: list[Assignment],
                      settings: FanoutSettings, disconnected: Disconnected) -> Response:  # fmt: skip
        fields = request.upstream_fields()
        question = routing_text(fields["messages"])
        meta = {**decision.to_dict(), "fanout": {"strategy": settings.strategy, "asked": [a.expert for a in assignments]}}
        if request.stream:
            include_usage = bool((request.stream_options or {}).get("include_usage"))
            stream = self._stream(fields, question, meta, assignments, settings, include_usage, disconnected)
            return StreamingResponse(stream, media_type="text/event-stream", headers={"cache-control": "no-cache"})
        try:
            answers = await unless_disconnected(
                ask_experts(self.experts, assignments, fields, settings.expert_timeout_s), disconnected
            )
            text, extra_usage = await combine(
                self.experts, settings.strategy, settings.aggregator, question, answers, fields
            )
        except ExpertError as exc:
            raise from_expert_error(exc) from exc
        except ClientGone:
            return Response(status_code=499)  # nginx's "client closed request": nobody reads it
        meta["fanout"].update(self._report(answers, settings))
        usage = sum_usage([a.usage for a in answers] + [extra_usage])
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": "auto", "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                           "logprobs": None, "finish_reason": "stop"}],
            "usage": usage, "expertmesh": meta,
        }  # fmt: skip
        return Response(orjson.dumps(body), media_type="application/json", headers={"x-expertmesh-expert": "fanout"})

    @staticmethod
    def _report(answers: list[ExpertAnswer], settings: FanoutSettings) -> dict[str, Any]:
        report: dict[str, Any] = {"experts": [a.summary(settings.include_answers) for a in answers]}
        if settings.strategy == "synthesize":
            report["aggregator"] = settings.aggregator
        return report

    async def _stream(self, fields, question, meta, assignments, settings, include_usage, disconnected) -> AsyncIterator[bytes]:
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
            payload = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": "auto",
                       "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}  # fmt: skip
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        yield chunk({"role": "assistant", "content": ""}, expertmesh=meta)  # the experts' names first
        usages: list[dict] = []
        try:
            answers = await unless_disconnected(
                ask_experts(self.experts, assignments, fields, settings.expert_timeout_s), disconnected
            )
            usages += [a.usage for a in answers]
            yield chunk({}, expertmesh={"fanout": self._report(answers, settings)})
            if settings.strategy in DIRECT_STRATEGIES:
                yield chunk({"content": DIRECT_STRATEGIES[settings.strategy](answers)})
            else:
                async for line in synthesize_stream(self.experts, settings.aggregator, question, answers, fields):
                    if not line.startswith(b"data: {"):
                        continue
                    upstream = orjson.loads(line[6:])
                    if upstream.get("usage"):
                        usages.append(upstream["usage"])
                    for choice in upstream.get("choices") or []:
                        if (choice.get("delta") or {}).get("content"):
                            yield chunk({"content": choice["delta"]["content"]})
        except ExpertError as exc:
            error = from_expert_error(exc)
            yield b"data: " + orjson.dumps({"error": error.body()["error"]}) + b"\n\n"
            yield b"data: [DONE]\n\n"
            return
        except ClientGone:
            return
        yield chunk({}, "stop")
        if include_usage:
            payload = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": "auto",
                       "choices": [], "usage": sum_usage(usages)}  # fmt: skip
            yield b"data: " + orjson.dumps(payload) + b"\n\n"
        yield b"data: [DONE]\n\n"
