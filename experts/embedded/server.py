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

from expertmesh.experts.embedded.model import EmbeddedChatModel, Generation, SamplingParams
from expertmesh.messages import message_text


class _Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # like vLLM: unknown sampling fields are ignored

    model: str
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)


class _ChatRequest(_Sampling):
    messages: Annotated[list[_Message], Field(min_length=1)]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class _CompletionRequest(_Sampling):
    """The legacy completions API: a raw prompt, continued as it is (no chat template)."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: int | None = Field(default=None, ge=1)  # unset: 16, the API's default (as vLLM's)
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


def _sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class EmbeddedServer:
    def __init__(self, model: EmbeddedChatModel, served_model_names: list[str], max_tokens_limit: int) -> None:
        self.model = model
        self.names = served_model_names
        self.max_tokens_limit = max_tokens_limit

    def _params(self, request: _Sampling, max_tokens: int, top_logprobs: int | None = None) -> SamplingParams:
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        return SamplingParams(
            max_tokens=min(max_tokens, self.max_tokens_limit),
            temperature=request.temperature,
            top_p=request.top_p,
            stop=stop,
            seed=request.seed,
            top_logprobs=top_logprobs,
        )

    def _check(self, request: _ChatRequest) -> JSONResponse | None:
        if request.model not in self.names:
            return self._unknown_model(request.model)
        if request.logprobs and request.stream:
            return _error(400, "logprobs are supported without stream only by the embedded backend")
        if request.top_logprobs and not request.logprobs:
            return _error(400, "top_logprobs needs logprobs: true")
        media = sorted({part.get("type", "?") for m in request.messages if isinstance(m.content, list)
                        for part in m.content if part.get("type") != "text"})  # fmt: skip
        if media:  # answering from the text alone would pretend to have seen them
            return _error(400, f"SmolLM2 reads text only; this request has {', '.join(media)} content parts")
        return None

    def _unknown_model(self, model: str) -> JSONResponse:
        return _error(404, f"The model `{model}` does not exist. Served: {self.names}", "NotFoundError")

    async def complete(self, request: _ChatRequest) -> Response:
        """POST /v1/chat/completions."""
        if (problem := self._check(request)) is not None:
            return problem
        messages = [{"role": m.role if m.role != "developer" else "system", "content": message_text(m.content)}
                    for m in request.messages]
        top_logprobs = (request.top_logprobs or 0) if request.logprobs else None
        params = self._params(request, request.max_completion_tokens or request.max_tokens or 256, top_logprobs)
        run = _Run(self.model, params, messages=messages)
        if request.stream:
            return run.stream(
                request,
                "chat.completion.chunk",
                lambda text: {"delta": {"content": text}, "logprobs": None},
                first={"delta": {"role": "assistant", "content": ""}, "logprobs": None},
                last={"delta": {}, "logprobs": None},
            )
        text = await run.text()
        logprobs = {"content": run.result.logprobs} if run.result.logprobs is not None else None
        message = {"role": "assistant", "content": text}
        return run.response(request, "chat.completion", {"message": message, "logprobs": logprobs})

    async def complete_text(self, request: _CompletionRequest) -> Response:
        """POST /v1/completions: the prompt continued as it is."""
        if request.model not in self.names:
            return self._unknown_model(request.model)
        asked = {"logprobs": request.logprobs is not None, "suffix": request.suffix is not None,
                 "best_of": request.best_of not in (None, 1)}  # fmt: skip
        unserved = [name for name, wanted in asked.items() if wanted]
        if unserved:  # each would change the answer's meaning; better refused than ignored
            return _error(400, f"the embedded backend does not serve {', '.join(unserved)} on completions "
                               "(chat completions have logprobs)")  # fmt: skip
        if not request.text:
            return _error(400, "prompt: the prompt is empty; there is nothing to continue")
        run = _Run(self.model, self._params(request, request.max_tokens or 16), prompt=request.text)
        echo = request.text if request.echo else ""
        if request.stream:
            return run.stream(request, "text_completion", lambda text: {"text": text, "logprobs": None},
                              first={"text": echo, "logprobs": None} if echo else None,
                              last={"text": "", "logprobs": None})  # fmt: skip
        text = echo + await run.text()
        return run.response(request, "text_completion", {"text": text, "logprobs": None})


class _Run:
    """One generation, answered whole or streamed as server-sent chunks in the API's shape."""

    def __init__(self, model: EmbeddedChatModel, params: SamplingParams, messages: list[dict] | None = None,
                 prompt: str | None = None) -> None:  # fmt: skip
        self.cancel, self.result = threading.Event(), Generation()
        self.deltas = model.stream(messages, params, self.cancel, self.result, prompt=prompt)
        self.prefix = "chatcmpl" if messages is not None else "cmpl"
        self.id = f"{self.prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    async def text(self) -> str:
        return "".join(await asyncio.to_thread(list, self.deltas))

    def response(self, request: _Sampling, kind: str, choice: dict) -> JSONResponse:
        return JSONResponse({
            "id": self.id, "object": kind, "created": self.created, "model": request.model,
            "choices": [{"index": 0, **choice, "finish_reason": self.result.finish_reason}],
            "usage": _usage(self.result),
        })  # fmt: skip

    def stream(self, request: _Sampling, kind: str, piece, first: dict | None, last: dict) -> StreamingResponse:
        include_usage = bool((request.stream_options or {}).get("include_usage"))
        return StreamingResponse(self._chunks(request.model, kind, piece, first, last, include_usage),
                                 media_type="text/event-stream")  # fmt: skip

    async def _chunks(self, model, kind, piece, first, last, include_usage):
        def chunk(fields: dict, finish_reason: str | None = None) -> dict:
            return {"id": self.id, "object": kind, "created": self.created, "model": model,
                    "choices": [{"index": 0, **fields, "finish_reason": finish_reason}]}  # fmt: skip

        done = object()
        try:
            if first is not None:
                yield _sse(chunk(first))
            while (delta := await asyncio.to_thread(next, self.deltas, done)) is not done:
                yield _sse(chunk(piece(delta)))
            yield _sse(chunk(last, self.result.finish_reason))
            if include_usage:
                yield _sse({**chunk({}), "choices": [], "usage": _usage(self.result)})
            yield b"data: [DONE]\n\n"
        finally:
            self.cancel.set()  # the client went away or we are done: stop the generation thread
            await asyncio.to_thread(self.deltas.close)


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

    @app.post("/v1/completions")
    async def completions(request: _CompletionRequest) -> Response:
        return await server.complete_text(request)

    return app
