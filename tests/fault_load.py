"""Real processes to break, and a load to send while breaking them: fake experts and the
gateway as child processes (so a test or benchmark can kill one with SIGKILL), and a
concurrent load of routed chat requests whose every outcome is counted.

Used by tests/test_faults.py and benchmarks/bench_failover.py.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import orjson
import yaml

from tests.conftest import free_port

FAKE = Path(__file__).resolve().parent / "fake_expert.py"
EXPERT_DOMAINS = {"medical": ["medical"], "legal": ["legal"], "finance": ["finance"], "code": ["code"],
                  "math": ["math"], "general": ["general", "science"]}  # fmt: skip
# Questions the shipped router sends to each expert (checked by the tests that use them).
QUESTIONS = [
    "What are the early symptoms of type 2 diabetes?",
    "Can my landlord legally evict me without a court order?",
    "How is capital gains tax calculated when I sell shares?",
    "Why does my Python list comprehension raise an IndexError?",
    "What is the integral of x squared times sin x?",
    "What is a good name for a golden retriever puppy?",
]


def _wait_for(url: str, process: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout_s} s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def fake_expert_process(delay_s: float = 0.0, port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """A fake expert (every test expert's model) in a child process: (base URL ending in /v1, process)."""
    port = port or free_port()
    models = [arg for name in EXPERT_DOMAINS for arg in ("--model", f"{name}-model")]
    process = subprocess.Popen([sys.executable, str(FAKE), "--port", str(port), "--delay", str(delay_s), *models])
    try:
        _wait_for(f"http://127.0.0.1:{port}/v1/models", process)
        yield f"http://127.0.0.1:{port}/v1", process
    finally:
        _stop(process)


def gateway_config(backends: list[str], fallbacks: bool = True, **resilience) -> dict:
    """Every expert on `backends` (replicas), each domain expert falling back to general."""
    experts = [{"name": name, "domains": domains, "backend": backends if len(backends) > 1 else backends[0],
                "model": f"{name}-model", "timeout_s": 10,
                **({"fallbacks": ["general"]} if fallbacks and name != "general" else {})}
               for name, domains in EXPERT_DOMAINS.items()]  # fmt: skip
    return {"experts": experts, "router": {"fallback_expert": "general"},
            "resilience": {"health_check": {"interval_s": 1.0, "timeout_s": 1.0}, **resilience}}  # fmt: skip


def experts_with_backends(config: dict, backends: dict[str, list[str]]) -> dict:
    """`config` with some experts' backends replaced."""
    experts = [
        {**e, "backend": backends[e["name"]] if e["name"] in backends else e["backend"]} for e in config["experts"]
    ]
    return {**config, "experts": experts}


@contextmanager
def gateway_process(config: dict, folder: Path) -> Iterator[str]:
    """`expertmesh serve` on `config` (the shipped router routes): yields its URL."""
    with gateway_and_process(config, folder) as (url, _):
        yield url


@contextmanager
def gateway_and_process(config: dict, folder: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`expertmesh serve` on `config` (its `gateway` section kept, on a free port of 127.0.0.1):
    yields its URL and its process."""
    port = free_port()
    path = folder / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump({**config, "gateway": {**config.get("gateway", {}), "host": "127.0.0.1", "port": port}}))
    process = subprocess.Popen([sys.executable, "-m", "expertmesh.cli", "serve", "--config", str(path)])
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/healthz", process)
        yield url, process
    finally:
        _stop(process)


@dataclass
class LoadResult:
    sent: int = 0
    answered: int = 0  # a complete answer: JSON with a message, or a stream that ended with [DONE] and no error
    failed_over: int = 0  # of those, answered by a fallback expert
    errors: Counter = field(default_factory=Counter)  # HTTP status, or "cut" for a stream ended by an error event
    answered_by: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        """Requests without a complete answer (a stream cut mid-way included)."""
        return self.sent - self.answered

    @property
    def cut(self) -> int:
        """Streams that had begun when their expert died: partial, ended by an error event. By
        design they are not retried (the client already has part of the answer)."""
        return self.errors.get("cut", 0)

    def summary(self) -> dict:
        return {"sent": self.sent, "answered": self.answered, "failed_over": self.failed_over, "lost": self.lost,
                "errors": dict(self.errors), "answered_by": dict(self.answered_by), "seconds": round(self.seconds, 2)}  # fmt: skip


async def _one(session: aiohttp.ClientSession, url: str, body: dict, result: LoadResult) -> None:
    result.sent += 1
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body) as response:
            raw = await response.read()
            status, headers = response.status, response.headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.errors[type(exc).__name__] += 1
        return
    if status != 200:
        result.errors[str(status)] += 1
        return
    if body.get("stream"):
        events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]" or any("error" in orjson.loads(e) for e in events[:-1]):
            result.errors["cut"] += 1
            return
    elif not orjson.loads(raw).get("choices"):
        result.errors["empty"] += 1
        return
    result.answered += 1
    result.answered_by[headers.get("x-expertmesh-answered-by") or headers.get("x-expertmesh-expert", "?")] += 1
    if "x-expertmesh-failover" in headers:
        result.failed_over += 1


async def run_load(url: str, requests: int, concurrency: int, stream_every: int = 2,
                   disrupt: Callable[[LoadResult], Awaitable[None]] | None = None) -> LoadResult:  # fmt: skip
    """`requests` routed chat requests, `concurrency` in flight at a time, every
    `stream_every`-th one streaming; `disrupt(result)` runs alongside (to break something
    once enough requests are under way: it can watch `result.sent`)."""
    result = LoadResult()
    limit = asyncio.Semaphore(concurrency)
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:  # fmt: skip

        async def guarded(body: dict) -> None:
            async with limit:
                await _one(session, url, body, result)

        bodies = [{"model": "auto", "messages": [{"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]}],
                   "stream": n % stream_every == 0} for n in range(requests)]  # fmt: skip
        disruption = asyncio.ensure_future(disrupt(result)) if disrupt is not None else None
        await asyncio.gather(*(guarded(body) for body in bodies))
        if disruption is not None:
            await disruption
    result.seconds = time.perf_counter() - start
    return result


async def when_sent(result: LoadResult, count: int) -> None:
    """Wait until `count` requests of a load have been sent."""
    while result.sent < count:
        await asyncio.sleep(0.005)
