"""The gateway against fake experts on 127.0.0.1: routing, streaming, errors."""

from __future__ import annotations

import json

import httpx
import pytest

from expertmesh.experts.pool import ExpertPool
from expertmesh.gateway.app import build_app
from expertmesh.router.policy import RoutingPolicy
from tests.conftest import KeywordClassifier, fake_config, running_gateway, serve_in_thread


def chat(url: str, payload: dict | bytes | str, **kwargs) -> httpx.Response:
    if isinstance(payload, dict):
        return httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=10, **kwargs)
    return httpx.post(f"{url}/v1/chat/completions", content=payload, timeout=10,
                      headers={"content-type": "application/json"}, **kwargs)  # fmt: skip


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_auto_routes_to_the_domain_expert_with_its_prompt(gateway_url, fake_expert):
    response = chat(gateway_url, {"model": "auto", "messages": user("what is this symptom?")})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "medical-model"
    assert body["choices"][0]["message"]["content"] == "[medical-model] [medical] what is this symptom?"
    assert body["received_messages"][0] == {"role": "system", "content": "You are the medical expert."}
    assert body["usage"]["total_tokens"] > 0
    decision = body["expertmesh"]
    assert decision["expert"] == "medical" and decision["routed_by"] == "router"
    assert decision["scores"]["medical"] == pytest.approx(decision["confidence"])
    assert response.headers["x-expertmesh-expert"] == "medical"
    assert response.headers["x-expertmesh-domain"] == "medical"
    assert json.loads(response.headers["x-expertmesh-scores"])["medical"] > 0.5


def test_images_reach_the_expert_and_the_router_reads_the_text(gateway_url):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
    content = [{"type": "text", "text": "what is this symptom?"}, image]
    response = chat(gateway_url, {"model": "auto", "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 200
    body = response.json()
    assert body["expertmesh"]["expert"] == "medical"
    assert body["received_messages"][-1]["content"] == [
        {"type": "text", "text": "[medical] what is this symptom?"},
        image,
    ]

    unknown = [{"type": "hologram", "hologram": {}}]
    response = chat(gateway_url, {"model": "auto", "messages": [{"role": "user", "content": unknown}]})
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and "messages[0].content[0]: Input tag 'hologram'" in message
    assert "union" not in message  # pydantic's internal names are not the user's keys


def test_science_is_served_by_the_general_expert_and_low_confidence_falls_back(gateway_url):
    body = chat(gateway_url, {"model": "auto", "messages": user("tell me a story")}).json()
    assert body["expertmesh"]["expert"] == "general"
    assert body["expertmesh"]["routed_by"] == "fallback"  # 0.30 < threshold 0.5


def test_explicit_expert_skips_the_router(gateway_url):
    response = chat(gateway_url, {"model": "legal", "messages": user("what is this symptom?")})
    assert response.status_code == 200
    assert response.json()["expertmesh"] == {
        **response.json()["expertmesh"],
        "expert": "legal",
        "routed_by": "explicit",
        "domain": None,
    }
    assert response.headers["x-expertmesh-routed-by"] == "explicit"


def test_user_system_prompt_is_merged_after_the_experts_and_sampling_params_pass_through(gateway_url, fake_expert):
    messages = [{"role": "system", "content": "Answer in French."}, *user("python question")]
    chat(gateway_url, {"model": "auto", "messages": messages, "temperature": 0.5, "top_k": 7, "stop": ["\n"]})
    sent = fake_expert[1].state.requests[-1]
    assert sent["messages"][0]["content"] == "You are the code expert.\n\nAnswer in French."
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["temperature"] == 0.5 and sent["top_k"] == 7 and sent["stop"] == ["\n"]
    assert sent["model"] == "code-model"


def test_streaming_relays_sse_chunks_and_ends_with_done(gateway_url):
    payload = {"model": "auto", "messages": user("a contract question"), "stream": True,
               "stream_options": {"include_usage": True}}  # fmt: skip
    with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", json=payload, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-expertmesh-expert"] == "legal"
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["expertmesh"]["expert"] == "legal"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "[legal-model] [legal] a contract question"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_models_route_and_health_endpoints(gateway_url):
    models = httpx.get(f"{gateway_url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["auto", "medical", "legal", "finance", "code", "math", "general"]
    decision = httpx.post(f"{gateway_url}/v1/route", json={"text": "tax on dividends"}).json()
    assert decision["expert"] == "finance" and decision["router"] == "keyword"
    decision = httpx.post(f"{gateway_url}/v1/route", json={"messages": user("an integral")}).json()
    assert decision["expert"] == "math"
    assert httpx.get(f"{gateway_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway_url}/readyz")
    assert ready.status_code == 200 and all(e["ok"] for e in ready.json()["experts"].values())


BAD_INPUTS = [
    ("{not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "JSON object"),
    ({"model": "auto"}, 400, "messages"),
    ({"model": "auto", "messages": []}, 400, "messages"),
    ({"model": "auto", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ({"model": "auto", "messages": [{"role": "user"}]}, 400, "content"),
    ({"model": "auto", "messages": "hello"}, 400, "messages"),
    ({"model": "auto", "messages": user("hi"), "temperature": "hot"}, 400, "temperature"),
    ({"model": "auto", "messages": user("hi"), "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "auto", "messages": user("hi"), "stream": "yes"}, 400, "stream"),
    ({"model": 42, "messages": user("hi")}, 400, "model"),
    ({"model": "gpt-17", "messages": user("hi")}, 404, "gpt-17"),
]


@pytest.mark.parametrize(("payload", "status", "mentions"), BAD_INPUTS)
def test_bad_input_gets_a_clear_openai_error(gateway_url, payload, status, mentions):
    response = chat(gateway_url, payload)
    assert response.status_code == status
    error = response.json()["error"]
    assert mentions in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_body_over_the_limit_is_refused_with_413(fake_expert):
    with running_gateway(fake_config(fake_expert[0], max_body_bytes=2048)) as url:
        response = chat(url, {"model": "auto", "messages": user("x" * 5000)})
        assert response.status_code == 413 and "2048" in response.json()["error"]["message"]

        def chunked():  # no Content-Length: the middleware must count the bytes
            yield b'{"model": "auto", "messages": [{"role": "user", "content": "'
            yield b"x" * 5000
            yield b'"}]}'

        response = httpx.post(f"{url}/v1/chat/completions", content=chunked(), timeout=10)
        assert response.status_code == 413
        assert chat(url, {"model": "auto", "messages": user("small")}).status_code == 200


def test_api_keys_are_required_when_configured(fake_expert):
    with running_gateway(fake_config(fake_expert[0], api_keys=["sk-test"])) as url:
        payload = {"model": "auto", "messages": user("hi")}
        assert chat(url, payload).status_code == 401
        assert chat(url, payload, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert chat(url, payload, headers={"authorization": "Bearer sk-test"}).status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes need no key


def test_expert_timeout_is_504_and_the_gateway_keeps_serving(gateway_url):
    response = chat(gateway_url, {"model": "medical", "messages": user("[sleep=5] slow")})
    assert response.status_code == 504
    assert "medical" in response.json()["error"]["message"]
    assert chat(gateway_url, {"model": "legal", "messages": user("fast")}).status_code == 200


def test_expert_error_status_is_mapped(gateway_url):
    response = chat(gateway_url, {"model": "code", "messages": user("[status=500] boom")})
    assert response.status_code == 502 and "code" in response.json()["error"]["message"]
    response = chat(gateway_url, {"model": "code", "messages": user("[status=400] too long")})
    assert response.status_code == 400 and "fake failure 400" in response.json()["error"]["message"]


def test_expert_down_is_502_naming_it(fake_expert):
    config = fake_config(fake_expert[0])
    dead = config.model_copy(update={"experts": [e.model_copy(update={"backend": "http://127.0.0.1:9/v1"})
                                                 if e.name == "math" else e for e in config.experts]})  # fmt: skip
    with running_gateway(dead) as url:
        response = chat(url, {"model": "auto", "messages": user("an integral")})
        assert response.status_code == 502
        assert "expert 'math'" in response.json()["error"]["message"]
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and not ready.json()["experts"]["math"]["ok"]
        assert chat(url, {"model": "auto", "messages": user("a symptom")}).status_code == 200


def test_streaming_error_before_the_first_chunk_is_an_http_status(gateway_url):
    payload = {"model": "finance", "messages": user("[status=503] down"), "stream": True}
    response = chat(gateway_url, payload)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "expert_error"


def test_auto_without_a_router_is_503_but_named_experts_work(fake_expert):
    with running_gateway(fake_config(fake_expert[0]), with_router=False) as url:
        assert chat(url, {"model": "auto", "messages": user("hi")}).status_code == 503
        assert chat(url, {"model": "general", "messages": user("hi")}).status_code == 200


def test_follow_up_in_a_conversation_stays_with_its_expert(gateway_url):
    messages = [{"role": "user", "content": "what does this symptom mean?"},
                {"role": "assistant", "content": "It may be a rash."},
                {"role": "user", "content": "and what about the dose for children?"}]  # fmt: skip
    body = chat(gateway_url, {"model": "auto", "messages": messages}).json()
    assert body["expertmesh"]["expert"] == "medical" and body["expertmesh"]["conversation"] == "kept"
    assert httpx.post(f"{gateway_url}/v1/route", json={"messages": messages}).json()["expert"] == "medical"


def test_model_aliases_route_fixed_model_names(fake_expert):
    url, _ = fake_expert
    config = fake_config(url)
    gateway = config.gateway.model_copy(update={"model_aliases": {"gpt-4o": "auto", "doctor": "medical"}})
    config = config.model_copy(update={"gateway": gateway})
    with serve_in_thread(build_app(config, RoutingPolicy(KeywordClassifier(), config), ExpertPool(config))) as gw:
        routed = httpx.post(f"{gw}/v1/chat/completions", json={"model": "gpt-4o", "messages": [
            {"role": "user", "content": "python question"}]}, timeout=10)  # fmt: skip
        assert routed.headers["x-expertmesh-expert"] == "code" and routed.json()["expertmesh"]["routed_by"] == "router"
        named = httpx.post(f"{gw}/v1/chat/completions", json={"model": "doctor", "messages": [
            {"role": "user", "content": "python question"}]}, timeout=10)  # fmt: skip
        assert named.headers["x-expertmesh-expert"] == "medical"
        assert "gpt-4o" in [m["id"] for m in httpx.get(f"{gw}/v1/models").json()["data"]]


def test_an_alias_to_an_unknown_expert_is_a_config_error():
    from expertmesh.config import Config

    raw = fake_config("http://127.0.0.1:9").model_dump(mode="json")
    raw["gateway"]["model_aliases"] = {"gpt-4o": "oracle"}
    with pytest.raises(ValueError, match="gateway.model_aliases.gpt-4o: unknown target 'oracle'"):
        Config.model_validate(raw)
