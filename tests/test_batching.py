"""Micro-batching: concurrent requests share classifier calls and each gets its own rows."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from expertmesh.router.batching import MicroBatcher


class SlowEcho:
    """Row i is [hash-like value of text i]; each call takes 20 ms and is recorded."""

    kind, labels, threshold, max_length = "echo", ["a", "b"], None, 128

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def predict_proba(self, texts, contexts=None):
        self.calls.append(list(texts))
        time.sleep(0.02)
        if self.fail_on in texts:
            raise RuntimeError("classifier broke")
        return np.array([[len(t) / 100, 1 - len(t) / 100] for t in texts])


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    classifier = SlowEcho()
    batcher = MicroBatcher(classifier, max_batch=64)

    async def main():
        texts = [["x" * i] if i % 2 else ["x" * i, "y" * (i + 1)] for i in range(1, 21)]
        return texts, await asyncio.gather(*(batcher.predict_proba(t) for t in texts))

    texts, results = asyncio.run(main())
    for request_texts, rows in zip(texts, results):
        assert rows.shape == (len(request_texts), 2)
        assert list(rows[:, 0]) == pytest.approx([len(t) / 100 for t in request_texts])
    assert len(classifier.calls) < 20  # shared calls: requests arriving together go together
    assert sum(len(call) for call in classifier.calls) == sum(len(t) for t in texts)


def test_a_lone_request_is_scored_at_once():
    classifier = SlowEcho()
    batcher = MicroBatcher(classifier)

    async def main():
        first = await batcher.predict_proba(["alone"])
        second = await batcher.predict_proba(["later"])
        return first, second

    asyncio.run(main())
    assert classifier.calls == [["alone"], ["later"]]


def test_batches_respect_max_batch_and_a_failure_reaches_only_its_batch():
    classifier = SlowEcho(fail_on="boom")
    batcher = MicroBatcher(classifier, max_batch=4)

    async def main():
        first = asyncio.create_task(batcher.predict_proba(["boom"]))
        await asyncio.sleep(0)  # "boom" goes alone into the first call
        rest = [asyncio.create_task(batcher.predict_proba([f"t{i}"])) for i in range(6)]
        return await asyncio.gather(first, *rest, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[0], RuntimeError)
    assert all(isinstance(r, np.ndarray) for r in results[1:])
    assert max(len(call) for call in classifier.calls) <= 4
