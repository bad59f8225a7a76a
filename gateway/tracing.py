"""OpenTelemetry tracing of the gateway: a span per request, one for the routing decision and
one per expert call (experts/client.py), with the W3C traceparent sent on to the experts.

The gateway keeps its own TracerProvider (never the process-wide global one): tests build many
apps in one process, and an application that embeds the gateway keeps its own tracing. Off
(the default), no span is made and no header is added: the request path pays nothing.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from expertmesh.config import TracingConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

OTLP_ENV = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def otlp_endpoint(config: TracingConfig) -> str | None:
    """tracing.otlp_endpoint, else the OTLP endpoint the standard environment variables name."""
    if config.otlp_endpoint is not None:
        return str(config.otlp_endpoint)
    if endpoint := os.environ.get(OTLP_ENV[0]):
        return endpoint
    if endpoint := os.environ.get(OTLP_ENV[1]):
        return endpoint.rstrip("/") + "/v1/traces"  # the base endpoint, as the OTLP spec reads it
    return None


def build_tracer_provider(config: TracingConfig, exporter: SpanExporter | None = None) -> TracerProvider:
    """A provider that samples `sample_ratio` of new traces (a caller's sampled flag is kept) and
    exports in batches, off the request path: to `exporter` if given (tests give an in-memory
    one), else by OTLP over HTTP if an endpoint is configured, in `otlp_protocol`'s encoding."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    root = ALWAYS_ON if config.sample_ratio >= 1 else TraceIdRatioBased(config.sample_ratio)
    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}), sampler=ParentBased(root))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif (endpoint := otlp_endpoint(config)) is not None:
        provider.add_span_processor(PROCESSORS[config.otlp_protocol](endpoint))
    return provider


# --- OTLP/HTTP in its JSON encoding ----------------------------------------------------------------
# The library's exporter builds the protobuf message field by field in Python, on the gateway's
# own core: 2-2.5x the time of the same OTLP request as JSON (the protocol's other encoding, which
# the OpenTelemetry Collector, Jaeger and Tempo accept), plain dicts and one orjson call
# (benchmarks/bench_observability.py; BENCHMARKS.md).

_KINDS = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}  # OTLP's SpanKind numbers


# Attribute value -> its OTLP AnyValue, by exact type (bool before int: a bool is an int too).
_SCALARS: dict[type, Any] = {
    str: lambda v: {"stringValue": v},
    bool: lambda v: {"boolValue": v},
    int: lambda v: {"intValue": str(v)},  # int64 is a string in protobuf's JSON mapping
    float: lambda v: {"doubleValue": v},
}


def _value(value: Any) -> dict[str, Any]:
    encode = _SCALARS.get(type(value))
    if encode is not None:
        return encode(value)
    if isinstance(value, Sequence):
        return {"arrayValue": {"values": [_value(item) for item in value]}}
    return {"stringValue": str(value)}


def _attributes(attributes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [{"key": key, "value": _value(value)} for key, value in (attributes or {}).items()]


def _plain(attributes: Any) -> Mapping[str, Any]:
    """The SDK's own dict behind a span's attributes: its public `attributes` is a read-only
    proxy over a MutableMapping, whose item-by-item iteration was half the encoding's time.
    Falls back to the public view if the SDK's insides change."""
    return getattr(attributes, "_dict", None) or attributes or {}


def _span(span: ReadableSpan) -> dict[str, Any]:
    context = span.context
    status = span.status
    encoded: dict[str, Any] = {
        "traceId": format(context.trace_id, "032x"), "spanId": format(context.span_id, "016x"),
        "name": span.name, "kind": _KINDS[span.kind.name],
        "startTimeUnixNano": str(span.start_time), "endTimeUnixNano": str(span.end_time),
        "attributes": _attributes(_plain(getattr(span, "_attributes", None) or span.attributes)),
        "flags": 0x100 | context.trace_flags,
        "status": {"code": status.status_code.value, "message": status.description} if status.description
        else {"code": status.status_code.value},
    }  # fmt: skip
    if span.parent is not None:
        encoded["parentSpanId"] = format(span.parent.span_id, "016x")
        encoded["flags"] |= 0x200 if span.parent.is_remote else 0
    if context.trace_state:
        encoded["traceState"] = context.trace_state.to_header()
    if span.events:
        encoded["events"] = [{"timeUnixNano": str(e.timestamp), "name": e.name, "attributes": _attributes(e.attributes)}
                             for e in span.events]  # fmt: skip
    return encoded


def _envelope(encoded: list[tuple[Any, tuple, dict]]) -> bytes:
    """An OTLP ExportTraceServiceRequest from (resource, scope key, encoded span) rows, as JSON:
    spans grouped by resource, then by instrumentation scope."""
    grouped: dict[int, tuple[Any, dict[tuple, list]]] = {}
    for resource, scope, span in encoded:
        grouped.setdefault(id(resource), (resource, {}))[1].setdefault(scope, []).append(span)
    return orjson.dumps({"resourceSpans": [
        {"resource": {"attributes": _attributes(resource.attributes)},
         "scopeSpans": [{"scope": {"name": name, **({"version": version} if version else {})}, "spans": spans}
                        for (name, version), spans in scopes.items()]}
        for resource, scopes in grouped.values()]})  # fmt: skip


def _row(span: ReadableSpan) -> tuple[Any, tuple, dict]:
    scope = span.instrumentation_scope
    return span.resource, (scope.name, scope.version) if scope else ("", None), _span(span)


def otlp_json(spans: Sequence[ReadableSpan]) -> bytes:
    """An OTLP ExportTraceServiceRequest, JSON-encoded."""
    return _envelope([_row(span) for span in spans])


class OTLPJsonProcessor:
    """A span processor that sends OTLP/HTTP JSON (POST application/json) in batches.

    Why not the SDK's BatchSpanProcessor: its export thread encodes a whole batch in Python while
    holding the GIL, and the gateway's event loop waits for it. Measured beside each other at 8
    concurrent requests (BENCHMARKS.md), exporting from that thread cost the gateway about twice
    what making the spans did. Here each span is turned into its JSON-ready dict as it ends, on
    the thread that ends it (~20 µs), and the background thread does only what releases the GIL
    or is one short C call: orjson, and the HTTP request."""

    def __init__(self, endpoint: str, batch_size: int = 512, interval_s: float = 2.0, max_pending: int = 20_000,
                 timeout_s: float = 10.0) -> None:  # fmt: skip
        import threading

        import httpx

        self.endpoint, self.batch_size, self.interval_s, self.max_pending = endpoint, batch_size, interval_s, max_pending
        self._client = httpx.Client(timeout=timeout_s, headers={"content-type": "application/json"})
        self._pending: collections.deque[tuple[Any, tuple, dict]] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._send_lock = threading.Lock()
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="expertmesh-otlp-export", daemon=True)
        self._thread.start()

    def on_start(self, span, parent_context=None) -> None:
        pass

    def _on_ending(self, span) -> None:  # the SDK calls it on processors that have it
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context.trace_flags.sampled:
            return
        if len(self._pending) >= self.max_pending:  # the collector has been away for long
            self.dropped += 1
            return
        self._pending.append(_row(span))
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._send_all()

    def _send_all(self) -> None:
        with self._send_lock:
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(self.batch_size, len(self._pending)))]
                try:
                    response = self._client.post(self.endpoint, content=_envelope(batch))
                except Exception as exc:  # noqa: BLE001 - the collector is away: these spans are dropped
                    log.warning("tracing: cannot export %d spans to %s (%s)", len(batch), self.endpoint, exc)
                    return
                if response.status_code >= 300:
                    log.warning("tracing: %s refused %d spans (%d: %.200s)", self.endpoint, len(batch),
                                response.status_code, response.text)  # fmt: skip

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._send_all()
        return True

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(10)
        self._send_all()  # what is left
        self._client.close()


def _json_processor(endpoint: str):
    return OTLPJsonProcessor(endpoint)


def _protobuf_processor(endpoint: str):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))


# tracing.otlp_protocol -> the span processor that exports that way
PROCESSORS = {"http/json": _json_processor, "http/protobuf": _protobuf_processor}


class RequestTracer:
    """Starts the server span of a request, continuing the caller's trace if it sent a
    traceparent, and makes it the current span for the handler (and so the parent of the routing
    and expert spans)."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("expertmesh.gateway")
        self._propagator = TraceContextTextMapPropagator()

    def start(self, method: str, path: str, headers: Mapping[str, str]) -> Span:
        """headers: the request's trace-context headers (traceparent, tracestate), if any."""
        from opentelemetry.trace import SpanKind

        parent = self._propagator.extract(headers) if headers else None
        return self.tracer.start_span(f"{method} {path}", context=parent, kind=SpanKind.SERVER,
                                      attributes={"http.request.method": method, "url.path": path})  # fmt: skip

    def shutdown(self) -> None:
        self.provider.shutdown()  # exports what is left
