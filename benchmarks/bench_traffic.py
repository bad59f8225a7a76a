"""How long GET /v1/traffic's report takes on a decision log of N requests (SQLite).

The log is filled with synthetic records (experts, confidences, latencies and statuses drawn at
random: a load fixture, not data anyone learns from), then `traffic_report` is timed for the
dashboard's windows. It runs in a worker thread of the gateway; this is the CPU it takes there.

    python benchmarks/bench_traffic.py [--rows 10000,100000,200000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from expertmesh.config import LogConfig
from expertmesh.gateway.decision_log import DecisionLog, RequestRecord
from expertmesh.gateway.traffic import TrafficQuery, traffic_report

DOMAINS = ["medical", "legal", "finance", "code", "math", "science", "general"]
EXPERT = {"science": "general"}


def fill(log: DecisionLog, rows: int, span_s: float, now: float) -> None:
    rng = random.Random(0)
    for i in range(rows):
        domain = rng.choice(DOMAINS)
        confidence = rng.betavariate(8, 2)
        record = RequestRecord(f"req_{i}", "/v1/chat/completions", time=now - rng.random() * span_s, key_name="bench")
        record.domain, record.confidence = domain, round(confidence, 4)
        record.routed_by = "router" if confidence >= 0.5 else "fallback"
        record.expert = EXPERT.get(domain, domain) if record.routed_by == "router" else "general"
        record.scores = {d: round(confidence if d == domain else (1 - confidence) / 6, 4) for d in DOMAINS}
        record.latency_ms, record.status = rng.lognormvariate(6, 0.6), rng.choices([200, 429, 502], [96, 3, 1])[0]
        record.prompt_tokens, record.completion_tokens = rng.randint(10, 400), rng.randint(10, 300)
        log.add(record)
        if i % 20000 == 19999:
            log.flush()
    log.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000,200000")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| requests in the log (24 h) | window | p50 of the report (ms) | min (ms) |")
    print("|---|---|---|---|")
    for rows in [int(n) for n in args.rows.split(",")]:
        with tempfile.TemporaryDirectory() as folder:
            config = LogConfig(url=f"sqlite:///{Path(folder) / 'decisions.db'}", max_pending=max(1000, rows))
            log = DecisionLog(config)
            log.start()
            now = time.time()
            fill(log, rows, 86400, now)
            for window in ("1h", "24h"):
                query = TrafficQuery(window, now, 48, None)
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    traffic_report(log.store, query, 0.5, DOMAINS)
                    times.append((time.perf_counter() - start) * 1000)
                print(f"| {rows:,} | {window} | {statistics.median(times):.0f} | {min(times):.0f} |")
            log.stop()


if __name__ == "__main__":
    main()
