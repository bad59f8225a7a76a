"""What the gateway adds over its upstream: latency (p50, p99) and requests/s, side by side.

Starts an instant fake upstream and `expertmesh serve` (both pinned to CPU 1), then runs
closed-loop clients (pinned to CPU 0) against: the upstream directly, the gateway with
routing bypassed (model = the expert), and the gateway on the routed path (model = auto).
Cells are interleaved so that machine noise hits all targets alike.

python benchmarks/bench_gateway.py [--duration 8] [--concurrency 1,8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
KEY = "sk-bench-1234"
BODY = {"messages": [{"role": "user", "content": "What is the dose of amoxicillin for an adult with strep throat?"}],
        "max_tokens": 16}  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], cpu: int, env: dict | None = None) -> subprocess.Popen:
    pin = ["taskset", "-c", str(cpu)] if os.cpu_count() and os.cpu_count() > 1 else []
    return subprocess.Popen(pin + command, env={**os.environ, **(env or {})}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def wait_for(url: str, payload: dict, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.post(url, json=payload, headers={"authorization": f"Bearer {KEY}"}, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


async def closed_loop(url: str, model: str, stream: bool, concurrency: int, duration: float, warmup: float) -> dict:
    payload = {**BODY, "model": model, "stream": stream}
    latencies: list[float] = []
    ttfbs: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, headers={"authorization": f"Bearer {KEY}"}, timeout=30) as client:
        start = time.perf_counter()
        record_from, stop_at = start + warmup, start + warmup + duration

        async def worker() -> None:
            nonlocal errors
            while (t0 := time.perf_counter()) < stop_at:
                first = None
                async with client.stream("POST", url, json=payload) as response:
                    async for chunk in response.aiter_bytes():
                        first = first or time.perf_counter()
                    ok = response.status_code == 200
                t1 = time.perf_counter()
                if t0 >= record_from and t1 <= stop_at:
                    if not ok:
                        errors += 1
                    latencies.append((t1 - t0) * 1000)
                    ttfbs.append(((first or t1) - t0) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"n": len(latencies), "errors": errors, "rps": len(latencies) / duration,
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "ttfb_p50": percentile(ttfbs, 50), "ttfb_p99": percentile(ttfbs, 99)}  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]  # nearest rank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()

    upstream_port, gateway_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    env = {"UPSTREAM_BASE_URL": upstream_url, "BENCH_API_KEY": KEY, "EXPERTMESH_PORT": str(gateway_port)}
    processes = [
        start([sys.executable, str(HERE / "instant_upstream.py"), "--port", str(upstream_port)], cpu=1),
        start([sys.executable, "-m", "expertmesh.cli", "serve", "--config", str(HERE / "gateway.yaml")], cpu=1, env=env),
    ]
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    targets = {
        "direct": (f"{upstream_url}/chat/completions", "fake-model"),
        "gateway (model=fake-model)": (f"http://127.0.0.1:{gateway_port}/v1/chat/completions", "fake-model"),
        "gateway (model=auto)": (f"http://127.0.0.1:{gateway_port}/v1/chat/completions", "auto"),
    }
    try:
        wait_for(targets["direct"][0], {**BODY, "model": "fake-model"})
        wait_for(targets["gateway (model=auto)"][0], {**BODY, "model": "auto"})
        rows = []
        for repeat in range(1, args.repeats + 1):
            for stream in (False, True):
                for concurrency in [int(c) for c in args.concurrency.split(",")]:
                    for name, (url, model) in targets.items():
                        result = asyncio.run(closed_loop(url, model, stream, concurrency, args.duration, args.warmup))
                        rows.append({"repeat": repeat, "mode": "stream" if stream else "nonstream",
                                     "concurrency": concurrency, "target": name, **result})  # fmt: skip
                        print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        for process in processes:
            os.killpg(process.pid, 15)
            process.wait(20)
    report(rows, args)


def report(rows: list[dict], args) -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"client on CPU 0, upstream + gateway on CPU 1; {args.duration:g} s per cell after {args.warmup:g} s warm-up\n")  # fmt: skip
    print("| mode | c | target | req/s | p50 ms | p99 ms | TTFB p50 ms | added p50 ms | added p99 ms | added TTFB p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted({(r["mode"], r["concurrency"]) for r in rows}, key=lambda k: (k[0] != "nonstream", k[1])):
        cell = [r for r in rows if (r["mode"], r["concurrency"]) == key]
        for target in dict.fromkeys(r["target"] for r in cell):
            mine = [r for r in cell if r["target"] == target]
            direct = {r["repeat"]: r for r in cell if r["target"] == "direct"}

            def joined(field: str, added: bool = False) -> str:
                values = [r[field] - direct[r["repeat"]][field] if added else r[field] for r in mine]
                return " / ".join(f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}" for v in values)

            is_direct = target == "direct"
            print(f"| {key[0]} | {key[1]} | {target} | {joined('rps')} | {joined('p50')} | {joined('p99')} | "
                  f"{joined('ttfb_p50')} | {'' if is_direct else joined('p50', True)} | "
                  f"{'' if is_direct else joined('p99', True)} | {'' if is_direct else joined('ttfb_p50', True)} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gateway-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(rows, indent=1))
    print(f"\nraw results: {path}; a / b = repeat 1 / repeat 2")


if __name__ == "__main__":
    main()
