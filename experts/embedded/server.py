"""An OpenAI-compatible HTTP server for the embedded model, shaped like vLLM's.

It runs in its own process (see process.py) so that generation, which keeps the CPU
busy, never stalls the gateway's event loop, and so the gateway talks to it exactly as
it talks to a vLLM server.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from expertmesh.messages import message_text
from expertmesh.experts.embedded.model import EmbeddedChatModel, Generation, SamplingParams


class _Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class _ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # like vLLM: unknown sampling fields are ignored

    model: str
    messages: Annotated[list[_Message], Field(min_length=1)]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


def _sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class EmbeddedServer:
    def __init__(self, model: EmbeddedChatModel, served_model_names: list[str], max_tokens_limit: int) -> None:
        self.model = model
        self.names = served_model_names
        self.max_tokens_limit = max_tokens_limit

    def _params(self, request: _ChatRequest) -> SamplingParams:
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        max_tokens = request.max_completion_tokens or request.max_tokens or 256
        return SamplingParams(
            max_tokens=min(max_tokens, self.max_tokens_limit),
            temperature=request.temperature,
            top_p=request.top_p,
            stop=stop,
            seed=request.seed,
            top_logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        )

    def _check(self, request: _ChatRequest) -> JSONResponse | None:
        if request.model not in self.names:
            return _error(404, f"The model `{request.model}` does not exist. Served: {self.names}", "NotFoundError")
        if request.logprobs and request.stream:
            return _error(400, "logprobs are supported without stream only by the embedded backend")
        if request.top_logprobs and not request.logprobs:
            return _error(400, "top_logprobs needs logprobs: true")
        media = sorted({part.get("type", "?") for m in request.messages if isinstance(m.content, list)
                        for part in m.content if part.get("type") != "text"})  # fmt: skip
        if media:  # answering from the text alone would pretend to have seen them
            return _error(400, f"SmolLM2 reads text only; this request has {', '.join(media)} content parts")
        return None

    async def complete(self, request: _ChatRequest) -> Response:
        if (problem := self._check(request)) is not None:
            return problem
        messages = [{"role": m.role if m.role != "developer" else "system", "content": message_text(m.content)}
                    for m in request.messages]
        params = self._params(request)
        cancel, result = threading.Event(), Generation()
        deltas = self.model.stream(messages, params, cancel, result)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if request.stream:
            include_usage = bool((request.stream_options or {}).get("include_usage"))
            body = self._stream(deltas, cancel, result, request_id, created, request.model, include_usage)
            return StreamingResponse(body, media_type="text/event-stream")
        text = "".join(await asyncio.to_thread(list, deltas))
        return JSONResponse(
            {
                "id": request_id,
                "object": "chat.completion",
                "created": created,
                "model": request.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": {"content": result.logprobs} if result.logprobs is not None else None,
                        "finish_reason": result.finish_reason,
                    }
                ],
                "usage": _usage(result),
            }
        )

    async def _stream(self, deltas, cancel, result, request_id, created, model, include_usage):
        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            return {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }

        done = object()
        try:
            yield _sse(chunk({"role": "assistant", "content": ""}))
            while (delta := await asyncio.to_thread(next, deltas, done)) is not done:
                yield _sse(chunk({"content": delta}))
            yield _sse(chunk({}, result.finish_reason))
            if include_usage:
                yield _sse({**chunk({}), "choices": [], "usage": _usage(result)})
            yield b"data: [DONE]\n\n"
        finally:
            cancel.set()  # the client went away or we are done: stop the generation thread
            await asyncio.to_thread(deltas.close)


def _usage(result: Generation) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def build_embedded_app(server: EmbeddedServer) -> FastAPI:
    app = FastAPI(title="expertmesh embedded expert")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return _error(400, f"{where}: {first['msg']}" if where else first["msg"])

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        created = int(time.time())
        data = [{"id": n, "object": "model", "created": created, "owned_by": "expertmesh"} for n in server.names]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: _ChatRequest) -> Response:
        return await server.complete(request)

    return app
