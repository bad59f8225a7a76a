"""The durable record of an evaluation run: answers.jsonl in the run folder.

Each answer is one JSON line, appended, flushed and fsynced as soon as it arrives, so that a
run killed at any moment (kill -9 included) keeps every answer it received; the next run with
the same folder reads them back and asks only for the rest. A line cut short by the kill is
skipped (its request is simply asked again).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

ANSWERS_FILE = "answers.jsonl"


def answer_key(task: str, item_id: str, responder: str, mode: str) -> str:
    """responder: an expert's name, or "gateway" for answers through a running gateway."""
    return f"{task}|{item_id}|{responder}|{mode}"


class AnswerStore:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / ANSWERS_FILE
        self.records: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        if self.path.exists():
            self._read()
        self._lock = threading.Lock()

    def _read(self) -> None:
        data = self.path.read_bytes()
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                self.torn_lines += 1  # the write that a kill interrupted
                continue
            self.records[record["key"]] = record
        if data and not data.endswith(b"\n"):  # later appends must start on a line of their own
            with self.path.open("ab") as handle:
                handle.write(b"\n")

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def put(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock, self.path.open("ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
            self.records[record["key"]] = record
