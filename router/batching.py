"""Micro-batching concurrent routing requests into shared classifier calls.

One worker runs the classifier; requests that arrive while it is busy wait and then go
together in its next call. Nothing waits on purpose: a request that finds the worker idle
is scored at once, alone. A request's probabilities depend only on its own texts (each text
is encoded independently; tests/test_router_model.py checks it against batch mates), so other
users' requests cannot change its decision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from expertmesh.router.classifier import DomainClassifier


class MicroBatcher:
    def __init__(self, classifier: DomainClassifier, max_batch: int = 64) -> None:
        self.classifier = classifier
        self.max_batch = max_batch
        self._queue: list[tuple[list[str], list[str], asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.batches = 0  # classifier calls made, for tests and metrics

    async def predict_proba(self, texts: Sequence[str], contexts: Sequence[str] | None = None) -> np.ndarray:
        """This request's probability rows, scored in the next classifier call."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((list(texts), list(contexts) if contexts is not None else [""] * len(texts), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._queue:
            taken, size = 0, 0
            while taken < len(self._queue) and (taken == 0 or size + len(self._queue[taken][0]) <= self.max_batch):
                size += len(self._queue[taken][0])
                taken += 1
            batch, self._queue = self._queue[:taken], self._queue[taken:]
            texts = [text for request_texts, _, _ in batch for text in request_texts]
            contexts = [context for _, request_contexts, _ in batch for context in request_contexts]
            try:
                rows = await asyncio.to_thread(self.classifier.predict_proba, texts, contexts)
            except Exception as exc:  # every waiting request learns of it
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            start = 0
            for request_texts, _, future in batch:
                if not future.done():  # its caller may have gone away
                    future.set_result(rows[start : start + len(request_texts)])
                start += len(request_texts)
