"""Every request's id, record and trace span, set up around the whole app.

A pure ASGI middleware (no per-request task or body copy, unlike Starlette's BaseHTTPMiddleware):
it gives the request its id (the caller's `x-request-id` if it sent a usable one, else a new
one; echoed in the response), its RequestRecord for the decision log, and its server span when
tracing is on. Once the response has gone out, it completes the record (status, latency), hands
it to the decision log, and debits the key's tokens-per-minute with the tokens the answer used.
"""

from __future__ import annotations

import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from expertmesh.gateway.decision_log import DecisionLog, RequestRecord
from expertmesh.gateway.keys import KeyRing
from expertmesh.gateway.tracing import RequestTracer

REQUEST_ID_HEADER = b"x-request-id"
# A caller's id is kept if it is short and printable; anything else gets a fresh one.
_USABLE_ID = re.compile(rb"^[\x21-\x7e]{1,128}$")
# The endpoints whose requests are logged (probes, metrics and the model list are not).
# The W3C trace-context headers a caller's trace continues from.
TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
LOGGED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/route"})


class RequestRecorder:
    def __init__(self, app: ASGIApp, decisions: DecisionLog | None, tracer: RequestTracer | None,
                 keys: KeyRing) -> None:  # fmt: skip
        self.app, self.decisions, self.tracer, self.keys = app, decisions, tracer, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((value for name, value in scope["headers"] if name == REQUEST_ID_HEADER), None)
        request_id = given if given is not None and _USABLE_ID.match(given) else f"req_{uuid.uuid4().hex}".encode()
        record = RequestRecord(request_id.decode(), scope["path"])
        state = scope.setdefault("state", {})
        state["record"] = record
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id)]
            await send(message)

        span, token = self._start_span(scope), None
        if span is not None:
            from opentelemetry import context, trace

            token = context.attach(trace.set_span_in_context(span))
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            record.status = record.status or 500
            raise
        finally:
            record.latency_ms = (time.perf_counter() - started) * 1000
            if span is not None:
                self._end_span(span, record, token)
            if self.decisions is not None and record.endpoint in LOGGED_PATHS:
                self.decisions.add(record)
            key = state.get("key")
            if key is not None and key.tokens_per_minute is not None and record.total_tokens:
                await self.keys.spend(key, record.total_tokens)

    def _start_span(self, scope: Scope):
        if self.tracer is None:
            return None
        carried = {name.decode(): value.decode("latin-1") for name, value in scope["headers"] if name in TRACE_HEADERS}
        return self.tracer.start(scope["method"], scope["path"], carried)

    @staticmethod
    def _end_span(span, record: RequestRecord, token) -> None:
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        # The decision and the expert are the route and expert spans' attributes; the request's span
        # keeps what only it knows (each attribute costs ~5 µs in the SDK's checks).
        span.set_attributes({"http.response.status_code": record.status or 0, "expertmesh.request_id": record.request_id})
        if record.key_name is not None:
            span.set_attribute("expertmesh.key", record.key_name)
        if (record.status or 500) >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        context.detach(token)
