"""Fan-out latency: one request answered by k = 1..4 experts, each a fake expert with a fixed
delay, combined by `all` (no model) or `synthesize` (a fake aggregator with its own delay).
Concurrent fan-out should cost the slowest expert plus the aggregation, not the sum.

Gateway and fake experts run on 127.0.0.1 in this process (uvicorn threads); the router is a
stand-in that spreads probability evenly, so that top_p = 1 and max_experts = k pick k experts.

python benchmarks/bench_fanout.py [--expert-delay 0.2] [--aggregator-delay 0.1] [--requests 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from expertmesh.experts.pool import ExpertPool  # noqa: E402
from expertmesh.gateway.app import build_app  # noqa: E402
from expertmesh.router.policy import RoutingPolicy  # noqa: E402
from tests.conftest import DOMAINS, fake_config, serve_in_thread  # noqa: E402
from tests.fake_expert import build_fake_app  # noqa: E402


class EvenClassifier:
    """Every domain equally likely but in a fixed order, so that top-p takes experts one by one."""

    kind, labels, threshold = "even", DOMAINS, 0.0

    def predict_proba(self, texts):
        row = np.linspace(0.2, 0.1, len(self.labels))
        return np.tile(row / row.sum(), (len(texts), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expert-delay", type=float, default=0.2)
    parser.add_argument("--aggregator-delay", type=float, default=0.1)
    parser.add_argument("--requests", type=int, default=15)
    args = parser.parse_args()
    models = [f"{name}-model" for name in ("medical", "legal", "finance", "code", "math", "general")]
    fake = build_fake_app(models, delay_s=args.expert_delay)
    print(f"{platform.machine()}, {os.cpu_count()} cores; expert delay {args.expert_delay * 1000:.0f} ms, "
          f"aggregator delay {args.aggregator_delay * 1000:.0f} ms, {args.requests} requests per cell, concurrency 1")  # fmt: skip
    print("| experts k | strategy | p50 latency | sum of the experts' delays (+ aggregation) |")
    print("|---|---|---|---|")
    with serve_in_thread(fake) as url:
        config = fake_config(url)
        config = config.model_copy(update={"fanout": config.fanout.model_copy(update={"enabled": True}),
                                           "router": config.router.model_copy(update={"confidence_threshold": 0.0})})
        app = build_app(config, RoutingPolicy(EvenClassifier(), config), ExpertPool(config))
        with serve_in_thread(app) as gateway, httpx.Client(timeout=30) as client:
            for strategy in ("all", "synthesize"):
                # The general expert is the aggregator; as an expert it answers at the expert delay.
                fake.state.per_model = {"general-model": {"delay": args.aggregator_delay}} if strategy == "synthesize" else {}
                for k in (1, 2, 3, 4):
                    body = {"model": "auto", "messages": [{"role": "user", "content": "a question"}],
                            "expertmesh": {"fanout": True, "top_p": 1.0, "max_experts": k, "strategy": strategy}}  # fmt: skip
                    client.post(f"{gateway}/v1/chat/completions", json=body).raise_for_status()  # warm-up
                    latencies = []
                    for _ in range(args.requests):
                        start = time.perf_counter()
                        client.post(f"{gateway}/v1/chat/completions", json=body).raise_for_status()
                        latencies.append((time.perf_counter() - start) * 1000)
                    serial = k * args.expert_delay + (args.aggregator_delay if strategy == "synthesize" and k > 1 else 0)
                    print(f"| {k} | {strategy} | {statistics.median(latencies):.0f} ms | {serial * 1000:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
