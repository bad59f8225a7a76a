"""The router's MiniLM encoder under its three runtimes, side by side in one run: torch
(sentence-transformers), ONNX Runtime (fp32, the default) and ONNX Runtime with int8 weights.

Single-text latency (p50, p95 over --single texts) and batched throughput over --batched texts,
rounds interleaved; texts are a seeded sample of the vendored routing data. Also the smallest
cosine similarity of each runtime's embeddings to torch's (1.0 = the same function).

python benchmarks/bench_encoder_runtimes.py [--single 200] [--batched 512] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import statistics
import time

from expertmesh.router.data import vendored_data_dir
from expertmesh.router.encoder import TextEncoder


def sample_texts(count: int, seed: int = 0) -> list[str]:
    texts = []
    for path in sorted(vendored_data_dir().glob("*/*.jsonl.gz")):
        with gzip.open(path, "rt") as handle:
            texts += [json.loads(line)["text"] for _, line in zip(range(200), handle)]
    return random.Random(seed).sample(texts, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=200)
    parser.add_argument("--batched", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    texts = sample_texts(max(args.single, args.batched))
    encoders = {runtime: TextEncoder(runtime=runtime) for runtime in ("torch", "onnx", "onnx-int8")}
    reference = encoders["torch"].encode(texts[:200])
    latencies: dict[str, list[float]] = {name: [] for name in encoders}
    rates: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(args.rounds):
        for name, encoder in encoders.items():
            for text in texts[: args.single]:
                start = time.perf_counter()
                encoder.encode([text])
                latencies[name].append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            encoder.encode(texts[: args.batched])
            rates[name].append(args.batched / (time.perf_counter() - start))
    print(f"{platform.machine()}, {os.cpu_count()} cores; {args.single} single texts x {args.rounds} rounds, "
          f"{args.batched} batched x {args.rounds}")  # fmt: skip
    print("| runtime | single p50 | single p95 | batched texts/s (median) | min cosine to torch |")
    print("|---|---|---|---|---|")
    for name, encoder in encoders.items():
        ordered = sorted(latencies[name])
        cosine = float((encoder.encode(texts[:200]) * reference).sum(axis=1).min())
        print(f"| {name} | {statistics.median(ordered):.2f} ms | {ordered[int(0.95 * len(ordered))]:.2f} ms | "
              f"{statistics.median(rates[name]):.0f} | {cosine:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
