"""Router speed: single-request latency (p50, p95) and batched throughput.

Texts are a fixed, seeded sample of the vendored routing data (all domains, all lengths).

python benchmarks/bench_router.py [--router DIR] [--single 300] [--batch 64] [--batched 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

from expertmesh.config import load_config
from expertmesh.router.classifier import load_classifier
from expertmesh.router.data import read_examples, vendored_data_dir
from expertmesh.router.policy import RoutingPolicy


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--router", type=Path, default=None, help="artifact folder (default: the default config's)")
    parser.add_argument("--single", type=int, default=300, help="single requests to time")
    parser.add_argument("--batch", type=int, default=64, help="batch size for the throughput run")
    parser.add_argument("--batched", type=int, default=2048, help="texts routed in the throughput run")
    args = parser.parse_args()

    import torch

    config = load_config()
    policy = RoutingPolicy(load_classifier(args.router or config.router.artifact), config)
    texts = [e.text for e in read_examples(vendored_data_dir())]
    random.Random(0).shuffle(texts)
    for text in texts[:20]:  # warm-up
        policy.route(text)

    single = []
    for text in texts[: args.single]:
        start = time.perf_counter()
        policy.route(text)
        single.append((time.perf_counter() - start) * 1000)

    batched_texts = texts[: args.batched]
    start = time.perf_counter()
    for i in range(0, len(batched_texts), args.batch):
        policy.route_batch(batched_texts[i : i + args.batch])
    throughput = len(batched_texts) / (time.perf_counter() - start)

    result = {
        "router": policy.classifier.kind,
        "encoder": getattr(getattr(policy.classifier, "encoder", None), "name", "-"),
        "torch_threads": torch.get_num_threads(),
        "single_p50_ms": round(percentile(single, 50), 2),
        "single_p95_ms": round(percentile(single, 95), 2),
        "single_mean_ms": round(statistics.mean(single), 2),
        "batch_size": args.batch,
        "batched_decisions_per_s": round(throughput, 1),
        "mean_chars": round(statistics.mean(len(t) for t in texts[: args.single]), 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    print("| router | encoder | torch threads | single p50 ms | single p95 ms | batched decisions/s (batch) |")
    print("|---|---|---|---|---|---|")
    print(f"| {result['router']} | {result['encoder']} | {result['torch_threads']} | {result['single_p50_ms']} | {result['single_p95_ms']} | "
          f"{result['batched_decisions_per_s']} ({args.batch}) |")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
