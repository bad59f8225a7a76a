"""GET /metrics: Prometheus counters and histograms of what the gateway did, on 127.0.0.1."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import fake_config, running_gateway


def scrape(url: str, **kwargs) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    response = httpx.get(f"{url}/metrics", **kwargs)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def requests_total(samples: dict, **labels: str) -> float:
    return samples.get(("expertmesh_requests_total", tuple(sorted(labels.items()))), 0.0)


def chat(url: str, content: str, model: str = "auto", **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)


def test_requests_errors_and_routing_are_counted(fake_expert):
    with running_gateway(fake_config(fake_expert[0])) as url:
        assert chat(url, "is this a tax question?").status_code == 200  # routed: finance
        assert chat(url, "a python question", stream=True).status_code == 200  # routed: code, streamed
        assert chat(url, "hello there").status_code == 200  # low confidence: fallback expert
        assert chat(url, "anything", model="legal").status_code == 200  # named expert
        assert chat(url, "tax [status=500]").status_code == 502  # the expert fails
        assert chat(url, "hi", model="gpt-17").status_code == 404  # no expert: not an expert's request

        samples = scrape(url)
        assert requests_total(samples, expert="finance", routed_by="router", status="200") == 1
        assert requests_total(samples, expert="code", routed_by="router", status="200") == 1
        assert requests_total(samples, expert="general", routed_by="fallback", status="200") == 1
        assert requests_total(samples, expert="legal", routed_by="explicit", status="200") == 1
        assert requests_total(samples, expert="finance", routed_by="router", status="502") == 1
        assert samples[("expertmesh_expert_errors_total", (("expert", "finance"), ("kind", "failed")))] == 1
        assert samples[("expertmesh_routing_seconds_count", ())] == 4  # the four auto requests
        assert samples[("expertmesh_routing_confidence_count", ())] == 4
        assert samples[("expertmesh_expert_seconds_count", (("expert", "code"), ("stream", "yes")))] == 1
        assert samples[("expertmesh_expert_seconds_count", (("expert", "finance"), ("stream", "no")))] == 1


def test_metrics_need_the_api_key_when_keys_are_configured(fake_expert):
    with running_gateway(fake_config(fake_expert[0], api_keys=["sk-test"])) as url:
        assert httpx.get(f"{url}/metrics").status_code == 401
        samples = scrape(url, headers={"authorization": "Bearer sk-test"})
        assert requests_total(samples, expert="finance", routed_by="router", status="200") == 0
