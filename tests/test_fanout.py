"""Several experts for one request: dynamic top-p, fan-out (concurrency, time-outs, partial
failure, ordering, cancellation), aggregation strategies, decomposition; fake experts on
127.0.0.1, and one test with the real embedded model."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

import httpx
import numpy as np
import pytest

from expertmesh.config import Config
from expertmesh.experts.fanout import Assignment, ask_experts
from expertmesh.experts.pool import ExpertPool
from expertmesh.gateway.app import build_app
from expertmesh.router.decompose import decompose, split_parts
from expertmesh.router.policy import RoutingPolicy
from expertmesh.router.top_p import select_experts
from tests.conftest import DOMAINS, KeywordClassifier, fake_config, serve_in_thread

EXPERT_FOR_DOMAIN = {d: d for d in DOMAINS if d != "science"} | {"science": "general"}


class SplitClassifier(KeywordClassifier):
    """Shares the probability between every keyword found: 'symptom' and 'tax' -> medical and
    finance at 0.45 each (the first named gets 0.05 more, so the order is known)."""

    def predict_proba(self, texts: Sequence[str], contexts: Sequence[str] | None = None) -> np.ndarray:
        rows = []
        for text in texts:
            hits = sorted((text.lower().find(word), domain) for domain, word in self.KEYWORDS.items() if word in text.lower())
            row = np.full(len(self.labels), 0.01)
            if not hits:
                row[self.labels.index("general")] = 0.6
            for rank, (_, domain) in enumerate(hits):
                row[self.labels.index(domain)] = (0.93 - 0.01 * len(self.labels)) / len(hits) + (0.05 if rank == 0 and len(hits) > 1 else 0)
            rows.append(row / row.sum())
        return np.array(rows)


def test_top_p_takes_one_expert_when_confident_and_more_when_not():
    assert select_experts({"medical": 0.9, "legal": 0.1}, EXPERT_FOR_DOMAIN, 0.8, 3) == [("medical", 0.9)]
    assert select_experts({"medical": 0.5, "legal": 0.4, "math": 0.1}, EXPERT_FOR_DOMAIN, 0.8, 3) == [
        ("medical", 0.5), ("legal", 0.4)]  # fmt: skip
    assert len(select_experts({d: 1 / 7 for d in DOMAINS}, EXPERT_FOR_DOMAIN, 0.99, 3)) == 3  # capped at k
    # science and general share the general expert: their probabilities add up.
    assert select_experts({"science": 0.45, "general": 0.4, "math": 0.15}, EXPERT_FOR_DOMAIN, 0.8, 3) == [("general", 0.85)]


def test_decomposition_splits_only_across_experts():
    policy = RoutingPolicy(KeywordClassifier(), config_with())
    parts = decompose(policy, "I have a symptom on my arm. Also, how much tax do I owe on my bonus?")
    assert [(p.expert, p.text) for p in parts] == [
        ("medical", "I have a symptom on my arm."), ("finance", "Also, how much tax do I owe on my bonus?")]  # fmt: skip
    assert decompose(policy, "I have a symptom on my arm. It is a red symptom, quite large.") == []  # one expert
    assert decompose(policy, "What is the tax on a symptom?") == []  # one sentence
    assert split_parts("Short. And a real question here?") == ["And a real question here?"]


def config_with(url: str = "http://127.0.0.1:9/v1", **fanout) -> Config:
    base = fake_config(url)
    return base.model_copy(update={"fanout": base.fanout.model_copy(update={"enabled": True, **fanout})})


@pytest.fixture()
def fanout_gateway(fake_expert):
    """A gateway over the fake experts with fan-out on; yields (url, fake app, make(config overrides))."""
    url, fake = fake_expert
    fake.state.per_model = {}

    def make(**fanout):
        config = config_with(url, **fanout)
        return serve_in_thread(build_app(config, RoutingPolicy(SplitClassifier(), config), ExpertPool(config)))

    yield url, fake, make
    fake.state.per_model = {}


CROSS = "I have a symptom after surgery: what tax deductions apply?"  # medical 0.5, finance 0.45


def ask(url: str, content: str = CROSS, **fields) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": content}], **fields}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def test_experts_are_asked_concurrently_and_listed_in_score_order(fanout_gateway):
    _, fake, make = fanout_gateway
    fake.state.per_model = {"medical-model": {"delay": 0.6}, "finance-model": {"delay": 0.3}}
    with make(strategy="all") as url:
        start = time.perf_counter()
        response = ask(url)
        elapsed = time.perf_counter() - start
    assert response.status_code == 200, response.text
    assert elapsed < 1.1, f"{elapsed:.2f} s: the experts were not asked at the same time"
    body = response.json()
    content = body["choices"][0]["message"]["content"]
    assert content.index("**medical**") < content.index("**finance**")  # score order, not finish order
    experts = body["expertmesh"]["fanout"]["experts"]
    assert [(e["expert"], e["status"]) for e in experts] == [("medical", "answered"), ("finance", "answered")]
    assert experts[0]["latency_ms"] >= 550 and experts[0]["score"] > experts[1]["score"]
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] > 0


def test_a_slow_or_failing_expert_is_dropped_and_reported(fanout_gateway):
    _, fake, make = fanout_gateway
    fake.state.per_model = {"finance-model": {"delay": 5}}
    # 1.5 s: long enough that the fast expert always answers on a busy machine (0.5 s was not).
    with make(strategy="best", expert_timeout_s=1.5) as url:
        start = time.perf_counter()
        response = ask(url)
        assert time.perf_counter() - start < 4, "the slow expert was waited for"
    assert response.status_code == 200, response.text
    body = response.json()
    finance = next(e for e in body["expertmesh"]["fanout"]["experts"] if e["expert"] == "finance")
    assert finance["status"] == "dropped" and "no answer within 1.5 s" in finance["reason"]
    assert body["choices"][0]["message"]["content"].startswith("[medical-model]")
    fake.state.per_model = {"medical-model": {"status": 500}}
    with make(strategy="best") as url:
        body = ask(url).json()
    medical = body["expertmesh"]["fanout"]["experts"][0]
    assert medical["status"] == "dropped" and "500" in medical["reason"]
    assert body["choices"][0]["message"]["content"].startswith("[finance-model]")


def test_the_request_fails_only_when_every_expert_fails(fanout_gateway):
    _, fake, make = fanout_gateway
    fake.state.per_model = {"medical-model": {"status": 500}, "finance-model": {"status": 503}}
    with make() as url:
        response = ask(url)
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "every expert failed" in message and "medical" in message and "finance" in message


def test_synthesis_gets_every_answer_with_attribution(fanout_gateway):
    _, fake, make = fanout_gateway
    fake.state.per_model = {"medical-model": {"answer": "Rest the arm."}, "finance-model": {"answer": "Deduct it."}}
    with make(strategy="synthesize") as url:
        body = ask(url).json()
    assert body["expertmesh"]["fanout"]["aggregator"] == "general"
    prompt = fake.state.requests[-1]["messages"][-1]["content"]
    assert fake.state.requests[-1]["model"] == "general-model"
    assert "[medical expert]\nRest the arm." in prompt and "[finance expert]\nDeduct it." in prompt and CROSS in prompt
    assert body["choices"][0]["message"]["content"].startswith("[general-model]")


@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_aggregator_hands_the_synthesis_to_its_fallback(fake_expert, stream):
    url, fake = fake_expert
    fake.state.per_model = {"general-model": {"status": 500}}
    try:
        config = config_with(url, strategy="synthesize", aggregator="general")
        experts = [e.model_copy(update={"fallbacks": ["math"]}) if e.name == "general" else e for e in config.experts]
        config = config.model_copy(update={"experts": experts})
        app = build_app(config, RoutingPolicy(SplitClassifier(), config), ExpertPool(config))
        with serve_in_thread(app) as gateway:
            response = ask(gateway, stream=stream)
    finally:
        fake.state.per_model = {}
    assert response.status_code == 200
    if stream:
        chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    else:
        text = response.json()["choices"][0]["message"]["content"]
    assert text.startswith("[math-model]") and "[medical expert]" in text


def test_streamed_synthesis_names_the_experts_first(fanout_gateway):
    _, _, make = fanout_gateway
    with make(strategy="synthesize") as url:
        body = {"model": "auto", "messages": [{"role": "user", "content": CROSS}], "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["expertmesh"]["fanout"]["asked"] == ["medical", "finance"]
    assert [e["status"] for e in chunks[1]["expertmesh"]["fanout"]["experts"]] == ["answered", "answered"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.startswith("[general-model]") and "[medical expert]" in text
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_a_request_can_turn_fanout_on_and_pick_its_strategy(fake_expert):
    url, fake = fake_expert
    config = fake_config(url)  # fan-out off in the config
    with serve_in_thread(build_app(config, RoutingPolicy(SplitClassifier(), config), ExpertPool(config))) as gateway:
        single = ask(gateway).json()
        assert "fanout" not in single["expertmesh"]
        both = ask(gateway, expertmesh={"fanout": True, "strategy": "all", "top_p": 0.9}).json()
        assert [e["expert"] for e in both["expertmesh"]["fanout"]["experts"]] == ["medical", "finance"]
        bad = ask(gateway, expertmesh={"fanout": True, "strategy": "vote"})
        assert bad.status_code == 400 and "strategy" in bad.json()["error"]["message"]
        confident = ask(gateway, content="a symptom on my arm", expertmesh={"fanout": True}).json()
        assert "fanout" not in confident["expertmesh"]  # one expert is enough: the plain path


@pytest.mark.parametrize("stream", [False, True])
def test_each_experts_own_answer_is_reported_only_when_asked_for(fanout_gateway, stream):
    _, _, make = fanout_gateway
    with make(strategy="synthesize") as url:
        plain = ask(url).json()["expertmesh"]["fanout"]["experts"]
        asked = {"fanout": True, "include_answers": True}
        if stream:
            with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=30, json={"model": "auto", "stream": True,
                              "messages": [{"role": "user", "content": CROSS}], "expertmesh": asked}) as response:  # fmt: skip
                events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
            report = next(e["expertmesh"]["fanout"] for e in events if "experts" in e.get("expertmesh", {}).get("fanout", {}))
        else:
            report = ask(url, expertmesh=asked).json()["expertmesh"]["fanout"]
    assert all("text" not in e for e in plain)
    texts = {e["expert"]: e["text"] for e in report["experts"]}
    assert texts["medical"].startswith("[medical-model]") and texts["finance"].startswith("[finance-model]")


def test_decomposed_questions_send_each_expert_its_part(fanout_gateway):
    _, fake, make = fanout_gateway
    with make(strategy="all", decompose=True) as url:
        body = ask(url, "I have a symptom on my arm. Also, how much tax do I owe on my bonus?").json()
    experts = {e["expert"]: e for e in body["expertmesh"]["fanout"]["experts"]}
    assert experts["medical"]["sub_question"] == "I have a symptom on my arm."
    assert experts["finance"]["sub_question"] == "Also, how much tax do I owe on my bonus?"
    sent = {r["model"]: r["messages"][-1]["content"] for r in fake.state.requests[-2:]}
    assert sent["finance-model"].startswith("[finance] Also, how much tax")  # the expert's own template


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_cancels_the_experts_requests(fanout_gateway, stream):
    _, fake, make = fanout_gateway
    fake.state.per_model = {"medical-model": {"delay": 3}, "finance-model": {"delay": 3}}
    before, sent = fake.state.disconnects, len(fake.state.requests)

    def experts_asked() -> bool:
        return len(fake.state.requests) >= sent + 2

    with make(strategy="all") as url:
        body = {"model": "auto", "messages": [{"role": "user", "content": CROSS}], "stream": stream}
        with httpx.Client(timeout=30) as client, client.stream("POST", f"{url}/v1/chat/completions", json=body):
            deadline = time.monotonic() + 2
            while not experts_asked() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert experts_asked()
        # The client has gone: both experts' requests must be dropped long before their 3 s are up.
        deadline = time.monotonic() + 1.5
        while fake.state.disconnects < before + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert fake.state.disconnects == before + 2


def test_cancelling_a_fanout_cancels_every_request_in_flight():
    cancelled = []

    class SlowClient:
        def __init__(self, name):
            self.name, self.config = name, type("C", (), {"timeout_s": 30})()

        def request_body(self, request):
            return request

        async def complete(self, body, deadline=None):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(self.name)
                raise

    class Pool:
        def get(self, name):
            return SlowClient(name)

    async def scenario():
        task = asyncio.create_task(ask_experts(Pool(), [Assignment("a", 0.6, []), Assignment("b", 0.4, [])], {}, 30))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert sorted(cancelled) == ["a", "b"]


@pytest.mark.slow
def test_synthesis_with_the_real_embedded_model(embedded_model):
    from expertmesh.experts.embedded.server import EmbeddedServer, build_embedded_app

    server = EmbeddedServer(embedded_model, ["smollm2-135m-instruct"], 256)
    with serve_in_thread(build_embedded_app(server)) as embedded_url:
        config = fake_config(f"{embedded_url}").model_copy(deep=True)
        experts = [e.model_copy(update={"model": "smollm2-135m-instruct", "timeout_s": 120}) for e in config.experts]
        config = config_with(embedded_url).model_copy(update={"experts": experts})
        config = config.model_copy(update={"fanout": config.fanout.model_copy(update={"expert_timeout_s": 120})})
        with serve_in_thread(build_app(config, RoutingPolicy(SplitClassifier(), config), ExpertPool(config))) as url:
            response = ask(url, "Which symptom means I should see a doctor, and is the visit tax deductible?",
                           max_tokens=24, temperature=0)  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert [e["status"] for e in body["expertmesh"]["fanout"]["experts"]] == ["answered", "answered"]
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] > 0
