"""Keys, limits and the decision log against real servers: redis-server and PostgreSQL started
on 127.0.0.1 by the tests (tests/services.py), the gateway as `expertmesh serve` in a child
process, in front of a fake expert in another. Slow: a gateway process per test, 10,000-request runs."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from contextlib import ExitStack

import aiohttp
import psycopg
import pytest
from typer.testing import CliRunner

from expertmesh.cli import app as cli
from expertmesh.router.classifier import load_classifier
from tests.fault_load import fake_expert_process, gateway_and_process, gateway_config
from tests.services import postgres_server, redis_server
from tests.test_keys_and_log import ask, configured, gateway

pytestmark = pytest.mark.slow


async def _send(url: str, count: int | None, concurrency: int, seconds: float | None = None,
                key: str | None = None, prefix: str = "r") -> list[tuple[str, int, float, float]]:  # fmt: skip
    """`count` requests (or as many as fit in `seconds`) from `concurrency` clients, each with its
    own x-request-id: (id, status, sent at, answered at) per request, in time.time()."""
    results: list[tuple[str, int, float, float]] = []
    numbers = iter(range(count if count is not None else 10**9))
    stop = time.monotonic() + seconds if seconds is not None else float("inf")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"model": "general", "messages": [{"role": "user", "content": "How do I make a sourdough starter?"}]}

    async def client(session: aiohttp.ClientSession) -> None:
        for number in numbers:
            if time.monotonic() >= stop:
                return
            request_id, sent = f"{prefix}-{number}", time.time()
            async with session.post(f"{url}/v1/chat/completions", json=body,
                                    headers={**headers, "x-request-id": request_id}) as response:  # fmt: skip
                await response.read()
                results.append((request_id, response.status, sent, time.time()))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return results


def test_redis_limits_hold_across_two_worker_processes(tmp_path):
    """1,200 requests a minute with a 5 s burst: 100 at once, then 20 a second, whichever of the
    two workers a request reaches (16 connections spread over both)."""
    with redis_server() as redis_url, fake_expert_process() as (upstream, _):
        config = {**gateway_config([upstream]), "log": {"enabled": False}, "gateway": {
            "workers": 2, "redis_url": redis_url, "rate_limit_burst_s": 5,
            "keys": [{"name": "team", "key": "sk-team", "requests_per_minute": 1200}]}}  # fmt: skip
        with gateway_and_process(config, tmp_path) as (url, _):
            results = asyncio.run(_send(url, None, concurrency=16, seconds=8, key="sk-team"))
    statuses = [status for _, status, _, _ in results]
    window = max(sent for *_, sent, _ in results) - min(sent for *_, sent, _ in results)
    expected = 100 + 20 * window
    admitted = statuses.count(200)
    assert set(statuses) == {200, 429} and statuses.count(429) > admitted, (admitted, len(statuses))
    assert abs(admitted - expected) <= 0.05 * expected, (admitted, expected, window)


def test_redis_limits_refuse_past_the_requests_and_the_tokens_of_a_key(fake_expert, tmp_path):
    with redis_server() as redis_url:
        config = configured(fake_expert[0], tmp_path, gateway={"redis_url": redis_url})
        with gateway(config) as (client, _):
            requests = [ask(client, "sk-slow", "hi").status_code for _ in range(3)]  # a burst of 2
            first = ask(client, "sk-thrifty", "one two three")  # 7 + 4 tokens: the 10 a minute are spent
            time.sleep(0.5)  # the debit goes to Redis with the next admission, or within 0.25 s
            second = ask(client, "sk-thrifty", "again")
    assert requests == [200, 200, 429]
    assert first.status_code == 200 and second.status_code == 429 and second.json()["error"]["type"] == "tokens"


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_log_holds_every_record_of_a_10000_request_run(tmp_path, database):
    with ExitStack() as stack:
        if database == "postgresql":
            log_url = stack.enter_context(postgres_server())
        else:
            log_url = f"sqlite:///{tmp_path / 'decisions.db'}"
        upstream, _ = stack.enter_context(fake_expert_process())
        config = {**gateway_config([upstream]), "log": {"url": log_url}}
        with gateway_and_process(config, tmp_path) as (url, _):
            results = asyncio.run(_send(url, 10_000, concurrency=32))
        # the gateway has stopped (SIGTERM): it wrote what was queued before it exited
        sent = {request_id for request_id, status, _, _ in results if status == 200}
        logged = _logged_ids(log_url)
    assert len(sent) == 10_000
    assert len(logged) == 10_000 and set(logged) == sent


def _logged_ids(log_url: str) -> list[str]:
    if log_url.startswith("sqlite"):
        with sqlite3.connect(log_url.removeprefix("sqlite:///")) as db:
            return [
                row[0] for row in db.execute("SELECT request_id FROM decisions WHERE endpoint = '/v1/chat/completions'")
            ]
    with psycopg.connect(log_url) as db:
        return [
            row[0] for row in db.execute("SELECT request_id FROM decisions WHERE endpoint = '/v1/chat/completions'")
        ]


def test_a_gateway_killed_with_sigkill_loses_at_most_the_last_second_of_records(tmp_path):
    log_url = f"sqlite:///{tmp_path / 'decisions.db'}"
    with fake_expert_process() as (upstream, _):
        config = {**gateway_config([upstream]), "log": {"url": log_url}}
        with gateway_and_process(config, tmp_path) as (url, process):
            results = asyncio.run(_send(url, None, concurrency=4, seconds=4))
            killed_at = time.time()
            process.kill()
            process.wait()
    logged = set(_logged_ids(log_url))
    answered = [(request_id, done) for request_id, status, _, done in results if status == 200]
    missing = [done for request_id, done in answered if request_id not in logged]
    assert len(answered) > 200 and logged
    # everything answered more than a second before the kill is in the log
    assert all(done > killed_at - 1.0 for done in missing), (len(missing), killed_at - min(missing))


def test_log_export_output_trains_a_router(fake_expert, tmp_path):
    texts = {
        "medical": ["Is this rash a symptom of measles?", "Which symptom means I should see a doctor?",
                    "My child has a fever as her only symptom"],
        "legal": ["Can I break my contract early?", "Is a verbal contract binding?", "Who keeps the deposit when a contract ends?"],
        "finance": ["Do I owe tax on my savings interest?", "How is tax on a bonus worked out?", "Can I deduct tax on home office costs?"],
        "code": ["Why is my python loop so slow?", "How do I read a CSV in python?", "What does python's yield do?"],
        "math": ["What is the integral of 1/x?", "How do I solve this integral by parts?", "Is an integral the area under a curve?"],
    }  # fmt: skip
    config = configured(fake_expert[0], tmp_path, log={"store_text": True})
    with gateway(config) as (client, app):
        for questions in texts.values():
            for question in questions:
                assert ask(client, "sk-alice", question).status_code == 200
        # the keyword router calls this finance ("tax"); the user says it is a legal question
        corrected = ask(client, "sk-alice", "Is a tax on my lease contract legal?").headers["x-request-id"]
        feedback = client.post("/v1/feedback", headers={"authorization": "Bearer sk-alice"},
                               json={"request_id": corrected, "domain": "legal"})  # fmt: skip
        assert feedback.status_code == 200
        app.state.decisions.flush()
    rows_file = tmp_path / "traffic.jsonl"
    exported = CliRunner().invoke(cli, ["log", "export", "--since", "1d", "--out", str(rows_file), "--min-confidence", "0.8",
                                        "--url", config.log.database_url()])  # fmt: skip
    assert exported.exit_code == 0, exported.output
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert (
        len(rows) == 16
        and {"text": "Is a tax on my lease contract legal?", "domain": "legal"}.items()
        <= next(r for r in rows if r["source"] == "traffic_correction").items()
    )

    folder = tmp_path / "router"
    trained = CliRunner().invoke(cli, ["router", "train", "--kind", "embed-linear", "--per-domain", "20", "--variants", "0",
                                       "--extra-data", str(rows_file), "--out", str(folder)])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "Training on 16 more rows" in trained.output
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["extra_examples"] == 16 and manifest["train_examples"] >= 7 * 20 + 16
    router = load_classifier(folder)
    assert router.predict_proba(["Which symptom means I should see a doctor?"]).shape == (1, len(router.labels))
