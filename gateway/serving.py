"""The logic behind the endpoints: decide the expert, reformat, relay, attach the decision."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import orjson
from fastapi.responses import Response, StreamingResponse

from expertmesh.config import AUTO_MODEL, FanoutConfig
from expertmesh.experts.client import ExpertClient
from expertmesh.experts.errors import ExpertError, ExpertUnavailable
from expertmesh.experts.pool import ExpertPool
from expertmesh.gateway.errors import APIError, from_expert_error
from expertmesh.gateway.fanout import Disconnected, FanoutResponder, FanoutSettings, plan_assignments
from expertmesh.gateway.metrics import GatewayMetrics
from expertmesh.gateway.protocol import ChatCompletionRequest
from expertmesh.router.batching import MicroBatcher
from expertmesh.router.decision import RoutingDecision
from expertmesh.router.policy import RoutingPolicy

log = logging.getLogger(__name__)

DONE_LINE = b"data: [DONE]"


def decision_headers(decision: RoutingDecision) -> dict[str, str]:
    headers = {"x-expertmesh-expert": decision.expert, "x-expertmesh-routed-by": decision.routed_by}
    if decision.domain is not None:
        headers["x-expertmesh-domain"] = decision.domain
        headers["x-expertmesh-confidence"] = f"{decision.confidence:.4f}"
        headers["x-expertmesh-scores"] = orjson.dumps(decision.scores).decode()
        headers["x-expertmesh-route-ms"] = f"{decision.latency_ms:.3f}"
    return headers


def _sse_error(error: APIError) -> bytes:
    return b"data: " + orjson.dumps(error.body()) + b"\n\n" + DONE_LINE + b"\n\n"


async def _never() -> bool:
    return False


def _error_kind(exc: ExpertError) -> str:
    """ExpertTimeout -> "timeout", for the metrics' label."""
    return type(exc).__name__.removeprefix("Expert").lower() or "error"


class ChatService:
    def __init__(self, policy: RoutingPolicy | None, experts: ExpertPool, fallback_expert: str,
                 fanout: FanoutConfig = FanoutConfig(), model_aliases: dict[str, str] | None = None,
                 metrics: GatewayMetrics | None = None) -> None:  # fmt: skip
        self.policy = policy
        self.metrics = metrics or GatewayMetrics()
        self.batcher = MicroBatcher(policy.classifier) if policy is not None else None
        self.experts = experts
        self.fallback_expert = fallback_expert
        self.fanout_config = fanout
        self.fanout = FanoutResponder(experts)
        self.model_aliases = model_aliases or {}

    @property
    def model_ids(self) -> list[str]:
        return [AUTO_MODEL, *self.experts.names, *self.model_aliases]

    async def route(self, messages: list[dict]) -> RoutingDecision:
        """The router's decision for a conversation (its last user turn, in context)."""
        if self.policy is None:
            raise APIError(503, "no router is loaded; name an expert as the model", "server_error")
        texts = self.policy.texts_to_score(messages)
        if not texts[0].strip():  # no user text to route on
            return RoutingDecision(expert=self.fallback_expert, routed_by="fallback")
        # Concurrent requests share classifier calls; the encoder runs off the event loop.
        start = time.perf_counter()
        rows = await self.batcher.predict_proba(texts)
        decision = self.policy.decide(rows, (time.perf_counter() - start) * 1000)
        self.metrics.routing_seconds.observe(decision.latency_ms / 1000)
        if decision.confidence is not None:
            self.metrics.routing_confidence.observe(decision.confidence)
        return decision

    async def decide(self, request: ChatCompletionRequest) -> RoutingDecision:
        if request.model == AUTO_MODEL:
            return await self.route([m.model_dump() for m in request.messages])
        if self.experts.get(request.model) is None:
            raise APIError(
                404,
                f"The model '{request.model}' does not exist; available models: {self.model_ids}",
                param="model",
                code="model_not_found",
            )
        return RoutingDecision(expert=request.model, routed_by="explicit")

    async def chat(self, request: ChatCompletionRequest, disconnected: Disconnected = _never) -> Response:
        """disconnected(): whether the client has gone away (a fan-out then stops asking)."""
        if request.model in self.model_aliases:
            request = request.model_copy(update={"model": self.model_aliases[request.model]})
        decision = await self.decide(request)
        if request.model == AUTO_MODEL and decision.scores:
            settings = FanoutSettings.merge(self.fanout_config, self.fallback_expert, request.expertmesh)
            if settings.enabled:
                messages = request.upstream_fields()["messages"]
                assignments = plan_assignments(self.policy, decision, messages, settings)
                if len(assignments) > 1:
                    return await self._fan_out(request, decision, assignments, settings, disconnected)
        client = self.experts.get(decision.expert)
        assert client is not None  # the config guarantees every routed expert exists
        body = client.request_body(request.upstream_fields(), decision.domain)
        headers = decision_headers(decision)
        start = time.perf_counter()
        try:
            if request.stream:
                response = await self._stream(client, body, decision, headers)
            else:
                answer = await client.complete(body)
                answer["expertmesh"] = decision.to_dict()
                response = Response(orjson.dumps(answer), media_type="application/json", headers=headers)
        except ExpertError as exc:
            log.warning("%s", exc)
            self.metrics.expert_errors.labels(client.name, _error_kind(exc)).inc()
            error = from_expert_error(exc)
            self.metrics.requests.labels(client.name, decision.routed_by, str(error.status)).inc()
            raise error from exc
        self.metrics.expert_seconds.labels(client.name, "yes" if request.stream else "no").observe(time.perf_counter() - start)
        self.metrics.requests.labels(client.name, decision.routed_by, "200").inc()
        return response

    async def _fan_out(self, request, decision, assignments, settings, disconnected) -> Response:
        try:
            response = await self.fanout.respond(request, decision, assignments, settings, disconnected)
        except APIError as error:
            self.metrics.requests.labels("fanout", decision.routed_by, str(error.status)).inc()
            raise
        self.metrics.requests.labels("fanout", decision.routed_by, str(response.status_code)).inc()
        return response

    async def _stream(self, client: ExpertClient, body: dict, decision: RoutingDecision, headers) -> Response:
        stack = AsyncExitStack()
        lines = await stack.enter_async_context(client.stream(body))  # errors here become statuses
        return StreamingResponse(
            self._relay(lines, stack, decision, client.name),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )

    async def _relay(
        self, lines: AsyncIterator[bytes], stack: AsyncExitStack, decision: RoutingDecision, expert: str
    ) -> AsyncIterator[bytes]:
        """Pass the expert's SSE lines through unchanged, but for the decision on the first chunk;
        an expert that fails mid-stream ends the stream with an error event."""
        first = True
        done = False
        try:
            async for line in lines:
                if line == DONE_LINE:
                    done = True
                elif first and line.startswith(b"data: {"):
                    chunk = orjson.loads(line[6:])
                    chunk["expertmesh"] = decision.to_dict()
                    line = b"data: " + orjson.dumps(chunk)
                    first = False
                yield line + (b"\n\n" if line.startswith(b"data:") else b"\n")
            if not done:
                raise ExpertUnavailable(expert, "the stream ended before [DONE]")
        except ExpertError as exc:
            log.warning("%s (mid-stream)", exc)
            self.metrics.expert_errors.labels(expert, _error_kind(exc)).inc()
            yield _sse_error(from_expert_error(exc))
        finally:
            await stack.aclose()
