"""The traffic dashboard's figures, read from the decision log (GET /v1/traffic).

One query reads the window's requests (a few columns, newest first, at most MAX_ROWS); the
figures are computed here rather than in SQL so that SQLite and PostgreSQL give the same
answer (their percentile and bucketing functions differ). A second query reads the least
confident requests (with their text, when the log keeps it), a third the feedback counts.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from expertmesh.gateway.decision_log import Store

# The range picker's choices, in seconds.
WINDOWS: dict[str, int] = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
Window = Literal["15m", "1h", "6h", "24h", "7d", "30d"]
# Bucket widths a person reads easily; the smallest that gives at most the asked number of buckets.
BUCKET_SIZES_S = (10, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
ANSWER_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
ROUTE_ONLY_ENDPOINT = "/v1/route"
MAX_ROWS = 200_000  # newest first: a busier window is summarised from its latest requests
CONFIDENCE_BINS = 10
LEAST_CONFIDENT = 10
FANOUT = "fan-out"  # the expert column of a request several experts answered


@dataclass(frozen=True)
class TrafficQuery:
    window: Window
    until: float
    buckets: int
    key_name: str | None  # None: every key's requests

    @property
    def since(self) -> float:
        return self.until - WINDOWS[self.window]

    @property
    def bucket_s(self) -> int:
        span = WINDOWS[self.window]
        return next((size for size in BUCKET_SIZES_S if span / size <= self.buckets), BUCKET_SIZES_S[-1])


@dataclass
class Row:
    time: float
    endpoint: str
    expert: str | None
    domain: str | None
    confidence: float | None
    routed_by: str | None
    failed_over: bool
    latency_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    status: int | None


def _answered_by(expert: str | None, answered_by: str | None) -> str | None:
    if answered_by and "," in answered_by:
        return FANOUT
    return answered_by or expert


def _where(query: TrafficQuery, placeholder: str) -> tuple[str, tuple]:
    clause, params = f"time >= {placeholder} AND time < {placeholder}", (query.since, query.until)
    if query.key_name is not None:
        clause, params = f"{clause} AND key_name = {placeholder}", (*params, query.key_name)
    return clause, params


def read_rows(store: Store, query: TrafficQuery) -> tuple[list[Row], bool]:
    """The window's requests, newest first; and whether there were more than MAX_ROWS."""
    where, params = _where(query, store.placeholder)
    raw = store.query(
        f"SELECT time, endpoint, expert, answered_by, domain, confidence, routed_by, failovers, latency_ms, "
        f"prompt_tokens, completion_tokens, status FROM decisions WHERE {where} ORDER BY time DESC LIMIT {MAX_ROWS + 1}",
        params,
    )
    rows = []
    for t, endpoint, expert, answered_by, domain, confidence, routed_by, failovers, *rest in raw[:MAX_ROWS]:
        latency, prompt, completion, status = rest
        rows.append(Row(t, endpoint, _answered_by(expert, answered_by), domain, confidence, routed_by,
                        failovers is not None, latency, prompt, completion, status))  # fmt: skip
    return rows, len(raw) > MAX_ROWS


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    p50, p95 = np.percentile(values, [50, 95])
    return round(float(p50), 1), round(float(p95), 1)


def totals(answers: list[Row], route_only: int) -> dict[str, Any]:
    n = len(answers)
    client = sum(1 for r in answers if r.status is not None and 400 <= r.status < 500)
    server = sum(1 for r in answers if r.status is None or r.status >= 500)
    fallbacks = sum(1 for r in answers if r.routed_by == "fallback")
    failovers = sum(1 for r in answers if r.failed_over)
    return {
        "requests": n, "route_only": route_only,
        "client_errors": client, "client_error_rate": _rate(client, n),
        "server_errors": server, "server_error_rate": _rate(server, n),
        "fallbacks": fallbacks, "fallback_rate": _rate(fallbacks, n),
        "failovers": failovers, "failover_rate": _rate(failovers, n),
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in answers),
        "completion_tokens": sum(r.completion_tokens or 0 for r in answers),
    }  # fmt: skip


def per_expert(answers: list[Row]) -> list[dict[str, Any]]:
    """Requests, share, errors and latency for each expert that was asked (most requests first)."""
    by_expert: dict[str, list[Row]] = defaultdict(list)
    for row in answers:
        if row.expert is not None:
            by_expert[row.expert].append(row)
    routed = sum(len(rows) for rows in by_expert.values())
    report = []
    for expert, rows in sorted(by_expert.items(), key=lambda item: (-len(item[1]), item[0])):
        ok = [r.latency_ms for r in rows if r.status == 200 and r.latency_ms is not None]
        p50, p95 = _percentiles(ok)
        errors = sum(1 for r in rows if r.status is None or r.status >= 500)
        report.append({"expert": expert, "requests": len(rows), "share": _rate(len(rows), routed),
                       "server_errors": errors, "server_error_rate": _rate(errors, len(rows)),
                       "failovers": sum(1 for r in rows if r.failed_over), "p50_ms": p50, "p95_ms": p95})  # fmt: skip
    return report


def series(answers: list[Row], query: TrafficQuery) -> dict[str, Any]:
    """Requests per expert in each time bucket, oldest bucket first."""
    width = query.bucket_s
    first = math.floor(query.since / width) * width
    count = math.ceil((query.until - first) / width)
    counts: dict[str, list[int]] = defaultdict(lambda: [0] * count)
    for row in answers:
        index = min(int((row.time - first) // width), count - 1)
        counts[row.expert or "unrouted"][index] += 1
    return {"bucket_s": width, "starts": [first + i * width for i in range(count)], "experts": dict(counts)}


def confidence_histograms(answers: list[Row]) -> dict[str, list[int]]:
    """For each domain the router chose, how many requests fell in each tenth of confidence."""
    histograms: dict[str, list[int]] = defaultdict(lambda: [0] * CONFIDENCE_BINS)
    for row in answers:
        if row.domain is not None and row.confidence is not None:
            histograms[row.domain][min(int(row.confidence * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)] += 1
    return dict(histograms)


def least_confident(store: Store, query: TrafficQuery) -> list[dict[str, Any]]:
    """The window's answered requests the router was least sure of (their text when the log kept
    it). Route-only requests are left out: the playground sends one per pause in typing."""
    where, params = _where(query, store.placeholder)
    endpoints = ", ".join(f"'{e}'" for e in sorted(ANSWER_ENDPOINTS))  # constants, not input
    raw = store.query(
        f"SELECT request_id, time, endpoint, domain, confidence, expert, routed_by, status, text, scores FROM decisions "
        f"WHERE {where} AND confidence IS NOT NULL AND endpoint IN ({endpoints}) "
        f"ORDER BY confidence, time DESC LIMIT {LEAST_CONFIDENT}",
        params,
    )
    names = ("request_id", "time", "endpoint", "domain", "confidence", "expert", "routed_by", "status", "text")
    rows = []
    for values in raw:
        row = dict(zip(names, values[:-1]))
        scores = orjson.loads(values[-1]) if values[-1] else {}
        row["runner_up"] = next(iter(sorted((d for d in scores if d != row["domain"]), key=lambda d: -scores[d])), None)
        rows.append(row)
    return rows


def feedback_counts(store: Store, query: TrafficQuery) -> dict[str, int]:
    """Ratings and domain corrections given in the window (on the viewer's requests)."""
    p = store.placeholder
    clause, params = f"time >= {p} AND time < {p}", (query.since, query.until)
    if query.key_name is not None:
        clause, params = f"{clause} AND key_name = {p}", (*params, query.key_name)
    raw = store.query(f"SELECT rating, domain IS NOT NULL FROM feedback WHERE {clause}", params)
    ratings = Counter(rating for rating, _ in raw)
    return {"good": ratings[1], "neutral": ratings[0], "bad": ratings[-1], "corrections": sum(1 for _, c in raw if c)}


def traffic_report(store: Store, query: TrafficQuery, threshold: float | None, domains: list[str]) -> dict[str, Any]:
    """Everything the dashboard draws, for one window."""
    rows, truncated = read_rows(store, query)
    answers = [r for r in rows if r.endpoint in ANSWER_ENDPOINTS]
    route_only = sum(1 for r in rows if r.endpoint == ROUTE_ONLY_ENDPOINT)
    return {
        "object": "traffic", "window": query.window, "since": query.since, "until": query.until,
        "scope": "all keys" if query.key_name is None else f"key {query.key_name}",
        "generated": time.time(), "truncated": truncated, "domains": domains, "threshold": threshold,
        "totals": totals(answers, route_only), "experts": per_expert(answers), "series": series(answers, query),
        "confidence": {"bins": CONFIDENCE_BINS, "domains": confidence_histograms(answers)},
        "least_confident": least_confident(store, query), "feedback": feedback_counts(store, query),
    }  # fmt: skip
