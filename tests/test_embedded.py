"""The embedded SmolLM2 backend and its OpenAI-compatible server."""

from __future__ import annotations

import json

import httpx
import pytest

from expertmesh.experts.embedded.model import SERVED_MODEL_NAME, StopBuffer
from expertmesh.experts.embedded.server import EmbeddedServer, build_embedded_app
from tests.conftest import serve_in_thread


def test_stop_buffer_finds_stops_split_across_deltas():
    buffer = StopBuffer(["END"])
    out = [buffer.feed(d) for d in ["hello E", "N", "D more"]]
    assert "".join(out) + buffer.flush() == "hello "
    assert buffer.stopped


def test_stop_buffer_releases_everything_without_a_stop():
    buffer = StopBuffer(["###"])
    text = "".join(buffer.feed(d) for d in ["a#", "b#", "c"]) + buffer.flush()
    assert text == "a#b#c" and not buffer.stopped
    assert "".join(StopBuffer([]).feed(d) for d in ["x", "y"]) == "xy"


@pytest.fixture(scope="module")
def embedded_url(embedded_model):
    with serve_in_thread(build_embedded_app(EmbeddedServer(embedded_model, [SERVED_MODEL_NAME], 512))) as url:
        yield url


def ask(url: str, **fields) -> httpx.Response:
    body = {"model": SERVED_MODEL_NAME, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0, "max_tokens": 24, **fields}  # fmt: skip
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


@pytest.mark.slow
def test_answers_a_question_with_usage(embedded_url):
    body = ask(embedded_url).json()
    assert "Paris" in body["choices"][0]["message"]["content"]
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["model"] == SERVED_MODEL_NAME and body["object"] == "chat.completion"


@pytest.mark.slow
def test_stream_matches_the_greedy_answer_and_ends_with_done(embedded_url):
    expected = ask(embedded_url).json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", f"{embedded_url}/v1/chat/completions", timeout=120, json={
        "model": SERVED_MODEL_NAME, "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0, "max_tokens": 24, "stream": True, "stream_options": {"include_usage": True}}) as response:  # fmt: skip
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == expected
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.slow
def test_max_tokens_and_stop(embedded_url):
    short = ask(embedded_url, max_tokens=3).json()
    assert short["choices"][0]["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 3
    stopped = ask(embedded_url, stop=["Paris"]).json()
    assert "Paris" not in stopped["choices"][0]["message"]["content"]
    assert stopped["choices"][0]["finish_reason"] == "stop"


@pytest.mark.slow
def test_logprobs_are_the_models_greedy_choices(embedded_url):
    """As vLLM: each token's logprob and its top alternatives; greedy picks the most likely."""
    body = ask(embedded_url, max_tokens=6, logprobs=True, top_logprobs=3).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"] == 6
    assert "".join(entry["token"] for entry in content) == body["choices"][0]["message"]["content"]
    for entry in content:
        top = entry["top_logprobs"]
        assert len(top) == 3 and top[0]["token"] == entry["token"] and top[0]["logprob"] == entry["logprob"]
        assert entry["logprob"] <= 0 and top[0]["logprob"] >= top[1]["logprob"] >= top[2]["logprob"]
    assert ask(embedded_url, max_tokens=2).json()["choices"][0]["logprobs"] is None


@pytest.mark.slow
def test_refuses_what_it_cannot_do(embedded_url):
    assert ask(embedded_url, model="gpt-17").status_code == 404
    assert ask(embedded_url, logprobs=True, stream=True).status_code == 400
    assert ask(embedded_url, top_logprobs=2).status_code == 400  # without logprobs: true
    assert ask(embedded_url, n=2).status_code == 400
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with_image = ask(
        embedded_url, messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]
    )
    assert with_image.status_code == 400 and "image_url" in with_image.json()["error"]["message"]
    assert httpx.get(f"{embedded_url}/v1/models").json()["data"][0]["id"] == SERVED_MODEL_NAME


@pytest.mark.slow
def test_legacy_completions_continue_a_raw_prompt(embedded_url):
    body = {"model": SERVED_MODEL_NAME, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
    completion = httpx.post(f"{embedded_url}/v1/completions", json=body, timeout=120).json()
    text = completion["choices"][0]["text"]
    assert completion["object"] == "text_completion" and "Paris" in text
    assert completion["usage"]["prompt_tokens"] == 5  # the raw prompt's tokens: no chat template around it
    echoed = httpx.post(f"{embedded_url}/v1/completions", json={**body, "echo": True}, timeout=120).json()
    assert echoed["choices"][0]["text"] == body["prompt"] + text
    with httpx.stream("POST", f"{embedded_url}/v1/completions", json={**body, "stream": True}, timeout=120) as response:
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]) == text
    refused = httpx.post(f"{embedded_url}/v1/completions", json={**body, "logprobs": 2}, timeout=120)
    assert refused.status_code == 400 and "logprobs" in refused.json()["error"]["message"]


@pytest.mark.slow
def test_a_conversion_by_another_transformers_version_is_redone(embedded_model, tmp_path):
    from expertmesh.config import load_config
    from expertmesh.experts.embedded.model import prepare_model

    cached = prepare_model(load_config().embedded.cache_dir)  # converted by this version
    marker = (cached / ".complete").read_text()
    assert "transformers==" in marker
    copy = tmp_path / "smollm2-135m-instruct"
    copy.mkdir()
    (copy / ".complete").write_text(marker.replace("transformers==", "transformers==0.0.0-"))
    assert prepare_model(tmp_path) == copy
    assert (copy / ".complete").read_text() == marker and (copy / "model.safetensors").is_file()
