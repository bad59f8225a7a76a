"""OpenTelemetry tracing of the gateway: a span per request, one for the routing decision and
one per expert call (experts/client.py), with the W3C traceparent sent on to the experts.

The gateway keeps its own TracerProvider (never the process-wide global one): tests build many
apps in one process, and an application that embeds the gateway keeps its own tracing. Off
(the default), no span is made and no header is added: the request path pays nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from expertmesh.config import TracingConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

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
    one), else by OTLP over HTTP if an endpoint is configured."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}),
                              sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))  # fmt: skip
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif (endpoint := otlp_endpoint(config)) is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


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
        from opentelemetry.trace import SpanKind

        parent = self._propagator.extract(headers)
        return self.tracer.start_span(f"{method} {path}", context=parent, kind=SpanKind.SERVER,
                                      attributes={"http.request.method": method, "url.path": path})  # fmt: skip

    def shutdown(self) -> None:
        self.provider.shutdown()  # exports what is left
