"""Failover under load: a routed load through `expertmesh serve` while an expert server dies.

Scenarios (each with fresh processes; fake experts answer after --delay seconds, streams
wait that long between chunks; the shipped router routes every request):
  baseline      two replicas of every expert, nothing killed
  replica       two replicas; one is killed (SIGKILL) once a quarter of the load is sent
  only-server   medical has a server of its own, killed the same way; general is its fallback
Each runs non-streaming, then with one request in four streaming. A stream that had begun
when its server died is counted as cut: by design it is not retried (the client already has
part of the answer), and it ends with an error event.

python benchmarks/bench_failover.py [--requests 2000] [--concurrency 32] [--delay 0.02] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fault_load import (
    LoadResult,
    experts_with_backends,
    fake_expert_process,
    gateway_config,
    gateway_process,
    run_load,
    when_sent,
)

MODES = {"json": 10**9, "1/4 streaming": 4}


def counter_total(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def scenario(kind: str, requests: int, concurrency: int, delay: float, stream_every: int) -> tuple[LoadResult, dict]:
    with ExitStack() as stack, tempfile.TemporaryDirectory() as folder:
        first, _ = stack.enter_context(fake_expert_process(delay))
        second, doomed = stack.enter_context(fake_expert_process(delay))
        config = gateway_config([first, second]) if kind != "only-server" else experts_with_backends(
            gateway_config([first]), {"medical": [second]})  # fmt: skip
        url = stack.enter_context(gateway_process(config, Path(folder)))

        async def kill(result: LoadResult) -> None:
            if kind == "baseline":
                return
            await when_sent(result, requests // 4)
            doomed.send_signal(signal.SIGKILL)

        result = asyncio.run(run_load(url, requests, concurrency, stream_every, kill))
        gateway = {
            name: counter_total(url, f"expertmesh_{name}_total") for name in ("retries", "failovers", "circuit_opened")
        }
    return result, gateway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [
        (
            "| scenario | load | sent | answered | failed over | retried | breakers opened | cut mid-stream | "
            "lost | req/s |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("baseline", "replica", "only-server"):
        for mode, every in MODES.items():
            result, gateway = scenario(kind, args.requests, args.concurrency, args.delay, every)
            print(kind, mode, result.summary(), gateway, flush=True)
            rows.append(f"| {kind} | {mode} | {result.sent} | {result.answered} | {result.failed_over} | "
                        f"{gateway['retries']:.0f} | {gateway['circuit_opened']:.0f} | {result.cut} | "
                        f"{result.lost} | {result.sent / result.seconds:.0f} |")  # fmt: skip
    header = (f"`python benchmarks/bench_failover.py --requests {args.requests} --concurrency {args.concurrency} "
              f"--delay {args.delay}` on {platform.node()} ({os.cpu_count()} cores, {platform.python_version()}), "
              f"{time.strftime('%Y-%m-%d %H:%M')}\n\n")  # fmt: skip
    report = header + "\n".join(rows) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
