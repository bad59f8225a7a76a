"""Named keys and their limits, the decision log, feedback, `log export`, and tracing: a real
gateway on 127.0.0.1 in front of the fake expert, a real SQLite file, the OpenTelemetry SDK."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from expertmesh.cli import app as cli
from expertmesh.config import Config
from expertmesh.experts.pool import ExpertPool
from expertmesh.gateway.app import build_app
from expertmesh.gateway.server import run_gateway
from expertmesh.router.policy import RoutingPolicy
from tests.conftest import KeywordClassifier, fake_config, serve_in_thread

KEYS = [
    {"name": "alice", "key": "sk-alice"},
    {"name": "bob", "key": "sk-bob", "experts": ["general", "code"]},
    {"name": "slow", "key": "sk-slow", "requests_per_minute": 60},
    {"name": "thrifty", "key": "sk-thrifty", "tokens_per_minute": 10},
]


def configured(fake_url: str, tmp_path: Path, gateway: dict | None = None, **sections: object) -> Config:
    data = fake_config(fake_url).model_dump(mode="json", exclude_none=True)
    data["gateway"].update({"keys": KEYS, "rate_limit_burst_s": 2, **(gateway or {})})
    data["log"] = {"url": f"sqlite:///{tmp_path / 'decisions.db'}", **sections.pop("log", {})}  # type: ignore[dict-item]
    data.update(sections)
    return Config.model_validate(data)


@contextmanager
def gateway(config: Config, span_exporter=None) -> Iterator[tuple[httpx.Client, object]]:
    app = build_app(config, RoutingPolicy(KeywordClassifier(), config), ExpertPool(config), span_exporter)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client, app


def ask(client: httpx.Client, key: str, text: str, model: str = "auto", **extra) -> httpx.Response:
    return client.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}", **extra.pop("headers", {})},
                       json={"model": model, "messages": [{"role": "user", "content": text}], **extra})  # fmt: skip


def logged(app, tmp_path: Path, expected: int) -> list[dict]:
    """The logged rows, once there are `expected` of them (a record is queued once its response
    has gone out, a moment after the client has it)."""
    deadline = time.monotonic() + 5
    while True:
        app.state.decisions.flush()
        with sqlite3.connect(tmp_path / "decisions.db") as db:
            db.row_factory = sqlite3.Row
            rows = [dict(row) for row in db.execute("SELECT * FROM decisions ORDER BY time")]
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


def test_every_request_is_logged_with_its_key_decision_tokens_and_id(fake_expert, tmp_path):
    with gateway(configured(fake_expert[0], tmp_path)) as (client, app):
        answered = ask(client, "sk-alice", "what is this symptom?", headers={"x-request-id": "my-id-1"})
        refused = client.post("/v1/chat/completions", json={"model": "auto", "messages": []})
        rows = logged(app, tmp_path, 2)
    assert answered.status_code == 200 and answered.headers["x-request-id"] == "my-id-1"
    assert refused.status_code == 401 and refused.headers["x-request-id"].startswith("req_")
    ok, unauthorized = rows
    assert ok["request_id"] == "my-id-1" and ok["key_name"] == "alice" and ok["status"] == 200
    assert (ok["expert"], ok["answered_by"], ok["domain"], ok["routed_by"]) == (
        "medical",
        "medical",
        "medical",
        "router",
    )
    assert ok["confidence"] == pytest.approx(0.88) and json.loads(ok["scores"])["medical"] == pytest.approx(0.88)
    assert ok["prompt_tokens"] == 7 and ok["completion_tokens"] > 0 and ok["latency_ms"] > 0
    assert ok["text"] is None  # log.store_text is off by default
    assert unauthorized["status"] == 401 and unauthorized["key_name"] is None and unauthorized["expert"] is None


def test_the_text_is_kept_only_when_store_text_is_on_and_failovers_are_logged(fake_expert, tmp_path):
    config = configured(fake_expert[0], tmp_path, log={"store_text": True})
    data = config.model_dump(mode="json", exclude_none=True)
    data["experts"][0]["fallbacks"] = ["general"]  # medical -> general
    fake_expert[1].state.per_model["medical-model"] = {"status": 503}
    try:
        with gateway(Config.model_validate(data)) as (client, app):
            response = ask(client, "sk-alice", "a symptom question", stream=True)
            assert response.status_code == 200 and "data: [DONE]" in response.text
            (row,) = logged(app, tmp_path, 1)
    finally:
        fake_expert[1].state.per_model.pop("medical-model")
    assert row["text"] == "a symptom question" and row["expert"] == "medical" and row["answered_by"] == "general"
    assert json.loads(row["failovers"])[0]["expert"] == "medical" and row["completion_tokens"] > 0


def test_a_key_uses_only_its_experts(fake_expert, tmp_path):
    with gateway(configured(fake_expert[0], tmp_path)) as (client, _):
        explicit = ask(client, "sk-bob", "hello", model="medical")
        routed = ask(client, "sk-bob", "what is this symptom?")
        models = client.get("/v1/models", headers={"authorization": "Bearer sk-bob"}).json()
    assert explicit.status_code == 403 and explicit.json()["error"]["code"] == "model_not_allowed"
    assert "bob" in explicit.json()["error"]["message"]
    # routed to medical, which bob may not use: the most probable domain whose expert he may use
    assert routed.status_code == 200 and routed.headers["x-expertmesh-expert"] in {"general", "code"}
    assert routed.json()["expertmesh"]["domain"] == "medical"
    assert [m["id"] for m in models["data"]] == ["auto", "code", "general"]


def test_requests_per_minute_are_limited_with_openais_429(fake_expert, tmp_path):
    # 60 a minute with a 2-second burst: two at once, then one a second
    with gateway(configured(fake_expert[0], tmp_path)) as (client, app):
        statuses = [ask(client, "sk-slow", "hi").status_code for _ in range(3)]
        refused = ask(client, "sk-slow", "hi")
        other_key = ask(client, "sk-alice", "hi")
        time.sleep(1.1)
        again = ask(client, "sk-slow", "hi")
        metrics = client.get("/metrics", headers={"authorization": "Bearer sk-alice"}).text
        rows = logged(app, tmp_path, 6)
    assert statuses == [200, 200, 429] and refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded") and "'slow'" in error["message"]
    assert refused.headers["retry-after"] == "1"
    assert other_key.status_code == 200 and again.status_code == 200
    assert 'expertmesh_rate_limited_total{key="slow",limit="requests"} 2.0' in metrics
    assert [r["status"] for r in rows if r["key_name"] == "slow"] == [200, 200, 429, 429, 200]


def test_tokens_per_minute_are_debited_after_the_answer(fake_expert, tmp_path):
    with gateway(configured(fake_expert[0], tmp_path)) as (client, _):
        first = ask(client, "sk-thrifty", "one two three")  # 7 prompt + 4 completion tokens > 10
        time.sleep(0.1)
        second = ask(client, "sk-thrifty", "again")
    assert first.status_code == 200
    assert second.status_code == 429 and second.json()["error"]["type"] == "tokens"
    assert int(second.headers["retry-after"]) >= 1


def test_feedback_on_a_logged_request(fake_expert, tmp_path):
    with gateway(configured(fake_expert[0], tmp_path)) as (client, app):
        request_id = ask(client, "sk-alice", "a tax question").headers["x-request-id"]
        auth = {"authorization": "Bearer sk-alice"}
        unknown = client.post("/v1/feedback", headers=auth, json={"request_id": "nope", "rating": 1})
        bad_domain = client.post("/v1/feedback", headers=auth, json={"request_id": request_id, "domain": "cooking"})
        empty = client.post("/v1/feedback", headers=auth, json={"request_id": request_id})
        recorded = client.post(
            "/v1/feedback", headers=auth, json={"request_id": request_id, "domain": "legal", "rating": -1}
        )
        anonymous = client.post("/v1/feedback", json={"request_id": request_id, "rating": 1})
        other_key = client.post("/v1/feedback", headers={"authorization": "Bearer sk-bob"}, json={"request_id": request_id, "rating": 1})
        app.state.decisions.flush()
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "request_not_found"
    assert bad_domain.status_code == 400 and "cooking" in bad_domain.json()["error"]["message"]
    assert empty.status_code == 400 and "rating" in empty.json()["error"]["message"]
    assert recorded.status_code == 200 and recorded.json() == {
        "object": "feedback",
        "request_id": request_id,
        "recorded": True,
    }
    assert anonymous.status_code == 401 and other_key.status_code == 404  # bob cannot rate alice's requests
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        assert db.execute("SELECT request_id, key_name, rating, domain FROM feedback").fetchall() == [
            (request_id, "alice", -1, "legal")
        ]


def test_log_export_gives_corrections_and_confident_decisions(fake_expert, tmp_path):
    config = configured(fake_expert[0], tmp_path, log={"store_text": True})
    with gateway(config) as (client, app):
        auth = {"authorization": "Bearer sk-alice"}
        ask(client, "sk-alice", "my symptom is a cough")  # router, 0.88: a confident decision
        ask(client, "sk-alice", "tell me a joke")  # below the threshold: the fallback, not exported
        ask(client, "sk-alice", "hello", model="code")  # explicit: not a decision of the router
        corrected = ask(client, "sk-alice", "a tax question about my lease").headers["x-request-id"]
        assert (
            client.post("/v1/feedback", headers=auth, json={"request_id": corrected, "domain": "legal"}).status_code
            == 200
        )
        app.state.decisions.flush()
    out = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(cli, ["log", "export", "--since", "1h", "--out", str(out), "--min-confidence", "0.8",
                                      "--url", config.log.database_url()])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["text"], r["domain"], r["source"]) for r in rows} == {
        ("my symptom is a cough", "medical", "traffic_decision"),
        ("a tax question about my lease", "legal", "traffic_correction"),
    }
    assert "2 training rows" in result.output and "1 corrections" in result.output


def test_log_export_says_when_no_text_was_kept(fake_expert, tmp_path):
    config = configured(fake_expert[0], tmp_path)
    with gateway(config) as (client, app):
        ask(client, "sk-alice", "my symptom is a cough")
        app.state.decisions.flush()
    result = CliRunner().invoke(cli, ["log", "export", "--since", "2026-01-01", "--out", str(tmp_path / "o.jsonl"),
                                      "--url", config.log.database_url()])  # fmt: skip
    assert result.exit_code == 0 and "0 training rows" in result.output and "store_text" in result.output
    bad = CliRunner().invoke(cli, ["log", "export", "--since", "yesterday", "--out", str(tmp_path / "o.jsonl")])
    assert bad.exit_code == 2 and "ISO date" in bad.output


def test_tracing_spans_the_request_the_decision_and_the_expert_call(fake_expert, tmp_path):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    config = configured(fake_expert[0], tmp_path, tracing={"enabled": True})
    caller_trace, caller_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    fake_expert[1].state.traceparents.clear()
    with gateway(config, exporter) as (client, _):
        response = ask(
            client, "sk-alice", "what is this symptom?", headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"}
        )
        assert response.status_code == 200
    spans = {span.name: span for span in exporter.get_finished_spans()}
    server, route, expert = spans["POST /v1/chat/completions"], spans["route"], spans["expert medical"]
    assert {format(s.context.trace_id, "032x") for s in (server, route, expert)} == {caller_trace}  # the caller's trace
    assert format(server.parent.span_id, "016x") == caller_span
    assert route.parent.span_id == server.context.span_id and expert.parent.span_id == server.context.span_id
    assert route.attributes["expertmesh.domain"] == "medical" and route.attributes[
        "expertmesh.confidence"
    ] == pytest.approx(0.88)
    assert server.attributes["http.response.status_code"] == 200 and server.attributes["expertmesh.key"] == "alice"
    # the expert got a traceparent naming the expert-call span as its parent: vLLM can continue the trace
    (sent,) = fake_expert[1].state.traceparents
    assert sent == f"00-{caller_trace}-{format(expert.context.span_id, '016x')}-01"


def test_a_streamed_answer_is_one_expert_span_that_lasts_the_whole_stream(fake_expert, tmp_path):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    with gateway(configured(fake_expert[0], tmp_path, tracing={"enabled": True}), exporter) as (client, _):
        response = ask(client, "sk-alice", "a python question [chunk_sleep=0.05]", stream=True)
        assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
        deadline = time.monotonic() + 5
        while len(exporter.get_finished_spans()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)  # the server span ends once the response has gone out
    spans = {span.name: span for span in exporter.get_finished_spans()}
    server, expert = spans["POST /v1/chat/completions"], spans["expert code"]
    assert expert.parent.span_id == server.context.span_id and expert.context.trace_id == server.context.trace_id
    assert (expert.end_time - expert.start_time) / 1e9 >= 0.05 * 4  # five words, 50 ms before each chunk


def test_no_spans_or_trace_headers_when_tracing_is_off(fake_expert, tmp_path):
    fake_expert[1].state.traceparents.clear()
    with gateway(configured(fake_expert[0], tmp_path)) as (client, _):
        assert ask(client, "sk-alice", "hi").status_code == 200
    assert fake_expert[1].state.traceparents == [None]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["gateway"]["keys"].append({"name": "x", "key": "k", "experts": ["oncology"]}), "gateway.keys[4].experts: unknown expert"),
    (lambda d: d["gateway"]["keys"].append({"name": "alice", "key": "k2"}), "duplicate key name(s) ['alice']"),
    (lambda d: d["gateway"].update(redis_url="localhost:6379"), "gateway.redis_url"),
    (lambda d: d.update(log={"url": "mysql://x"}), "log.url"),
])  # fmt: skip
def test_bad_key_and_log_settings_are_refused_by_name(fake_expert, tmp_path, change, message):
    data = configured(fake_expert[0], tmp_path).model_dump(mode="json", exclude_none=True)
    change(data)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps(data))
    from expertmesh.config import ConfigError, load_config

    with pytest.raises(
        ConfigError,
        match=r"(?s)"
        + str(config_file).replace(".", r"\.")
        + ".*"
        + message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)"),
    ):
        load_config(config_file)


def test_limits_over_several_workers_need_redis(fake_expert, tmp_path):
    with pytest.raises(ValueError, match="gateway.redis_url"):
        run_gateway(configured(fake_expert[0], tmp_path), None, "127.0.0.1", 0, workers=2)


@pytest.mark.parametrize("protocol", ["http/json", "http/protobuf"])
def test_spans_reach_an_otlp_collector_in_either_encoding(fake_expert, tmp_path, protocol):
    """A stand-in collector on 127.0.0.1 gets the spans when the gateway stops (the batch is
    flushed); the body must parse as OTLP's ExportTraceServiceRequest."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append((self.headers["content-type"], self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    tracing = {"enabled": True, "otlp_endpoint": endpoint, "otlp_protocol": protocol}
    try:
        with gateway(configured(fake_expert[0], tmp_path, tracing=tracing)) as (client, _):
            assert ask(client, "sk-alice", "what is this symptom?").status_code == 200
    finally:
        collector.shutdown()
    request = ExportTraceServiceRequest()
    for content_type, body in received:
        if content_type == "application/json":  # OTLP/JSON writes ids in hex where protobuf's JSON mapping has base64
            document = json.loads(body)
            for resource in document["resourceSpans"]:
                for scope in resource["scopeSpans"]:
                    for span in scope["spans"]:
                        for field in ("traceId", "spanId", "parentSpanId"):
                            if field in span:
                                span[field] = base64.b64encode(bytes.fromhex(span[field])).decode()
            part = json_format.ParseDict(document, ExportTraceServiceRequest())
        else:
            assert content_type == "application/x-protobuf"
            part = ExportTraceServiceRequest.FromString(body)
        request.resource_spans.extend(part.resource_spans)
    spans = {s.name: s for r in request.resource_spans for scope in r.scope_spans for s in scope.spans}
    assert {"POST /v1/chat/completions", "route", "expert medical"} <= set(spans)
    server, route = spans["POST /v1/chat/completions"], spans["route"]
    assert route.parent_span_id == server.span_id and route.trace_id == server.trace_id
    assert server.kind == 2 and spans["expert medical"].kind == 3  # SERVER, CLIENT
    attributes = {a.key: a.value for a in route.attributes}
    assert attributes["expertmesh.domain"].string_value == "medical"
    assert attributes["expertmesh.confidence"].double_value == pytest.approx(0.88)
    service = {a.key: a.value.string_value for r in request.resource_spans for a in r.resource.attributes}
    assert service["service.name"] == "expertmesh-gateway"
