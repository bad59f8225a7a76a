"""The expert client (aiohttp) against real servers on 127.0.0.1: what a relay must get right
beyond the happy path, which the gateway tests cover."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from expertmesh.config import ExpertConfig
from expertmesh.experts.client import ExpertClient
from expertmesh.experts.errors import ExpertRejected, ExpertTimeout, ExpertUnavailable
from tests.conftest import free_port, serve_in_thread
from tests.fake_expert import build_fake_app


def _client(base_url: str, model: str = "fake-model", timeout_s: float = 5.0) -> ExpertClient:
    config = ExpertConfig(name="x", domains=["general"], backend=base_url, model=model, timeout_s=timeout_s)
    return ExpertClient(config, [base_url])


def _body(text: str, **extra) -> dict:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture(scope="module")
def fake():
    app = build_fake_app()
    with serve_in_thread(app) as url:
        yield f"{url}/v1", app


async def _read_stream(client: ExpertClient, body: dict, keep: int | None = None) -> list[bytes]:
    lines = []
    async with client.stream(body) as stream:
        async for line in stream:
            lines.append(line)
            if keep is not None and len(lines) >= keep:
                break  # the caller went away mid-stream
    return lines


def test_stream_lines_longer_than_the_read_buffer_pass_whole(fake):
    url, app = fake
    app.state.per_model["long-model"] = {"answer": "x" * 300_000}  # one 300 kB SSE line

    async def run():
        client = _client(url)
        try:
            return await _read_stream(client, _body("long", model="long-model"))
        finally:
            await client.aclose()

    lines = asyncio.run(run())
    contents = [orjson.loads(line[6:])["choices"][0]["delta"].get("content") for line in lines[:-1]]
    assert "x" * 300_000 in contents
    assert lines[-1] == b"data: [DONE]"


def test_an_abandoned_stream_does_not_poison_the_pool(fake):
    url, _ = fake

    async def run():
        client = _client(url)
        try:
            first = await _read_stream(client, _body("[sleep=0.05] one two three four five"), keep=2)
            answers = [await client.complete(_body(f"question {i}")) for i in range(5)]
            whole = await _read_stream(client, _body("after the abandoned one"))
            return first, answers, whole
        finally:
            await client.aclose()

    first, answers, whole = asyncio.run(run())
    assert len(first) == 2
    assert [a["choices"][0]["message"]["content"] for a in answers] == [f"[fake-model] question {i}" for i in range(5)]
    assert whole[-1] == b"data: [DONE]"


def test_cookies_set_by_an_expert_are_not_sent_back():
    # The gateway serves many users over one pool: a cookie one answer sets must never
    # ride along on another user's request.
    app = FastAPI()
    seen: list[str | None] = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        seen.append(request.headers.get("cookie"))
        response = JSONResponse({"choices": [{"message": {"role": "assistant", "content": "ok"}}]})
        response.set_cookie("session", "user-a")
        return response

    async def run(url: str):
        client = _client(url)
        try:
            for _ in range(2):
                await client.complete(_body("hi"))
        finally:
            await client.aclose()

    with serve_in_thread(app) as url:
        asyncio.run(run(f"{url}/v1"))
    assert seen == [None, None]


def test_one_client_serves_successive_event_loops(fake):
    # The pool is built before uvicorn's loop exists, and `eval` runs in its own loop: the
    # session is made in the loop that first uses it, and a closed client opens a new one.
    url, _ = fake
    client = _client(url)

    async def ask(i: int) -> str:
        try:
            return (await client.complete(_body(f"loop {i}")))["choices"][0]["message"]["content"]
        finally:
            await client.aclose()

    assert [asyncio.run(ask(i)) for i in range(2)] == ["[fake-model] loop 0", "[fake-model] loop 1"]


def test_errors_are_translated(fake):
    url, _ = fake

    async def expect(client: ExpertClient, body: dict, error: type) -> str:
        with pytest.raises(error) as caught:
            await client.complete(body)
        await client.aclose()
        return str(caught.value)

    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    assert "cannot reach" in asyncio.run(expect(_client(down), _body("hi"), ExpertUnavailable))
    assert "did not answer in time" in asyncio.run(
        expect(_client(url, timeout_s=0.2), _body("[sleep=2] hi"), ExpertTimeout)
    )
    assert "fake failure 422" in asyncio.run(expect(_client(url), _body("[status=422] hi"), ExpertRejected))

    async def stream_rejected():
        client = _client(url)
        try:
            with pytest.raises(ExpertRejected, match="fake failure 400"):
                await _read_stream(client, _body("[status=400] hi", stream=True))
        finally:
            await client.aclose()

    asyncio.run(stream_rejected())


def test_health_reports_served_models(fake):
    url, _ = fake

    async def run(model: str):
        client = _client(url, model=model)
        try:
            return await client.is_healthy()
        finally:
            await client.aclose()

    assert asyncio.run(run("fake-model")) == (True, "ok")
    ok, why = asyncio.run(run("other-model"))
    assert not ok and "does not serve model 'other-model'" in why


def test_http_proxy_from_the_environment_is_used_unless_no_proxy_names_the_host(fake, monkeypatch):
    # Like curl and httpx: HTTP_PROXY carries the request (here the fake expert plays the proxy,
    # so an answer proves the proxy was used: nothing listens at the expert's own address).
    proxy_url, _ = fake
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("HTTP_PROXY", proxy_url.removesuffix("/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async def ask() -> dict:
        client = _client(nowhere)
        try:
            return await client.complete(_body("through the proxy"))
        finally:
            await client.aclose()

    assert asyncio.run(ask())["choices"][0]["message"]["content"] == "[fake-model] through the proxy"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pytest.raises(ExpertUnavailable):
        asyncio.run(ask())


def test_idle_connections_are_reused_then_dropped_before_the_server_drops_them(monkeypatch):
    app = FastAPI()
    ports: list[int] = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        ports.append(request.client.port)
        return JSONResponse({"choices": [{"message": {"role": "assistant", "content": "ok"}}]})

    monkeypatch.setattr("expertmesh.experts.client.KEEPALIVE_S", 0.3)

    async def run(url: str) -> None:
        client = _client(url)
        try:
            await client.complete(_body("one"))
            await client.complete(_body("two"))  # at once: the same connection
            await asyncio.sleep(0.6)  # idle past the keep-alive: a new connection
            await client.complete(_body("three"))
        finally:
            await client.aclose()

    with serve_in_thread(app) as url:
        asyncio.run(run(f"{url}/v1"))
    assert ports[0] == ports[1] != ports[2]
