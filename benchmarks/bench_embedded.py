"""How fast the default CPU experts answer: the embedded SmolLM2-135M-Instruct server, streamed,
one request at a time (it generates one answer at a time; more requests only queue).

Per request: time to the first token, and decode speed (completion tokens after the first, over
the time after it); medians over the rounds. Prompts ask for long answers; greedy decoding.

python benchmarks/bench_embedded.py [--rounds 8] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import httpx

from expertmesh.config import load_config
from expertmesh.experts.embedded.model import SERVED_MODEL_NAME
from expertmesh.experts.embedded.process import EmbeddedServerProcess

PROMPTS = [
    "Explain in detail how vaccines train the immune system.",
    "Describe the history of the Roman Empire from its founding to its fall.",
    "Write a detailed guide to budgeting for a family of four.",
    "Explain how a hash table works and when to use one.",
]


def one(client: httpx.Client, url: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, decode tokens/s after it, completion tokens)."""
    body = {
        "model": SERVED_MODEL_NAME,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    tokens = 0
    with client.stream("POST", f"{url}/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None and tokens > 1, "no tokens streamed"
    return first - start, (tokens - 1) / (end - first), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    config = load_config()
    with EmbeddedServerProcess(config.embedded) as url, httpx.Client(timeout=600) as client:
        one(client, url, "Hello!", 8)  # warm-up
        results = [one(client, url, PROMPTS[i % len(PROMPTS)], args.max_tokens) for i in range(args.rounds)]
    ttft, speed, tokens = zip(*results)
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs; embedded {SERVED_MODEL_NAME} (float32, transformers), "
        f"{args.rounds} streamed requests one at a time, max_tokens {args.max_tokens}, greedy"
    )
    print(
        f"time to first token p50 {statistics.median(ttft) * 1000:.0f} ms; decode p50 {statistics.median(speed):.1f} "
        f"tokens/s (min {min(speed):.1f}, max {max(speed):.1f}); completion tokens p50 {statistics.median(tokens):.0f}"
    )


if __name__ == "__main__":
    main()
