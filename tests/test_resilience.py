"""Failover, replicas, circuit breakers, honest health and the errors around them, against
real servers on 127.0.0.1 (the fake expert, the gateway) and backends that are really down."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import orjson
import pytest

from expertmesh.config import Config
from tests.conftest import free_port, running_gateway, serve_in_thread
from tests.fake_expert import build_fake_app

DEAD = "http://127.0.0.1:9/v1"  # the discard port: nothing listens, connections are refused
EXPERTS = [("medical", ["medical"]), ("legal", ["legal"]), ("finance", ["finance"]), ("code", ["code"]),
           ("math", ["math"]), ("general", ["general", "science"])]  # fmt: skip


def make_config(fake_url: str, backends: dict[str, object] | None = None, fallbacks: bool = True,
                resilience: dict | None = None, **gateway) -> Config:  # fmt: skip
    """The test experts on the fake, each domain expert falling back to general (unless
    `fallbacks` is False); `backends` replaces some experts' backend (a URL or a list)."""
    backends = backends or {}
    experts = [
        {"name": name, "domains": domains, "backend": backends.get(name, f"{fake_url}/v1"), "model": f"{name}-model",
         "timeout_s": 2, **({"fallbacks": ["general"]} if fallbacks and name != "general" else {})}
        for name, domains in EXPERTS
    ]  # fmt: skip
    return Config.model_validate({
        "experts": experts, "router": {"artifact": "/nonexistent", "confidence_threshold": 0.5}, "gateway": gateway,
        "resilience": resilience or {"retries": {"backoff_s": 0.01}, "health_check": {"interval_s": 0.3, "timeout_s": 5}},
    })  # fmt: skip


@pytest.fixture()
def fake() -> Iterator[tuple[str, object]]:
    """A fake expert of this test's own (its rules and counters are not shared)."""
    app = build_fake_app([f"{name}-model" for name, _ in EXPERTS])
    with serve_in_thread(app) as url:
        yield url, app


def chat(url: str, text: str, model: str = "auto", **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def metric(url: str, name: str, **labels: str) -> float:
    """A sample's value from /metrics (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# --- failover between experts ---------------------------------------------------------------------


def test_an_expert_whose_only_backend_is_down_fails_over_to_its_fallback(fake):
    url, _ = fake
    with running_gateway(make_config(url, {"math": DEAD})) as gateway:
        response = chat(gateway, "an integral please")
        assert response.status_code == 200
        body = response.json()
        assert body["choices"][0]["message"]["content"].startswith("[general-model]")
        meta = body["expertmesh"]
        assert meta["expert"] == "math" and meta["answered_by"] == "general"  # the decision stays the router's
        # unavailable: the connection was refused; circuit_open: the health check had found it down
        assert meta["failover"][0]["expert"] == "math" and meta["failover"][0]["error"] in (
            "unavailable",
            "circuit_open",
        )
        assert response.headers["x-expertmesh-answered-by"] == "general"
        assert response.headers["x-expertmesh-failover"] == f"math={meta['failover'][0]['error']}"
        stream = chat(gateway, "another integral", stream=True)
        assert (
            stream.status_code == 200 and "[general-model]" in stream.text and stream.text.endswith("data: [DONE]\n\n")
        )
        assert metric(gateway, "expertmesh_failovers_total", from_expert="math", to_expert="general") >= 1
        assert sum(metric(gateway, "expertmesh_failovers_total", from_expert="math", reason=reason)
                   for reason in ("unavailable", "circuit_open")) == 2  # fmt: skip
        # /readyz: math's domain is covered by its fallback, so the gateway stays in the pool.
        ready = httpx.get(f"{gateway}/readyz")
        assert ready.status_code == 200 and not ready.json()["experts"]["math"]["ok"]


def test_without_a_fallback_the_gateway_is_not_ready_for_that_domain(fake):
    url, _ = fake
    with running_gateway(make_config(url, {"math": DEAD}, fallbacks=False)) as gateway:
        assert chat(gateway, "an integral").status_code == 502
        ready = httpx.get(f"{gateway}/readyz")
        assert ready.status_code == 503 and ready.json()["unserved_domains"] == ["math"]


@pytest.mark.parametrize(("rule", "error"), [({"status": 500}, "failed"), ({"delay": 5}, "timeout"),
                                             ({"status": 401}, "misconfigured")])  # fmt: skip
def test_failing_slow_or_misconfigured_experts_fail_over(fake, rule, error):
    url, app = fake
    app.state.per_model["code-model"] = rule
    with running_gateway(make_config(url)) as gateway:
        response = chat(gateway, "python question")
        assert response.status_code == 200, response.text
        assert response.json()["expertmesh"]["failover"][0]["error"] == error


def test_a_bad_request_is_not_failed_over(fake):
    url, app = fake
    with running_gateway(make_config(url)) as gateway:
        response = chat(gateway, "[status=400] python question")
        assert response.status_code == 400 and "fake failure 400" in response.json()["error"]["message"]
        assert not [r for r in app.state.requests if r["model"] == "general-model"]


# --- retries and replicas -----------------------------------------------------------------------------


def test_a_transient_5xx_is_retried_on_the_same_expert(fake):
    url, app = fake
    app.state.per_model["legal-model"] = {"failures": 1, "status": 503}
    with running_gateway(make_config(url)) as gateway:
        response = chat(gateway, "a contract question")
        assert response.status_code == 200 and "failover" not in response.json()["expertmesh"]
        assert response.json()["choices"][0]["message"]["content"].startswith("[legal-model]")
        assert metric(gateway, "expertmesh_retries_total", expert="legal", reason="failed") == 1


def test_requests_spread_over_replicas_and_a_dead_one_is_taken_out(fake):
    url, _ = fake
    with running_gateway(make_config(url, {"finance": [f"{url}/v1", DEAD]}, fallbacks=False)) as gateway:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: chat(gateway, f"tax question {i}").status_code, range(40)))
        assert codes == [200] * 40  # the dead replica's requests were retried on the live one
        ready = httpx.get(f"{gateway}/readyz").json()
        replicas = ready["experts"]["finance"]["replicas"]
        assert replicas[0]["state"] == "closed" and replicas[1]["healthy"] is False
        assert metric(gateway, "expertmesh_replica_state", expert="finance", replica="0") == 1
        assert DEAD.split("//")[1].split("/")[0] not in orjson.dumps(ready).decode()  # no addresses


def test_a_failing_replica_is_taken_out_and_tried_again_after_its_cooldown(fake):
    url, app = fake
    app.state.per_model["finance-model"] = {"failures": 2, "status": 500}  # fails twice, then works
    resilience = {"retries": {"attempts": 1}, "circuit_breaker": {"failures": 2, "cooldown_s": 0.5},
                  "health_check": {"interval_s": 60}}  # fmt: skip
    with running_gateway(make_config(url, resilience=resilience)) as gateway:
        for _ in range(2):
            assert chat(gateway, "tax question").json()["expertmesh"]["answered_by"] == "general"
        assert metric(gateway, "expertmesh_replica_state", expert="finance", replica="0") == 0
        assert metric(gateway, "expertmesh_circuit_opened_total", expert="finance", replica="0") == 1
        # Open: the replica is not tried (it would answer now), the fallback answers at once.
        failover = chat(gateway, "tax question").json()["expertmesh"]["failover"][0]
        assert failover["message"].endswith("cooling down after failures")
        time.sleep(0.6)  # past the cool-down: one trial request, which succeeds and closes the breaker
        answer = chat(gateway, "tax question").json()
        assert (
            answer["choices"][0]["message"]["content"].startswith("[finance-model]")
            and "failover" not in answer["expertmesh"]
        )
        assert metric(gateway, "expertmesh_replica_state", expert="finance", replica="0") == 1


def test_the_health_check_takes_a_dead_server_out_and_puts_it_back_when_it_is_up(fake):
    url, _ = fake
    port = free_port()
    with running_gateway(make_config(url, {"finance": f"http://127.0.0.1:{port}/v1"}, fallbacks=False)) as gateway:
        assert httpx.get(f"{gateway}/readyz").status_code == 503
        with serve_on_port(build_fake_app(["finance-model"]), port):
            deadline = time.monotonic() + 5
            while httpx.get(f"{gateway}/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert httpx.get(f"{gateway}/readyz").status_code == 200  # within a check interval (0.3 s here)
            assert chat(gateway, "tax question").status_code == 200


@contextmanager
def serve_on_port(app, port: int) -> Iterator[None]:
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_least_busy_usable_replica_is_picked_and_tried_ones_last():
    from expertmesh.config import CircuitBreakerConfig
    from expertmesh.experts.replicas import OPEN, Replica, ReplicaSet

    states = []
    breaker = CircuitBreakerConfig(failures=2, cooldown_s=60)
    replicas = [Replica("x", i, f"http://r{i}/v1", breaker, lambda *a: states.append(a)) for i in range(3)]
    chosen = ReplicaSet(replicas)
    replicas[0].in_flight, replicas[1].in_flight, replicas[2].in_flight = 3, 1, 2
    assert chosen.pick(set()).index == 1
    assert chosen.pick({1}).index == 2  # already tried for this request: the others first
    assert chosen.pick({0, 1, 2}).index == 1  # all tried: the least busy again
    replicas[1].failed()
    assert chosen.pick(set()).index == 1  # one failure is not enough to take it out
    replicas[1].failed()
    assert states == [("x", 1, OPEN)] and chosen.pick(set()).index == 2
    replicas[2].checked(False, "down")  # the health check's reading puts it last
    assert chosen.pick(set()).index == 0
    replicas[0].checked(False, "down")
    # Only replicas the check found down are left: still tried (the check can be wrong), but
    # the expert no longer counts as up for /readyz.
    assert chosen.pick(set()).index == 2 and not chosen.any_up
    replicas[2].failed(), replicas[2].failed(), replicas[0].failed(), replicas[0].failed()
    assert chosen.pick(set()) is None  # every breaker open: nothing is sent


# --- 429s ------------------------------------------------------------------------------------------


def test_an_overloaded_expert_fails_over_then_429_with_retry_after(fake):
    url, app = fake
    app.state.per_model["medical-model"] = {"status": 429, "retry_after": 7}
    with running_gateway(make_config(url)) as gateway:
        response = chat(gateway, "a symptom")
        assert response.status_code == 200
        assert response.json()["expertmesh"]["failover"][0]["error"] == "rate_limited"
    with running_gateway(make_config(url, fallbacks=False)) as gateway:
        response = chat(gateway, "a symptom")
        assert response.status_code == 429 and response.headers["retry-after"] == "7"
        assert response.json()["error"]["code"] == "expert_overloaded"


# --- errors classified right -------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code"), [(401, "expert_auth_failed"), (403, "expert_auth_failed"),
                                              (404, "expert_not_found")])  # fmt: skip
def test_an_upstreams_auth_or_not_found_error_is_the_gateways_502(fake, status, code):
    url, _ = fake
    with running_gateway(make_config(url, fallbacks=False)) as gateway:
        response = chat(gateway, f"[status={status}] hi", model="legal")
        assert response.status_code == 502 and response.json()["error"]["code"] == code


@pytest.mark.parametrize("field", [{"seed": 2**70}, {"n": 2**64}, {"vendor_option": {"x": [1, -(2**63) - 1]}},
                                   {"max_tokens": 10**30}])  # fmt: skip
def test_an_integer_beyond_64_bits_is_the_callers_400_before_any_expert_call(fake, field):
    url, app = fake
    with running_gateway(make_config(url)) as gateway:
        before = len(app.state.requests)
        response = chat(gateway, "a question", **field)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "integer_out_of_range" and error["param"].split(".")[0] == next(iter(field))
        assert len(app.state.requests) == before
        assert metric(gateway, "expertmesh_expert_errors_total") == 0
        assert chat(gateway, "a question", seed=2**63 - 1).status_code == 200  # the edge of the range is fine


def test_client_facing_errors_name_no_backend_address(fake):
    url, _ = fake
    with running_gateway(make_config(url, {"math": DEAD}, fallbacks=False)) as gateway:
        response = chat(gateway, "an integral")
        assert response.status_code == 502
        assert "127.0.0.1" not in response.text and ":9" not in response.text
        assert "expert 'math'" in response.json()["error"]["message"]
        assert "127.0.0.1" not in httpx.get(f"{gateway}/readyz").text


# --- honest health -------------------------------------------------------------------------------------


def test_readyz_is_cached_and_shows_detail_only_to_authenticated_callers(fake):
    url, app = fake
    # A generous check timeout: the fake shares this process, and a loaded machine can be slow to answer.
    config = make_config(url, api_keys=["sk-ops"], resilience={"health_check": {"interval_s": 60, "timeout_s": 10}})
    with running_gateway(config) as gateway:
        before = app.state.model_list_calls
        for _ in range(100):
            assert httpx.get(f"{gateway}/readyz").json() == {"status": "ready"}
        assert app.state.model_list_calls == before  # 100 probes, no request to any expert
        detailed = httpx.get(f"{gateway}/readyz", headers={"authorization": "Bearer sk-ops"}).json()
        assert detailed["status"] == "ready" and set(detailed["experts"]) == {name for name, _ in EXPERTS}
        assert httpx.head(f"{gateway}/readyz").status_code == 200


def test_liveness_probes_take_head_and_405s_say_what_is_allowed(fake):
    url, _ = fake
    with running_gateway(make_config(url)) as gateway:
        assert httpx.head(f"{gateway}/healthz").status_code == 200
        assert httpx.head(f"{gateway}/health").status_code == 200
        wrong = httpx.get(f"{gateway}/v1/chat/completions")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
        assert wrong.json()["error"]["type"] == "invalid_request_error"


# --- the total time limit ------------------------------------------------------------------------------


def test_a_stream_is_cut_at_the_requests_total_time_limit(fake):
    url, _ = fake
    words = " ".join(["word"] * 40)
    with running_gateway(make_config(url, request_timeout_s=1.0)) as gateway:
        start = time.monotonic()
        response = chat(gateway, f"[chunk_sleep=0.1] {words}", stream=True)  # ~4 s of chunks, each within timeout_s
        elapsed = time.monotonic() - start
        assert response.status_code == 200 and 0.9 < elapsed < 2.5
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and orjson.loads(events[-2])["error"]["code"] == "request_timeout"
        slow = chat(gateway, "[sleep=1.5] non-streaming", model="general")  # no fallback of its own
        assert slow.status_code == 504 and slow.json()["error"]["code"] == "request_timeout"


# --- the OpenAPI document ------------------------------------------------------------------------------


def test_the_openapi_document_declares_request_bodies_and_metrics_as_text(fake):
    url, _ = fake
    with running_gateway(make_config(url)) as gateway:
        document = httpx.get(f"{gateway}/openapi.json").json()
    for path, model in [("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest"),
                        ("/v1/responses", "ResponsesRequest"), ("/v1/route", "RouteRequest")]:  # fmt: skip
        body = document["paths"][path]["post"]["requestBody"]
        assert body["required"] and body["content"]["application/json"]["schema"]["$ref"].endswith(model)
        assert "messages" in str(document["components"]["schemas"][model]) or model != "ChatCompletionRequest"
    assert list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert {"get", "head"} <= set(document["paths"]["/healthz"])
