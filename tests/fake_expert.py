"""A fake OpenAI-compatible expert server for tests and benchmarks.

Its behaviour is steered by markers in the last user message:
  [sleep=S]     wait S seconds before answering (between chunks when streaming)
  [status=N]    answer with HTTP status N and an OpenAI error body
Otherwise it answers "[<model>] <last user message>" and reports the messages it got
in an extra `received_messages` field, so tests can check the prompt reformatting.

Run standalone: python tests/fake_expert.py --port 9100 [--model NAME ...]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

SLEEP = re.compile(r"\[sleep=([0-9.]+)\]")
STATUS = re.compile(r"\[status=([0-9]{3})\]")


def _last_user(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content or [])
    return ""


def build_fake_app(models: list[str] | None = None, delay_s: float = 0.0) -> FastAPI:
    """delay_s: a delay for every answer without its own [sleep=S] marker."""
    app = FastAPI()
    app.state.requests = []  # every body received, for assertions
    app.state.per_model = {}  # model -> {"delay": s, "status": code, "answer": text}: set by tests
    app.state.disconnects = 0  # requests whose client went away while the fake was still "thinking"

    @app.get("/health")
    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> dict:
        served = models or ["fake-model"]
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in served]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        app.state.requests.append(body)
        query = _last_user(body["messages"])
        rule = app.state.per_model.get(body.get("model"), {})
        if rule.get("status") or (status := STATUS.search(query)):
            code = int(rule.get("status") or status.group(1))
            return JSONResponse({"error": {"message": f"fake failure {code}", "type": "fake", "code": code}}, code)
        delay = float(SLEEP.search(query).group(1)) if SLEEP.search(query) else rule.get("delay", delay_s)
        answer = rule.get("answer") or f"[{body['model']}] {query}"
        usage = {"prompt_tokens": 7, "completion_tokens": len(answer.split()), "total_tokens": 7 + len(answer.split())}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_stream(body["model"], answer, delay, usage if include_usage else None),
                                     media_type="text/event-stream")
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:  # sleep, but notice a client that gives up
            await asyncio.sleep(min(0.02, max(deadline - time.monotonic(), 0)))
            if await request.is_disconnected():
                app.state.disconnects += 1
                return Response(status_code=499)
        return JSONResponse({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "logprobs": None,
                         "finish_reason": "stop"}],
            "usage": usage,
            "received_messages": body["messages"],
        })  # fmt: skip

    return app


async def _stream(model: str, answer: str, delay: float, usage: dict | None):
    def chunk(delta: dict, finish: str | None = None) -> bytes:
        payload = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}  # fmt: skip
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    words = answer.split(" ")
    for i, word in enumerate(words):
        await asyncio.sleep(delay)
        yield chunk({"content": word if i == 0 else " " + word})
    yield chunk({}, "stop")
    if usage:
        yield b"data: " + orjson.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                                         "model": model, "choices": [], "usage": usage}) + b"\n\n"  # fmt: skip
    yield b"data: [DONE]\n\n"


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--model", action="append", dest="models")
    args = parser.parse_args()
    uvicorn.run(build_fake_app(args.models), host=args.host, port=args.port, log_level="warning")
