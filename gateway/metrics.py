"""Prometheus metrics of the gateway, served on GET /metrics.

What an operator of a routing gateway watches: traffic and errors per expert, how requests were
routed (router, fallback, a kept conversation, explicit, fan-out), the router's latency and its
confidence (a drifting confidence distribution is the first sign of traffic unlike the training
data), and each expert's latency. Recording is a few counter and histogram updates per request
(prometheus-client, in memory); nothing is formatted until a scrape asks.

With several worker processes (`gateway.workers`), prometheus-client's multiprocess mode is on:
each worker writes its values to files in $PROMETHEUS_MULTIPROC_DIR, and a scrape of any worker
adds them up, so the numbers are the whole gateway's, whichever worker answers the scrape.
"""

from __future__ import annotations

import os

from fastapi.responses import Response

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: from a sub-millisecond relay to a long generation.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ROUTING_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25)
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class GatewayMetrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        # In multiprocess mode the values live in files; the registry only serves the
        # module-level metric names, so register into a throwaway one and collect from files.
        target = CollectorRegistry() if self.multiprocess else self.registry
        self.requests = Counter(
            "expertmesh_requests", "Chat requests by the expert that answered, how it was chosen, and the HTTP status",
            ["expert", "routed_by", "status"], registry=target,
        )  # fmt: skip
        self.expert_errors = Counter(
            "expertmesh_expert_errors", "Failures talking to an expert, by kind (unavailable, timeout, failed, rate_limited, misconfigured, rejected, circuit_open, request_timeout)",
            ["expert", "kind"], registry=target,
        )  # fmt: skip
        self.expert_seconds = Histogram(
            "expertmesh_expert_seconds", "Time an expert took: to its whole answer, or to the start of its stream",
            ["expert", "stream"], buckets=LATENCY_BUCKETS, registry=target,
        )  # fmt: skip
        self.routing_seconds = Histogram(
            "expertmesh_routing_seconds", "Time to a routing decision (the router's encoder and classifier)",
            buckets=ROUTING_BUCKETS, registry=target,
        )  # fmt: skip
        self.routing_confidence = Histogram(
            "expertmesh_routing_confidence", "The router's probability for its top domain",
            buckets=CONFIDENCE_BUCKETS, registry=target,
        )  # fmt: skip
        self.retries = Counter(
            "expertmesh_retries", "Requests tried again on an expert (another replica, or the same after a backoff), by the error",
            ["expert", "reason"], registry=target,
        )  # fmt: skip
        self.failovers = Counter(
            "expertmesh_failovers", "Requests answered by a fallback expert after their expert failed, by the error",
            ["from_expert", "to_expert", "reason"], registry=target,
        )  # fmt: skip
        # livemin: with several workers, a replica counts as out if any live worker took it out.
        self.replica_state = Gauge(
            "expertmesh_replica_state", "A replica's circuit breaker: 1 closed (serving), 0.5 half-open (on trial), 0 open (taken out)",
            ["expert", "replica"], registry=target, multiprocess_mode="livemin",
        )  # fmt: skip
        self.circuit_opened = Counter(
            "expertmesh_circuit_opened", "Times a replica was taken out after repeated failures",
            ["expert", "replica"], registry=target,
        )  # fmt: skip
        self.rate_limited = Counter(
            "expertmesh_rate_limited", "Requests refused by a key's limit (requests or tokens per minute)",
            ["key", "limit"], registry=target,
        )  # fmt: skip
        self.log_dropped = Counter(
            "expertmesh_decision_log_dropped", "Decision-log records dropped because the database was away too long",
            registry=target,
        )  # fmt: skip
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry)

    def replica_changed(self, expert: str, replica: int, state: str) -> None:
        """A replica's breaker changed state (experts/replicas.py calls this)."""
        from expertmesh.experts.replicas import OPEN, STATE_VALUES

        self.replica_state.labels(expert, str(replica)).set(STATE_VALUES[state])
        if state == OPEN:
            self.circuit_opened.labels(expert, str(replica)).inc()

    def retried(self, expert: str, reason: str) -> None:
        self.retries.labels(expert, reason).inc()

    def response(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
