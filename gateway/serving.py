"""The logic behind the endpoints: decide the expert, reformat, relay, attach the decision.

Three APIs share it: chat completions (the main one, with fan-out), legacy completions (a raw
prompt, relayed as is) and the Responses API (relayed to experts that serve it, translated to a
chat completion for the others: gateway/responses.py and gateway/response_events.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson
from fastapi.responses import Response, StreamingResponse

from expertmesh.config import AUTO_MODEL, FanoutConfig, KeyConfig
from expertmesh.experts.client import CHAT_PATH, COMPLETIONS_PATH, RESPONSES_PATH, ExpertClient
from expertmesh.experts.errors import ExpertError, ExpertFailed, ExpertUnavailable
from expertmesh.experts.failover import FailedExpert, ask_in_turn
from expertmesh.experts.pool import ExpertPool
from expertmesh.gateway import response_events, responses
from expertmesh.gateway.decision_log import RequestRecord
from expertmesh.gateway.errors import APIError, from_expert_error
from expertmesh.gateway.fanout import Disconnected, FanoutResponder, FanoutSettings, plan_assignments
from expertmesh.gateway.keys import ANONYMOUS, may_use
from expertmesh.gateway.metrics import GatewayMetrics
from expertmesh.gateway.protocol import ChatCompletionRequest, CompletionRequest, ResponsesRequest
from expertmesh.router.batching import MicroBatcher
from expertmesh.router.decision import RoutingDecision
from expertmesh.router.policy import RoutingPolicy
from expertmesh.router.text import routing_text

log = logging.getLogger(__name__)

DONE_LINE = b"data: [DONE]"
Lines = AsyncIterator[bytes]


def decision_headers(decision: RoutingDecision) -> dict[str, str]:
    headers = {"x-expertmesh-expert": decision.expert, "x-expertmesh-routed-by": decision.routed_by}
    if decision.domain is not None:
        headers["x-expertmesh-domain"] = decision.domain
        headers["x-expertmesh-confidence"] = f"{decision.confidence:.4f}"
        headers["x-expertmesh-scores"] = orjson.dumps(decision.scores).decode()
        headers["x-expertmesh-route-ms"] = f"{decision.latency_ms:.3f}"
    return headers


async def _never() -> bool:
    return False


@dataclass
class Caller:
    """Who is asking (their key decides which experts they may use) and the request's record
    for the decision log, which the service fills in with the decision and the answer."""

    key: KeyConfig = ANONYMOUS
    record: RequestRecord = field(default_factory=lambda: RequestRecord("internal", ""))


def _usage_in(data: bytes) -> dict | None:
    """The `usage` of an SSE event, if it carries one (a chat stream's last chunk when the client
    asked for it; the Responses API's response.completed)."""
    for line in data.split(b"\n"):
        if line.startswith(b"data: {") and b'"usage"' in line:
            event = orjson.loads(line[6:])
            usage = event.get("usage") or (event.get("response") or {}).get("usage")
            if isinstance(usage, dict):
                return usage
    return None


@dataclass
class Upstream:
    """What to send one expert, and how its answer comes back: its body and path, the stream
    relay (given the response's `expertmesh` field) and the conversion of a JSON answer."""

    body: dict[str, Any]
    path: str
    relay: Callable[[dict[str, Any]], StreamRelay]
    convert: Callable[[dict], dict[str, Any]] = lambda answer: answer


# How a request is put to whichever expert of the chain is asked (its prompt format, its API).
Prepare = Callable[[ExpertClient], Upstream]


def failover_meta(decision: RoutingDecision, answered_by: str, failed: list[FailedExpert]) -> dict[str, Any]:
    meta = decision.to_dict()
    if failed:
        meta["answered_by"] = answered_by
        meta["failover"] = [f.to_dict() for f in failed]
    return meta


def failover_headers(answered_by: str, failed: list[FailedExpert]) -> dict[str, str]:
    return {"x-expertmesh-answered-by": answered_by,
            "x-expertmesh-failover": ", ".join(f"{f.expert}={f.error}" for f in failed)}  # fmt: skip


# --- stream relays: the expert's SSE lines in, the client's SSE bytes out ------------------------


class StreamRelay(Protocol):
    """relay() raises ExpertError when the expert fails mid-stream; error() is how the stream's
    format tells the client."""

    def relay(self, lines: Lines) -> AsyncIterator[bytes]: ...

    def error(self, error: APIError) -> bytes: ...


def _json(expert: str, data: bytes) -> dict[str, Any]:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ExpertFailed(expert, "sent a stream event that is not JSON") from None


class ChunkRelay:
    """Chat and legacy completion chunks, passed through unchanged but for the `expertmesh`
    field (the decision) on the first chunk; the stream must end with [DONE]."""

    def __init__(self, meta: dict[str, Any], expert: str) -> None:
        self.meta, self.expert = meta, expert

    async def relay(self, lines: Lines) -> AsyncIterator[bytes]:
        first, done = True, False
        async for line in lines:
            if line == DONE_LINE:
                done = True
            elif first and line.startswith(b"data: {"):
                chunk = _json(self.expert, line[6:])
                chunk["expertmesh"] = self.meta
                line = b"data: " + orjson.dumps(chunk)
                first = False
            yield line + (b"\n\n" if line.startswith(b"data:") else b"\n")
        if not done:
            raise ExpertUnavailable(self.expert, "the stream ended before [DONE]")

    def error(self, error: APIError) -> bytes:
        return b"data: " + orjson.dumps(error.body()) + b"\n\n" + DONE_LINE + b"\n\n"


class NativeResponseRelay:
    """A Responses API event stream from an expert that serves it: passed through, with the
    decision in `response.created`; it must end with a final response event."""

    FINAL = {"response.completed", "response.incomplete", "response.failed"}

    def __init__(self, meta: dict[str, Any], expert: str) -> None:
        self.meta, self.expert = meta, expert
        self.sequence = -1

    async def relay(self, lines: Lines) -> AsyncIterator[bytes]:
        final = False
        async for line in lines:
            if line.startswith(b"data: {"):
                event = _json(self.expert, line[6:])
                self.sequence = event.get("sequence_number", self.sequence + 1)
                if event.get("type") == "response.created" and isinstance(event.get("response"), dict):
                    event["response"]["expertmesh"] = self.meta
                    line = b"data: " + orjson.dumps(event)
                final = final or event.get("type") in self.FINAL
            yield line + (b"\n\n" if line.startswith(b"data:") else b"\n")
        if not final:
            raise ExpertUnavailable(self.expert, "the stream ended before the response was complete")

    def error(self, error: APIError) -> bytes:
        return response_events.sse_event({"type": "error", "code": error.code, "message": error.message,
                                          "param": None, "sequence_number": self.sequence + 1})  # fmt: skip


class TranslatedResponseRelay:
    """A chat completion stream, translated into the Responses API's events."""

    def __init__(self, request: ResponsesRequest, meta: dict[str, Any], expert: str, model: str) -> None:
        self.events = response_events.ChatStreamToEvents(request, model, {"expertmesh": meta})
        self.expert = expert

    async def relay(self, lines: Lines) -> AsyncIterator[bytes]:
        for event in self.events.start():
            yield event
        async for line in lines:
            if line == DONE_LINE:
                for event in self.events.end():
                    yield event
                return
            if line.startswith(b"data: {"):
                chunk = _json(self.expert, line[6:])
                if isinstance(chunk.get("error"), dict):  # an error event of the expert's own
                    raise ExpertUnavailable(self.expert, str(chunk["error"].get("message", "failed mid-stream")))
                for event in self.events.feed(chunk):
                    yield event
        raise ExpertUnavailable(self.expert, "the stream ended before [DONE]")

    def error(self, error: APIError) -> bytes:
        return b"".join(self.events.fail(error))


class ChatService:
    """What the endpoints do: route, reformat for the expert, call it, relay its answer (chat
    completions with fan-out, legacy completions, the Responses API)."""

    def __init__(self, policy: RoutingPolicy | None, experts: ExpertPool, fallback_expert: str,
                 fanout: FanoutConfig = FanoutConfig(), model_aliases: dict[str, str] | None = None,
                 metrics: GatewayMetrics | None = None, request_timeout_s: float = 600.0,
                 store_text: bool = False, tracer=None) -> None:  # fmt: skip
        self.policy = policy
        self.store_text = store_text  # keep the routed text in the decision log (log.store_text)
        self.tracer = tracer  # an OpenTelemetry Tracer when tracing is on (gateway/tracing.py)
        self.request_timeout_s = request_timeout_s
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

    def model_ids_for(self, key: KeyConfig) -> list[str]:
        """The models a key may ask for: auto, its experts, and the aliases of those."""
        usable = [name for name in self.experts.names if may_use(key, name)]
        aliases = [alias for alias, target in self.model_aliases.items() if target == AUTO_MODEL or target in usable]
        return [AUTO_MODEL, *usable, *aliases]

    async def route(self, messages: list[dict]) -> RoutingDecision:
        """The router's decision for a conversation (its last user turn, in context)."""
        if self.tracer is None:
            return await self._route(messages)
        with self.tracer.start_as_current_span("route") as span:
            decision = await self._route(messages)
            attributes = {"expertmesh.expert": decision.expert, "expertmesh.routed_by": decision.routed_by,
                          "expertmesh.domain": decision.domain, "expertmesh.confidence": decision.confidence}  # fmt: skip
            span.set_attributes({name: value for name, value in attributes.items() if value is not None})
            return decision

    async def _route(self, messages: list[dict]) -> RoutingDecision:
        if self.policy is None:
            raise APIError(503, "no router is loaded; name an expert as the model", "server_error")
        texts, contexts = self.policy.inputs_to_score(messages)
        if not texts[0].strip():  # no user text to route on
            return RoutingDecision(expert=self.fallback_expert, routed_by="fallback")
        # Concurrent requests share classifier calls; the encoder runs off the event loop.
        start = time.perf_counter()
        rows = await self.batcher.predict_proba(texts, contexts)
        decision = self.policy.decide(rows, (time.perf_counter() - start) * 1000)
        self.metrics.routing_seconds.observe(decision.latency_ms / 1000)
        if decision.confidence is not None:
            self.metrics.routing_confidence.observe(decision.confidence)
        return decision

    def resolve(self, model: str) -> str:
        """The model a client named, through gateway.model_aliases."""
        return self.model_aliases.get(model, model)

    async def decide(self, model: str, messages: list[dict], caller: Caller) -> RoutingDecision:
        """Route `messages` for model "auto"; otherwise the named expert, which must exist and
        be one the caller's key may use. The decision goes into the caller's record."""
        caller.record.model = model
        if model == AUTO_MODEL:
            decision = self._within_key(await self.route(messages), caller.key)
        elif self.experts.get(model) is None:
            raise APIError(404, f"The model '{model}' does not exist; available models: {self.model_ids_for(caller.key)}",
                           param="model", code="model_not_found")  # fmt: skip
        elif not may_use(caller.key, model):
            raise APIError(403, f"The key '{caller.key.name}' may not use the model '{model}'; it may use "
                           f"{self.model_ids_for(caller.key)}", param="model", code="model_not_allowed")  # fmt: skip
        else:
            decision = RoutingDecision(expert=model, routed_by="explicit")
        caller.record.routed(decision, routing_text(messages) if self.store_text else None)
        return decision

    def _within_key(self, decision: RoutingDecision, key: KeyConfig) -> RoutingDecision:
        """A routed decision for an expert the key may not use goes to the most probable domain
        whose expert it may use (the key's own fallback, in effect)."""
        if may_use(key, decision.expert):
            return decision
        owners = {domain: name for name in self.experts.names for domain in self.experts.get(name).config.domains}
        allowed = [(score, owners[domain]) for domain, score in decision.scores.items()
                   if domain in owners and may_use(key, owners[domain])]  # fmt: skip
        expert = max(allowed)[1] if allowed else next(name for name in self.experts.names if may_use(key, name))
        return replace(decision, expert=expert)

    # --- the three APIs ------------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest, disconnected: Disconnected = _never,
                   caller: Caller | None = None) -> Response:  # fmt: skip
        """disconnected(): whether the client has gone away (a fan-out then stops asking)."""
        caller = caller or Caller()
        if request.model in self.model_aliases:
            request = request.model_copy(update={"model": self.model_aliases[request.model]})
        fields = request.upstream_fields()
        decision = await self.decide(request.model, fields["messages"], caller)
        if request.model == AUTO_MODEL and decision.scores:
            settings = FanoutSettings.merge(self.fanout_config, self.fallback_expert, request.expertmesh)
            if settings.enabled:
                assignments = [a for a in plan_assignments(self.policy, decision, fields["messages"], settings)
                               if may_use(caller.key, a.expert)]  # fmt: skip
                if len(assignments) > 1:
                    return await self._fan_out(request, decision, assignments, settings, disconnected, caller)

        def prepare(client: ExpertClient) -> Upstream:
            return Upstream(client.request_body(fields, decision.domain), CHAT_PATH,
                            lambda meta: ChunkRelay(meta, client.name))  # fmt: skip

        return await self._call(decision, prepare, request.stream, caller)

    async def completions(self, request: CompletionRequest, caller: Caller | None = None) -> Response:
        """A legacy completion: routed on the prompt, relayed as is (no prompt format: the prompt is raw text)."""
        model = self.resolve(request.model)
        text = request.prompt_text()
        if model == AUTO_MODEL and text is None:
            raise APIError(400, "a prompt of token ids cannot be routed: name an expert as the model", param="prompt")
        caller = caller or Caller()
        decision = await self.decide(model, [{"role": "user", "content": text or ""}], caller)
        fields = request.upstream_fields()

        def prepare(client: ExpertClient) -> Upstream:
            return Upstream(client.completion_body(fields), COMPLETIONS_PATH, lambda meta: ChunkRelay(meta, client.name))

        return await self._call(decision, prepare, request.stream, caller)

    async def responses(self, request: ResponsesRequest, caller: Caller | None = None) -> Response:
        """The Responses API: routed on its input; relayed to an expert that serves it, else translated."""
        caller = caller or Caller()
        responses.refuse_stored_state(request)
        messages = responses.conversation(request)
        decision = await self.decide(self.resolve(request.model), messages, caller)

        def prepare(client: ExpertClient) -> Upstream:
            if client.serves_responses_api:
                return self._responses_native(request, messages, decision, client)
            responses.refuse_previous_response(request, native_and_named=False)
            formatted = client.prompt.format(messages, decision.domain)
            body = client.completion_body(responses.chat_request_fields(request))
            body["messages"] = responses.chat_messages(formatted)
            return Upstream(body, CHAT_PATH,
                            lambda meta: TranslatedResponseRelay(request, meta, client.name, client.config.model),
                            lambda chat: response_events.response_from_chat(chat, request))  # fmt: skip

        return await self._call(decision, prepare, request.stream, caller)

    @staticmethod
    def _responses_native(request: ResponsesRequest, messages: list[dict], decision: RoutingDecision,
                          client: ExpertClient) -> Upstream:  # fmt: skip
        responses.refuse_previous_response(request, native_and_named=decision.routed_by == "explicit")
        # A stored conversation continued by previous_response_id has the expert's system prompt already.
        formatted = client.prompt.format(messages, decision.domain, system_prompt=not request.previous_response_id)
        fields = request.model_dump(exclude_none=True, exclude={"instructions", "expertmesh"})
        body = {**client.responses_defaults(), **fields, "model": client.config.model,
                "input": responses.native_input(formatted)}  # fmt: skip
        return Upstream(body, RESPONSES_PATH, lambda meta: NativeResponseRelay(meta, client.name))

    # --- calling the expert, or its fallbacks ----------------------------------------------------

    async def _call(self, decision: RoutingDecision, prepare: Prepare, stream: bool, caller: Caller) -> Response:
        """Ask the decided expert (then its fallbacks, in turn), count it, and answer with its
        JSON (plus the `expertmesh` field; converted to another API's shape) or its stream."""
        deadline = time.monotonic() + self.request_timeout_s
        start = time.perf_counter()

        async def ask(client: ExpertClient) -> tuple[Upstream, AsyncExitStack | None, Any]:
            upstream = prepare(client)
            if not stream:
                return upstream, None, upstream.convert(await client.complete(upstream.body, upstream.path, deadline))
            stack = AsyncExitStack()  # the open stream; closed when the relay ends
            lines = await stack.enter_async_context(client.stream(upstream.body, upstream.path, deadline))
            return upstream, stack, lines

        chain = [client for client in self.experts.chain(decision.expert) if may_use(caller.key, client.name)]
        try:
            (upstream, stack, result), client, failed = await ask_in_turn(chain, ask)
        except ExpertError as exc:
            self.metrics.expert_errors.labels(exc.expert, exc.kind).inc()
            error = from_expert_error(exc)
            self.metrics.requests.labels(exc.expert, decision.routed_by, str(error.status)).inc()
            raise error from exc
        headers = decision_headers(decision)
        record = caller.record
        record.answered_by = client.name
        if failed:
            self._count_failover(client.name, failed)
            headers.update(failover_headers(client.name, failed))
            record.failovers = [f.to_dict() for f in failed]
        meta = failover_meta(decision, client.name, failed)
        if stack is not None:
            response: Response = StreamingResponse(
                self._relay(upstream.relay(meta), result, stack, client.name, record),
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-cache"},
            )
        else:
            record.used(result.get("usage"))
            result["expertmesh"] = meta
            response = Response(orjson.dumps(result), media_type="application/json", headers=headers)
        self.metrics.expert_seconds.labels(client.name, "yes" if stream else "no").observe(time.perf_counter() - start)
        self.metrics.requests.labels(client.name, decision.routed_by, "200").inc()
        return response

    def _count_failover(self, answered_by: str, failed: list[FailedExpert]) -> None:
        for item in failed:
            self.metrics.expert_errors.labels(item.expert, item.error).inc()
            self.metrics.failovers.labels(item.expert, answered_by, item.error).inc()

    async def _relay(self, relay: StreamRelay, lines: Lines, stack: AsyncExitStack, expert: str,
                     record: RequestRecord) -> AsyncIterator[bytes]:  # fmt: skip
        """An expert that fails mid-stream ends the stream with its format's error event. The
        record gets the stream's usage if it carries one, else its number of events as an
        estimate of the completion tokens (vLLM sends about one token per event)."""
        events = 0
        try:
            async for data in relay.relay(lines):
                events += 1
                if b'"usage"' in data and (usage := _usage_in(data)) is not None:
                    record.used(usage)
                yield data
        except ExpertError as exc:
            log.warning("%s (mid-stream)", exc.for_log())
            self.metrics.expert_errors.labels(expert, exc.kind).inc()
            yield relay.error(from_expert_error(exc))
        finally:
            if record.completion_tokens is None:
                record.completion_tokens = max(0, events - 2)  # less the opening and closing events
            await stack.aclose()

    async def _fan_out(self, request, decision, assignments, settings, disconnected, caller: Caller) -> Response:
        try:
            response = await self.fanout.respond(request, decision, assignments, settings, disconnected)
        except APIError as error:
            self.metrics.requests.labels("fanout", decision.routed_by, str(error.status)).inc()
            raise
        caller.record.answered_by = ",".join(a.expert for a in assignments)
        if not isinstance(response, StreamingResponse) and response.status_code == 200:
            caller.record.used(orjson.loads(response.body).get("usage"))
        self.metrics.requests.labels("fanout", decision.routed_by, str(response.status_code)).inc()
        return response

