"""The decision log: one record per request, kept in SQLite (embedded) or PostgreSQL.

What it is for: answering "what went to the legal expert yesterday, and how sure were we?", and
retraining the router on its own traffic (`expertmesh log export`: corrected and confident
decisions as training rows).

Requests never wait for the database: a record is appended to an in-memory queue, and a writer
thread writes the queue in one transaction every `log.flush_interval_s` (0.5 s by default). A
gateway killed outright (SIGKILL, a crash) loses what was queued: at most the last interval's
records. A stopping gateway writes everything first. If the database is down, records wait in
the queue (up to `log.max_pending`, then the oldest are dropped and counted) and are written
once it is back.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from expertmesh.config import LogConfig

log = logging.getLogger(__name__)

COLUMNS = ("request_id", "time", "endpoint", "key_name", "model", "expert", "answered_by", "domain", "confidence",
           "scores", "routed_by", "failovers", "latency_ms", "prompt_tokens", "completion_tokens", "status", "text")  # fmt: skip
FEEDBACK_COLUMNS = ("request_id", "time", "key_name", "rating", "domain", "comment")
_TYPES = {"time": "DOUBLE PRECISION NOT NULL", "confidence": "DOUBLE PRECISION", "latency_ms": "DOUBLE PRECISION",
          "prompt_tokens": "INTEGER", "completion_tokens": "INTEGER", "status": "INTEGER", "rating": "INTEGER",
          "request_id": "TEXT NOT NULL"}  # fmt: skip


def _columns(names: tuple[str, ...]) -> str:
    return ", ".join(f"{name} {_TYPES.get(name, 'TEXT')}" for name in names)


SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS decisions ({_columns(COLUMNS)})",
    "CREATE INDEX IF NOT EXISTS decisions_request_id ON decisions (request_id)",
    "CREATE INDEX IF NOT EXISTS decisions_time ON decisions (time)",
    f"CREATE TABLE IF NOT EXISTS feedback ({_columns(FEEDBACK_COLUMNS)})",
    "CREATE INDEX IF NOT EXISTS feedback_request_id ON feedback (request_id)",
]


@dataclass
class RequestRecord:
    """What the gateway learns about one request on its way through; filled in by the request
    middleware (id, time, status, latency), the key check, and the chat service (the decision,
    the expert that answered, the tokens)."""

    request_id: str
    endpoint: str
    time: float = field(default_factory=time.time)
    key_name: str | None = None
    model: str | None = None
    expert: str | None = None
    answered_by: str | None = None
    domain: str | None = None
    confidence: float | None = None
    scores: dict[str, float] | None = None
    routed_by: str | None = None
    failovers: list[dict] | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status: int | None = None
    text: str | None = None

    def routed(self, decision: Any, text: str | None) -> None:
        """The routing decision (router/decision.py); `text` is kept only if log.store_text is on."""
        self.expert, self.routed_by, self.domain = decision.expert, decision.routed_by, decision.domain
        self.confidence, self.scores = decision.confidence, decision.scores or None
        self.text = text

    def used(self, usage: Any) -> None:
        """Token counts from an OpenAI `usage` object (chat/completions or Responses names)."""
        if not isinstance(usage, dict):
            return
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        self.prompt_tokens = prompt if isinstance(prompt, int) else self.prompt_tokens
        self.completion_tokens = completion if isinstance(completion, int) else self.completion_tokens

    @property
    def total_tokens(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    def row(self) -> tuple:
        return (self.request_id, self.time, self.endpoint, self.key_name, self.model, self.expert, self.answered_by,
                self.domain, self.confidence, _json(self.scores), self.routed_by, _json(self.failovers),
                self.latency_ms, self.prompt_tokens, self.completion_tokens, self.status, self.text)  # fmt: skip


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


# --- the databases ----------------------------------------------------------------------------


class Store(Protocol):
    def write(self, rows: list[tuple]) -> None: ...

    def add_feedback(self, row: tuple) -> None: ...

    def has_request(self, request_id: str, key_name: str | None) -> bool: ...

    def query(self, sql: str, params: tuple) -> list[tuple]: ...

    def close(self) -> None: ...


class SQLiteStore:
    """One file, in WAL mode: readers never block the writer, several gateway processes on one
    machine can write to it (each write waits for the file lock, up to 10 s)."""

    placeholder = "?"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread off: the writer thread writes, feedback and lookups come from others; the lock orders them.
        self._db = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed transaction survives the process being killed (only
        # a power loss can take the last ones), at a fraction of FULL's fsyncs.
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            for statement in SCHEMA:
                self._db.execute(statement)

    def _many(self, sql: str, rows: list[tuple]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def write(self, rows: list[tuple]) -> None:
        self._many(f"INSERT INTO decisions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)

    def add_feedback(self, row: tuple) -> None:
        self._many(f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES ({', '.join('?' * len(row))})", [row])

    def has_request(self, request_id: str, key_name: str | None) -> bool:
        return bool(self.query("SELECT 1 FROM decisions WHERE request_id = ? AND key_name = ? LIMIT 1", (request_id, key_name)))

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresStore:
    """PostgreSQL, for several gateway replicas writing one log; batches go in by COPY."""

    placeholder = "%s"

    def __init__(self, url: str) -> None:
        import psycopg

        self._db = psycopg.connect(url, autocommit=True, connect_timeout=5)
        self._lock = threading.Lock()
        with self._lock, self._db.transaction():
            for statement in SCHEMA:
                self._db.execute(statement)

    def write(self, rows: list[tuple]) -> None:
        statement = f"COPY decisions ({', '.join(COLUMNS)}) FROM STDIN"
        with self._lock, self._db.transaction(), self._db.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def add_feedback(self, row: tuple) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES ({', '.join(['%s'] * len(row))})", row
            )

    def has_request(self, request_id: str, key_name: str | None) -> bool:
        return bool(self.query("SELECT 1 FROM decisions WHERE request_id = %s AND key_name = %s LIMIT 1", (request_id, key_name)))

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


# URL scheme -> how to open the store.
STORES: dict[str, Callable[[str], Store]] = {
    "sqlite": lambda url: SQLiteStore(Path(url.removeprefix("sqlite:///")).expanduser()),
    "postgresql": PostgresStore,
    "postgres": PostgresStore,
}


def open_store(url: str) -> Store:
    scheme = url.split(":", 1)[0]
    if scheme not in STORES:
        raise ValueError(f"log.url: unknown database '{scheme}'; expected one of {sorted(STORES)}")
    return STORES[scheme](url)


# --- the log ------------------------------------------------------------------------------------


class DecisionLog:
    """Queues records and writes them in batches from a thread of its own."""

    def __init__(self, config: LogConfig, on_dropped: Callable[[int], None] | None = None) -> None:
        self.config = config
        self.url = config.database_url()
        self.on_dropped = on_dropped
        self._queue: collections.deque[RequestRecord] = collections.deque()  # append/popleft: thread-safe
        self._store: Store | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._flush_lock = threading.Lock()
        self.written = 0
        self.dropped = 0

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the decision log is not started")
        return self._store

    def start(self) -> None:
        """Open the database (creating its tables) and start the writer; errors here stop start-up."""
        self._store = open_store(self.url)
        self._thread = threading.Thread(target=self._run, name="expertmesh-decision-log", daemon=True)
        self._thread.start()

    def add(self, record: RequestRecord) -> None:
        self._queue.append(record)
        excess = len(self._queue) - self.config.max_pending
        if excess > 0:  # the database has been away for long: keep the newest
            for _ in range(excess):
                self._queue.popleft()
            self.dropped += excess
            if self.on_dropped is not None:
                self.on_dropped(excess)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.config.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - the database is away: the records wait in the queue
                log.warning("decision log: cannot write to %s (%s: %s); %d records wait",
                            _redacted(self.url), type(exc).__name__, exc, len(self._queue))  # fmt: skip

    def flush(self) -> int:
        """Write every queued record now (in one transaction); returns how many."""
        with self._flush_lock:
            batch = [self._queue.popleft() for _ in range(len(self._queue))]
            if not batch:
                return 0
            try:
                self.store.write([record.row() for record in batch])
            except BaseException:
                self._queue.extendleft(reversed(batch))  # back at the front, in order
                raise
            self.written += len(batch)
            return len(batch)

    def add_feedback(self, request_id: str, key_name: str | None, rating: int | None, domain: str | None,
                     comment: str | None) -> bool:  # fmt: skip
        """Record feedback on a request that the same key made; False if it made none with that id
        (a key cannot rate, nor learn of, another key's requests)."""
        if not self.store.has_request(request_id, key_name):
            if not any(r.request_id == request_id and r.key_name == key_name for r in list(self._queue)):
                return False
            self.flush()  # the request is still queued: write it before its feedback
        self.store.add_feedback((request_id, time.time(), key_name, rating, domain, comment))
        return True

    def stop(self) -> None:
        """Write what is queued, then close the database."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._store is not None:
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001
                log.error("decision log: %d records could not be written at shutdown (%s)", len(self._queue), exc)
            self._store.close()


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


# --- reading it back ------------------------------------------------------------------------------


def training_rows(store: Store, since: float, until: float, min_confidence: float) -> Iterator[dict[str, Any]]:
    """Router-training rows from the log between `since` and `until` (unix seconds), newest
    label first: a request's latest corrected domain; otherwise its decision, if the router made
    it (not a fallback, a kept conversation or an explicit model) with at least `min_confidence`,
    the request succeeded, and nobody rated it down. Only requests logged with their text."""
    p = store.placeholder
    corrections = {request_id: domain for request_id, domain in store.query(
        f"SELECT request_id, domain FROM feedback WHERE domain IS NOT NULL AND time >= {p} ORDER BY time", (since,))}  # fmt: skip
    disliked = {
        row[0] for row in store.query(f"SELECT request_id FROM feedback WHERE rating < 0 AND time >= {p}", (since,))
    }
    rows = store.query(
        f"SELECT request_id, text, domain, confidence, routed_by, status FROM decisions "
        f"WHERE time >= {p} AND time < {p} AND text IS NOT NULL ORDER BY time",
        (since, until),
    )
    seen: set[str] = set()
    for request_id, text, domain, confidence, routed_by, status in rows:
        if request_id in corrections:
            label, origin = corrections[request_id], "correction"
        elif (routed_by == "router" and status == 200 and confidence is not None and confidence >= min_confidence
              and request_id not in disliked):  # fmt: skip
            label, origin = domain, "decision"
        else:
            continue
        if text.strip() and text not in seen:
            seen.add(text)
            yield {"text": text, "domain": label, "source": f"traffic_{origin}", "request_id": request_id}
