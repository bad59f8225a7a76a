"""The router's cost per request is bounded: a 1 MB message against a 2 kB one and a short one,
and whether a 1 MB message slows a concurrent small request (the gateway's path: the micro-
batcher, the classifier in a worker thread).

python benchmarks/bench_router_long.py [--router DIR] [--repeat 30]

Prints JSON: p50/p95 per message size, and the small request's latency alone and while 1 MB
messages are routed back to back beside it. All in one run, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path

from expertmesh.config import load_config
from expertmesh.router.batching import MicroBatcher
from expertmesh.router.classifier import load_classifier
from expertmesh.router.policy import RoutingPolicy

SMALL = "my landlord kept my whole deposit for a small stain, can he do that?"
PARAGRAPH = ("Here is the clause from my lease. The tenant shall return the premises in the condition in which "
             "they were received, fair wear and tear excepted, and the landlord may deduct from the deposit the "
             "reasonable cost of any repair beyond that. ")  # fmt: skip


def message(size: int) -> str:
    body = (PARAGRAPH * (size // len(PARAGRAPH) + 1))[: max(0, size - len(SMALL) - 1)]
    return body + "\n" + SMALL


def timed(policy: RoutingPolicy, text: str, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        policy.route_messages([{"role": "user", "content": text}])
        out.append((time.perf_counter() - start) * 1000)
    return out


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50_ms": round(statistics.median(values), 2), "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
            "n": len(values)}  # fmt: skip


async def small_beside_large(policy: RoutingPolicy, repeat: int, large: str | None) -> list[float]:
    """Small requests through the micro-batcher, one at a time, while (optionally) another task
    routes 1 MB messages back to back."""
    batcher = MicroBatcher(policy.classifier)
    stop = asyncio.Event()

    async def route(text: str) -> None:
        texts, contexts = policy.inputs_to_score([{"role": "user", "content": text}])
        await batcher.predict_proba(texts, contexts)

    async def flood() -> None:
        while not stop.is_set():
            await route(large)

    flooding = asyncio.create_task(flood()) if large else None
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        await route(SMALL)
        timings.append((time.perf_counter() - start) * 1000)
        await asyncio.sleep(0.005)
    stop.set()
    if flooding:
        await flooding
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--router", type=Path, default=None, help="artifact folder (default: the config's)")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    config = load_config()
    policy = RoutingPolicy(load_classifier(args.router or config.router.artifact), config)
    sizes = {"short (70 B)": SMALL, "2 kB": message(2_000), "1 MB": message(1_000_000)}
    timed(policy, SMALL, 10)  # warm-up
    result = {"router": policy.classifier.kind, "machine": f"{platform.platform()}, {os.cpu_count()} CPUs"}
    for name, text in sizes.items():
        result[name] = {**summary(timed(policy, text, args.repeat)), "domain": policy.route_messages(
            [{"role": "user", "content": text}]).domain}  # fmt: skip
    alone = asyncio.run(small_beside_large(policy, args.repeat * 2, None))
    beside = asyncio.run(small_beside_large(policy, args.repeat * 2, sizes["1 MB"]))
    result["small request alone (micro-batcher)"] = summary(alone)
    result["small request beside 1 MB messages (micro-batcher)"] = summary(beside)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
