"""The UI's server side: the pages and their files, and GET /v1/traffic (the dashboard's figures),
on a real gateway over the fake expert with a real SQLite decision log. The pages themselves
are driven in a real Chromium by tests/test_ui_browser.py."""

from __future__ import annotations

import re
import time

import pytest

from expertmesh.gateway import traffic
from expertmesh.gateway.ui import UI_DIR
from tests.test_keys_and_log import ask, configured, gateway, logged

ALICE = {"authorization": "Bearer sk-alice"}
OPS = {"name": "ops", "key": "sk-ops", "traffic": "all"}


def keys_with_ops(fake_url, tmp_path, **sections):
    from tests.test_keys_and_log import KEYS

    return configured(fake_url, tmp_path, gateway={"keys": [*KEYS, OPS]}, **sections)


def referenced_files(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', html)


def test_the_pages_and_every_file_they_load_are_served_without_a_key(fake_expert, tmp_path):
    with gateway(keys_with_ops(fake_expert[0], tmp_path)) as (client, _):
        assert client.get("/").headers["location"] == "/ui"
        for page in ("/ui", "/ui/traffic"):
            response = client.get(page)
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in response.headers["content-security-policy"]
            assert response.headers["x-content-type-options"] == "nosniff"
            files = referenced_files(response.text)
            assert any(f.endswith(".js") for f in files) and any(f.endswith(".css") for f in files)
            for path in files:
                assert client.get(path).status_code == 200, path
        # the scripts' own imports resolve too
        for script in (UI_DIR / "static").glob("*.js"):
            for name in re.findall(r'from "\./([^"]+)"', script.read_text()):
                assert client.get(f"/ui/static/{name}").status_code == 200, (script.name, name)
        assert client.get("/ui/static/../app.py").status_code == 404


def test_the_ui_can_be_turned_off(fake_expert, tmp_path):
    with gateway(configured(fake_expert[0], tmp_path, gateway={"ui": False})) as (client, _):
        assert client.get("/ui").status_code == 404 and client.get("/ui/static/ui.css").status_code == 404


def test_the_pages_load_nothing_from_elsewhere():
    """Offline: every URL in the pages and scripts is the gateway's own (the SVG namespace aside)."""
    for path in UI_DIR.rglob("*"):
        if path.suffix in (".html", ".js", ".css"):
            external = set(re.findall(r"https?://[^\s\"'`)]+", path.read_text())) - {"http://www.w3.org/2000/svg"}
            assert not external, (path.name, external)


def test_inline_scripts_and_styles_are_absent_so_the_policy_can_forbid_them():
    for page in UI_DIR.glob("*.html"):
        html = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), page.name
        assert not re.search(r"<style|<[^>]*\s(style|on[a-z]+)=", html), page.name


def test_traffic_needs_a_key_and_shows_a_key_only_its_own_requests(fake_expert, tmp_path):
    with gateway(keys_with_ops(fake_expert[0], tmp_path)) as (client, app):
        assert ask(client, "sk-alice", "a symptom of flu").status_code == 200
        assert ask(client, "sk-bob", "python lists").status_code == 200
        logged(app, tmp_path, 2)
        assert client.get("/v1/traffic").status_code == 401
        own = client.get("/v1/traffic", headers=ALICE).json()
        assert own["scope"] == "key alice" and own["totals"]["requests"] == 1
        assert [e["expert"] for e in own["experts"]] == ["medical"]
        everything = client.get("/v1/traffic", headers={"authorization": "Bearer sk-ops"}).json()
        assert everything["scope"] == "all keys" and everything["totals"]["requests"] == 2
        only_bob = client.get("/v1/traffic", params={"key": "bob"}, headers={"authorization": "Bearer sk-ops"}).json()
        assert [e["expert"] for e in only_bob["experts"]] == ["code"]
        peek = client.get("/v1/traffic", params={"key": "bob"}, headers=ALICE)
        assert peek.status_code == 403 and peek.json()["error"]["code"] == "traffic_not_allowed"


def test_traffic_figures_from_the_log(fake_expert, tmp_path):
    config = keys_with_ops(fake_expert[0], tmp_path, log={"store_text": True})
    with gateway(config) as (client, app):
        for text in ("a symptom of flu", "another symptom", "a contract question", "hello there"):
            assert ask(client, "sk-alice", text).status_code == 200
        assert ask(client, "sk-alice", "a symptom [status=500]").status_code >= 500  # every expert asked fails
        assert ask(client, "sk-alice", "a symptom", model="nope").status_code == 404
        route = client.post("/v1/route", headers=ALICE, json={"text": "my contract"})
        assert route.status_code == 200
        rows = logged(app, tmp_path, 7)
        rated = next(
            r["request_id"] for r in rows if r["domain"] == "legal" and r["endpoint"] == "/v1/chat/completions"
        )
        feedback = client.post(
            "/v1/feedback", headers=ALICE, json={"request_id": rated, "rating": -1, "domain": "finance"}
        )
        assert feedback.status_code == 200
        report = client.get("/v1/traffic", headers=ALICE, params={"window": "15m", "buckets": 6}).json()

    totals = report["totals"]
    assert totals["requests"] == 6 and totals["route_only"] == 1  # the route-only request is counted apart
    assert totals["fallbacks"] == 1 and totals["fallback_rate"] == pytest.approx(1 / 6, abs=1e-4)  # "hello there"
    assert totals["client_errors"] == 1 and totals["server_errors"] == 1
    by_expert = {e["expert"]: e for e in report["experts"]}
    assert by_expert["medical"]["requests"] == 3 and by_expert["medical"]["server_errors"] == 1
    assert (
        by_expert["medical"]["p50_ms"] is not None and by_expert["medical"]["p95_ms"] >= by_expert["medical"]["p50_ms"]
    )
    assert sum(e["share"] for e in report["experts"]) == pytest.approx(1, abs=0.01)
    series = report["series"]
    assert series["bucket_s"] == 300 and len(series["starts"]) in (3, 4)  # 15 minutes in 5-minute buckets
    assert sum(series["experts"]["medical"]) == 3
    # KeywordClassifier: 0.88 for a keyword's domain (the 9th tenth), 0.30 for general without one
    assert report["confidence"]["domains"]["medical"][8] == 3 and report["confidence"]["domains"]["general"][3] == 1
    least = report["least_confident"]
    assert least[0]["text"] == "hello there" and least[0]["confidence"] == pytest.approx(0.3)
    assert all(r["endpoint"] != "/v1/route" for r in least)
    assert report["feedback"] == {"good": 0, "neutral": 0, "bad": 1, "corrections": 1}
    assert report["threshold"] == 0.5 and report["domains"][0] == "medical"


def test_traffic_keeps_texts_out_unless_the_log_keeps_them(fake_expert, tmp_path):
    with gateway(keys_with_ops(fake_expert[0], tmp_path)) as (client, app):
        ask(client, "sk-alice", "a symptom")
        logged(app, tmp_path, 1)
        report = client.get("/v1/traffic", headers=ALICE).json()
    assert report["least_confident"][0]["text"] is None


@pytest.mark.parametrize(
    "params", [{"window": "2h"}, {"buckets": 2}, {"until": "nan"}, {"until": "-5"}, {"buckets": "x"}]
)
def test_bad_traffic_queries_are_400s_that_name_the_parameter(fake_expert, tmp_path, params):
    with gateway(keys_with_ops(fake_expert[0], tmp_path)) as (client, _):
        response = client.get("/v1/traffic", headers=ALICE, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("invalid request")


def test_traffic_with_the_log_off_says_so(fake_expert, tmp_path):
    with gateway(configured(fake_expert[0], tmp_path, log={"enabled": False})) as (client, _):
        response = client.get("/v1/traffic", headers=ALICE)
    assert response.status_code == 409 and response.json()["error"]["code"] == "log_disabled"


def test_buckets_are_round_widths_and_a_request_lands_in_its_own():
    query = traffic.TrafficQuery("24h", until=1_000_000.0, buckets=48, key_name=None)
    assert query.bucket_s == 1800
    assert traffic.TrafficQuery("7d", 1.0, 48, None).bucket_s == 21600  # 28 six-hour buckets
    row = traffic.Row(query.until - 1, "/v1/chat/completions", "legal", "legal", 0.9, "router", False, 5.0, 1, 1, 200)
    old = traffic.Row(query.since + 1, "/v1/chat/completions", "legal", "legal", 0.9, "router", False, 5.0, 1, 1, 200)
    counts = traffic.series([row, old], query)["experts"]["legal"]
    assert counts[-1] == 1 and counts[0] == 1 and sum(counts) == 2
    assert traffic._answered_by("medical", "medical,finance") == traffic.FANOUT


def test_a_window_of_more_than_max_rows_says_it_is_truncated(fake_expert, tmp_path, monkeypatch):
    monkeypatch.setattr(traffic, "MAX_ROWS", 2)
    with gateway(keys_with_ops(fake_expert[0], tmp_path)) as (client, app):
        for _ in range(3):
            ask(client, "sk-alice", "a symptom")
        logged(app, tmp_path, 3)
        report = client.get("/v1/traffic", headers=ALICE).json()
    assert report["truncated"] is True and report["totals"]["requests"] == 2


def test_the_route_decision_carries_its_threshold(fake_expert, tmp_path):
    with gateway(keys_with_ops(fake_expert[0], tmp_path)) as (client, _):
        decision = client.post("/v1/route", headers=ALICE, json={"text": "hello"}).json()
    assert decision["threshold"] == 0.5 and decision["routed_by"] == "fallback" and decision["confidence"] < 0.5


def test_the_dashboard_reads_what_was_just_answered(fake_expert, tmp_path):
    """The endpoint writes the log's queue first: a request answered a moment ago is counted."""
    config = keys_with_ops(fake_expert[0], tmp_path, log={"flush_interval_s": 5})
    with gateway(config) as (client, _):
        ask(client, "sk-alice", "a symptom")
        time.sleep(0.05)  # the record is queued once the response has gone out
        report = client.get("/v1/traffic", headers=ALICE).json()
    assert report["totals"]["requests"] == 1


def test_the_traffic_endpoint_is_in_the_openapi_document(fake_expert, tmp_path):
    with gateway(keys_with_ops(fake_expert[0], tmp_path)) as (client, _):
        document = client.get("/openapi.json").json()
    operation = document["paths"]["/v1/traffic"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"window", "until", "buckets", "key"}
    assert "/ui" not in document["paths"]
