"""What each part of issue #15 costs per request, measured alone (the shared harness measures the
whole gateway): a limit check in the process and in Redis, a decision-log record queued and
written (SQLite, PostgreSQL), and a request's three spans. Medians of repeated rounds; Redis and
PostgreSQL are real servers on 127.0.0.1, started here (tests/services.py).

    .venv/bin/python benchmarks/bench_observability.py [--rounds 7] [--out benchmarks/results/observability.md]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from expertmesh.config import KeyConfig, LogConfig, TracingConfig
from expertmesh.gateway.decision_log import DecisionLog, RequestRecord
from expertmesh.gateway.ratelimit import LocalLimiter, RedisLimiter
from expertmesh.gateway.tracing import RequestTracer, build_tracer_provider
from tests.services import postgres_server, redis_server

KEY = KeyConfig(name="bench", key="sk", requests_per_minute=10**9, tokens_per_minute=10**12)


def median_us(rounds: int, calls: int, run: Callable[[int], float]) -> float:
    """Median over rounds of the seconds `run(calls)` reports, per call, in microseconds."""
    return statistics.median(run(calls) / calls * 1e6 for _ in range(rounds))


def limiter_round(limiter, calls: int) -> float:
    async def go() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            await limiter.admit(KEY)
            await limiter.spend(KEY, 100)
        return time.perf_counter() - start

    return asyncio.run(go())


def record(i: int) -> RequestRecord:
    r = RequestRecord(f"req-{i}", "/v1/chat/completions", key_name="bench", model="auto", expert="medical",
                      answered_by="medical", domain="medical", confidence=0.93, routed_by="router", latency_ms=1.2,
                      prompt_tokens=40, completion_tokens=200, status=200, text="What are the symptoms of flu?")  # fmt: skip
    r.scores = {"medical": 0.93, "general": 0.04, "science": 0.03}
    return r


def log_round(decisions: DecisionLog, calls: int) -> tuple[float, float]:
    """(seconds to queue `calls` records, seconds to write them)."""
    records = [record(i) for i in range(calls)]
    start = time.perf_counter()
    for r in records:
        decisions.add(r)
    queued = time.perf_counter() - start
    start = time.perf_counter()
    decisions.flush()
    return queued, time.perf_counter() - start


def spans_round(tracer: RequestTracer, calls: int) -> float:
    from opentelemetry import context, trace
    from opentelemetry.propagate import inject

    start = time.perf_counter()
    for _ in range(calls):
        span = tracer.start("POST", "/v1/chat/completions", {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
        token = context.attach(trace.set_span_in_context(span))
        with tracer.tracer.start_as_current_span("route") as route:
            route.set_attributes({"expertmesh.domain": "medical", "expertmesh.confidence": 0.93})
        expert = tracer.tracer.start_span("expert medical", attributes={"expertmesh.expert": "medical"})
        inject({}, context=trace.set_span_in_context(expert))
        expert.end()
        span.set_attributes({"http.response.status_code": 200})
        span.end()
        context.detach(token)
    return time.perf_counter() - start


def _encode_seconds(encode, spans) -> float:
    start = time.perf_counter()
    for first in range(0, len(spans), 512):
        encode(spans[first : first + 512])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows: list[tuple[str, float, str]] = []

    rows.append(("limits in the process: admit + debit", median_us(args.rounds, 5000, lambda n: limiter_round(LocalLimiter(10), n)), ""))
    with redis_server() as url:
        rows.append(("limits in Redis: admit (+ debit carried with it)", median_us(args.rounds, 2000, lambda n: limiter_round(RedisLimiter(url, 10), n)),
                     "one EVALSHA round trip on loopback, redis-server on the same 2 cores"))  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        decisions = DecisionLog(LogConfig(url=f"sqlite:///{folder}/bench.db"))
        decisions.start()
        timings = [log_round(decisions, 2000) for _ in range(args.rounds)]
        decisions.stop()
    rows.append(("decision log: queue a record (request path)", statistics.median(q for q, _ in timings) / 2000 * 1e6, ""))
    rows.append(("decision log: write a record, SQLite (writer thread)", statistics.median(w for _, w in timings) / 2000 * 1e6,
                 "batches of 2,000, WAL, synchronous=NORMAL"))  # fmt: skip
    with postgres_server() as url:
        decisions = DecisionLog(LogConfig(url=url))
        decisions.start()
        timings = [log_round(decisions, 2000) for _ in range(args.rounds)]
        decisions.stop()
    rows.append(("decision log: write a record, PostgreSQL (writer thread)", statistics.median(w for _, w in timings) / 2000 * 1e6,
                 "batches of 2,000 by COPY; test cluster with fsync off"))  # fmt: skip
    tracer = RequestTracer(build_tracer_provider(TracingConfig(enabled=True)))  # spans made, none exported
    rows.append(("tracing: a request's three spans + traceparent", median_us(args.rounds, 3000, lambda n: spans_round(tracer, n)),
                 "made and ended; the OTLP export (batched, in its own thread) not included"))  # fmt: skip

    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from expertmesh.gateway.tracing import otlp_json

    memory = InMemorySpanExporter()
    spans_round(RequestTracer(build_tracer_provider(TracingConfig(enabled=True), memory)), 1000)
    spans = memory.get_finished_spans()
    for name, encode in [("protobuf (the library's exporter)", lambda batch: encode_spans(batch).SerializeToString()),
                         ("JSON (gateway/tracing.py)", otlp_json)]:  # fmt: skip
        per_span = statistics.median(_encode_seconds(encode, spans) for _ in range(args.rounds)) / len(spans) * 1e6
        rows.append((f"tracing: OTLP export, {name}", per_span * 3, f"{per_span:.1f} µs a span, in batches of 512"))

    machine = f"{platform.processor() or platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    lines = [f"Machine: {machine}, {time.strftime('%Y-%m-%d')}; median of {args.rounds} rounds", "",
             "| what | µs per request | note |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {what} | {us:.1f} | {note} |" for what, us, note in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(f"# Observability parts, per request\n\nCommand: `.venv/bin/python benchmarks/bench_observability.py`\n\n{text}\n")


if __name__ == "__main__":
    main()
