"""Faults with real processes: a replica or an expert's only server killed under a load of
routed requests, an expert killed mid-stream, and 500 concurrent streams. The gateway is
`expertmesh serve` (the shipped router decides every request); the experts are fake servers
in child processes, killed with SIGKILL."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from tests.fault_load import (
    QUESTIONS,
    experts_with_backends,
    fake_expert_process,
    gateway_config,
    gateway_process,
    run_load,
    when_sent,
)

pytestmark = pytest.mark.slow  # the shipped router, in a gateway process


def test_the_shipped_router_spreads_the_load_questions_over_every_expert(tmp_path):
    with fake_expert_process() as (upstream, _), gateway_process(gateway_config([upstream]), tmp_path) as url:
        experts = [httpx.post(f"{url}/v1/route", json={"text": q}).json()["expert"] for q in QUESTIONS]
    assert experts == ["medical", "legal", "finance", "code", "math", "general"]


@pytest.mark.parametrize("stream_every", [10**9, 4], ids=["json", "one-in-four-streaming"])
def test_killing_one_of_two_replicas_under_load_loses_no_request(tmp_path, stream_every):
    with (
        fake_expert_process(delay_s=0.02) as (first, _),
        fake_expert_process(delay_s=0.02) as (second, doomed),
        gateway_process(gateway_config([first, second]), tmp_path) as url,
    ):

        async def kill_second(result):
            await when_sent(result, 100)
            doomed.send_signal(signal.SIGKILL)

        result = asyncio.run(run_load(url, 400, concurrency=32, stream_every=stream_every, disrupt=kill_second))
    # Requests in flight on the killed replica are retried on the other, streams that had not
    # sent a chunk yet included. A stream already under way cannot be retried (the client has
    # part of it): it ends with an error event. Nothing else may be lost.
    assert result.sent == 400 and result.lost == result.cut, result.summary()
    assert result.cut <= 16 if stream_every == 4 else result.cut == 0, result.summary()


def test_an_experts_only_server_killed_under_load_fails_over_and_loses_nothing(tmp_path):
    with fake_expert_process() as (shared, _), fake_expert_process() as (medical_only, doomed):
        config = experts_with_backends(gateway_config([shared]), {"medical": [medical_only]})
        with gateway_process(config, tmp_path) as url:

            async def kill_medical(result):
                await when_sent(result, 60)
                doomed.send_signal(signal.SIGKILL)

            result = asyncio.run(run_load(url, requests=300, concurrency=16, stream_every=3, disrupt=kill_medical))
            ready = httpx.get(f"{url}/readyz")
    assert result.lost == 0, result.summary()
    assert result.failed_over > 0 and result.answered_by["general"] > result.answered_by.get("medical", 0)
    assert ready.status_code == 200 and not ready.json()["experts"]["medical"]["ok"]


def test_an_expert_killed_mid_stream_ends_the_stream_with_an_error_event(tmp_path):
    with (
        fake_expert_process(delay_s=0.2) as (upstream, doomed),
        gateway_process(gateway_config([upstream]), tmp_path) as url,
    ):
        body = {
            "model": "math",
            "stream": True,
            "messages": [{"role": "user", "content": "one two three four five six"}],
        }
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            doomed.send_signal(signal.SIGKILL)
            start = time.monotonic()
            rest = [line for line in lines if line.startswith("data: ")]
    assert "math-model" in first or '"role"' in first
    assert rest[-1] == "data: [DONE]" and '"expert_unavailable"' in rest[-2]
    assert time.monotonic() - start < 5  # ended at once, not at a timeout


def test_500_concurrent_streams_all_complete(tmp_path):
    with (
        fake_expert_process(delay_s=0.01) as (upstream, _),
        gateway_process(gateway_config([upstream]), tmp_path) as url,
    ):
        result = asyncio.run(run_load(url, requests=500, concurrency=500, stream_every=1))
    assert result.answered == 500 and result.lost == 0, result.summary()
