"""End to end on 127.0.0.1: `expertmesh serve` with the real router and the real embedded model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from expertmesh.config import default_config_path, load_config
from expertmesh.experts.pool import ExpertPool
from expertmesh.gateway.app import build_app
from expertmesh.router.classifier import load_classifier
from expertmesh.router.policy import RoutingPolicy
from tests.conftest import free_port, serve_in_thread

pytestmark = pytest.mark.slow
MEDICAL_QUESTION = "What are the common symptoms of type 2 diabetes?"


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited with {process.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture(scope="module")
def served_gateway(tmp_path_factory):
    """`expertmesh serve` on the default config: the shipped router and the embedded model."""
    config = yaml.safe_load(default_config_path().read_text())
    port = free_port()
    config["gateway"]["port"] = port
    path = tmp_path_factory.mktemp("serve") / "expertmesh.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "expertmesh.cli", "serve", "--config", str(path)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/readyz", process)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def test_medical_question_is_answered_by_the_medical_expert(served_gateway):
    url, _ = served_gateway
    response = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": "auto", "messages": [{"role": "user", "content": MEDICAL_QUESTION}],
        "temperature": 0, "max_tokens": 48})  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expertmesh"]["expert"] == "medical" and response.headers["x-expertmesh-expert"] == "medical"
    answer = body["choices"][0]["message"]["content"].lower()
    assert any(word in answer for word in ("thirst", "urination", "blood sugar", "glucose", "fatigue")), answer
    assert body["usage"]["completion_tokens"] > 0 and body["model"] == "smollm2-135m-instruct"


def test_streaming_through_the_real_model(served_gateway):
    url, _ = served_gateway
    payload = {"model": "auto", "stream": True, "max_tokens": 16, "temperature": 0,
               "messages": [{"role": "user", "content": "Write a Python function that adds two numbers."}]}  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=120) as response:
        assert response.status_code == 200 and response.headers["x-expertmesh-expert"] == "code"
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    text = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert len(text) > 10


def test_the_responses_api_through_the_real_model(served_gateway):
    """The embedded server speaks chat only: the gateway translates, and the SDK reads the result."""
    url, _ = served_gateway
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    response = client.responses.create(model="auto", input=MEDICAL_QUESTION, max_output_tokens=48, temperature=0)
    assert response.model_extra["expertmesh"]["expert"] == "medical" and response.status in ("completed", "incomplete")
    assert any(word in response.output_text.lower() for word in ("thirst", "urination", "blood sugar", "glucose", "fatigue"))
    assert response.usage.output_tokens > 0 and response.usage.input_tokens > 10
    with client.responses.stream(model="general", input="What is the capital of France?", temperature=0,
                                 max_output_tokens=20) as stream:  # fmt: skip
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "Paris" in final.output_text and "".join(deltas) == final.output_text and len(deltas) > 1


def test_legacy_completions_continue_the_raw_prompt(served_gateway):
    url, _ = served_gateway
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    completion = client.completions.create(model="general", prompt="The capital of France is", max_tokens=6,
                                           temperature=0)  # fmt: skip
    assert "Paris" in completion.choices[0].text and completion.usage.completion_tokens <= 6
    streamed = client.completions.create(model="general", prompt="The capital of France is", max_tokens=6,
                                         temperature=0, stream=True)  # fmt: skip
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == completion.choices[0].text
    assert client.models.retrieve("auto").id == "auto" and httpx.get(f"{url}/health").status_code == 200


def test_sigterm_stops_the_gateway_and_its_embedded_server(served_gateway):
    url, process = served_gateway
    embedded = children(process.pid)
    assert embedded, "the embedded expert server should be a child of `expertmesh serve`"
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    time.sleep(0.5)
    assert not any(alive(pid) for pid in embedded), "orphaned embedded server"


@pytest.fixture()
def killable_expert(tmp_path):
    """A real embedded server in its own process, and a gateway in front of it."""
    port = free_port()
    cache_dir = str(load_config().embedded.cache_dir)
    process = subprocess.Popen([sys.executable, "-m", "expertmesh.experts.embedded", "--port", str(port), "--cache-dir", cache_dir])
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", process)
        base = yaml.safe_load(default_config_path().read_text())
        for expert in base["experts"]:
            expert["backend"] = f"http://127.0.0.1:{port}/v1"
        path = tmp_path / "expertmesh.yaml"
        path.write_text(yaml.safe_dump(base))
        yield process, load_config(path)
    finally:
        process.kill()
        process.wait()


def test_an_expert_that_dies_mid_request_gives_502_and_the_gateway_keeps_serving(killable_expert, trained_router):
    process, config = killable_expert
    policy = RoutingPolicy(load_classifier(trained_router), config)
    with serve_in_thread(build_app(config, policy, ExpertPool(config))) as url:
        question = {"role": "user", "content": "Write a long essay about the history of medicine."}
        threading.Timer(2.0, process.kill).start()  # dies while it generates
        started = time.monotonic()
        response = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                              json={"model": "general", "messages": [question], "max_tokens": 400})  # fmt: skip
        assert response.status_code == 502, response.text
        assert "expert 'general'" in response.json()["error"]["message"]
        assert time.monotonic() - started < 30
        # Still serving: routing works, other calls answer with clear errors, not hangs.
        assert httpx.post(f"{url}/v1/route", json={"text": MEDICAL_QUESTION}).json()["expert"] == "medical"
        again = httpx.post(f"{url}/v1/chat/completions", json={"model": "auto", "messages": [question]}, timeout=30)
        assert again.status_code == 502
        assert httpx.get(f"{url}/readyz").status_code == 503


def test_an_expert_that_dies_mid_stream_ends_the_stream_with_an_error(killable_expert):
    process, config = killable_expert
    with serve_in_thread(build_app(config, None, ExpertPool(config))) as url:
        payload = {"model": "legal", "stream": True, "max_tokens": 400,
                   "messages": [{"role": "user", "content": "Explain contract law in detail."}]}  # fmt: skip
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=60) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = next(line for line in lines if line)
            assert json.loads(first[6:])["expertmesh"]["expert"] == "legal"
            process.kill()
            rest = [line for line in lines if line]
    error = json.loads(rest[-2][6:])["error"]
    assert "expert 'legal'" in error["message"] and rest[-1] == "data: [DONE]"


def _spawned_workers(pid: int) -> list[int]:
    """uvicorn's worker processes under a `serve --workers N` supervisor."""
    workers = []
    for child in children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
        except FileNotFoundError:
            pass  # it exited meanwhile
    return workers


@contextmanager
def _serve_with_workers(trained_router, fake_expert, tmp_path, workers: int):
    from tests.conftest import fake_config

    port = free_port()
    config = fake_config(fake_expert[0]).model_dump(mode="json")
    config["router"]["artifact"] = str(trained_router)
    config["gateway"].update(port=port, workers=workers)
    path = tmp_path / "expertmesh.yaml"
    path.write_text(yaml.safe_dump(config))
    # The metrics folder under tmp_path: a supervisor killed outright cannot remove its own.
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    process = subprocess.Popen([sys.executable, "-m", "expertmesh.cli", "serve", "--config", str(path)], env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", process, timeout_s=120)
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _ask_many(url: str, n: int) -> list[httpx.Response]:
    body = {"model": "auto", "messages": [{"role": "user", "content": "Which python library parses JSON fastest?"}]}
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30), range(n)))


def _requests_counted(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text)
    return sum(s.value for f in families for s in f.samples if s.name == "expertmesh_requests_total")


def _wait_for(condition, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_worker_processes_serve_are_replaced_when_killed_and_stop_on_sigterm(trained_router, fake_expert, tmp_path):
    with _serve_with_workers(trained_router, fake_expert, tmp_path, workers=2) as (url, process):
        workers = _spawned_workers(process.pid)
        assert len(workers) == 2
        answers = _ask_many(url, 24)
        assert [r.status_code for r in answers] == [200] * 24
        assert {r.json()["expertmesh"]["routed_by"] for r in answers} <= {"router", "fallback"}
        for _ in range(4):  # whichever worker answers the scrape, it counts every worker's requests
            assert _requests_counted(url) == 24

        os.kill(workers[0], signal.SIGKILL)  # uvicorn's supervisor starts a replacement
        _wait_for(lambda: len(_spawned_workers(process.pid)) == 2 and workers[0] not in _spawned_workers(process.pid))
        _wait_for(lambda: all(r.status_code == 200 for r in _ask_many(url, 8)))

        everyone = _spawned_workers(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        _wait_for(lambda: not any(alive(pid) for pid in everyone), timeout_s=10)


def test_workers_do_not_outlive_a_killed_supervisor(trained_router, fake_expert, tmp_path):
    with _serve_with_workers(trained_router, fake_expert, tmp_path, workers=2) as (_, process):
        workers = _spawned_workers(process.pid)
        assert len(workers) == 2
        process.kill()  # no chance to clean up: PR_SET_PDEATHSIG must stop the workers
        process.wait()
        _wait_for(lambda: not any(alive(pid) for pid in workers), timeout_s=15)
