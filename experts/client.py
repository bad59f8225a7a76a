"""An async OpenAI-compatible client per expert (what vLLM and the embedded server speak).

It speaks the chat-completions wire format over one httpx connection pool per expert
(HTTP/1.1 keep-alive) and relays responses as raw bytes where possible: the gateway adds its
routing decision to the JSON body and passes stream chunks through unchanged. It does not use
the openai SDK on this path: profiled under load (BENCHMARKS.md, "Gateway speed"), the SDK's
per-request parameter transformation took most of the gateway's own time per request, and a
relay needs none of it (the body is already an OpenAI request).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson

from expertmesh.config import ExpertConfig
from experts.errors import ExpertError, ExpertFailed, ExpertRejected, ExpertTimeout, ExpertUnavailable
from experts.prompts import ExpertPrompt

CONNECT_TIMEOUT_S = 5.0
JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}


def _translate(expert: str, exc: Exception) -> ExpertError:
    if isinstance(exc, ExpertError):
        return exc
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError)):
        return ExpertTimeout(expert, "did not answer in time")
    if isinstance(exc, httpx.TransportError):
        return ExpertUnavailable(expert, f"cannot reach the expert's server ({type(exc).__name__}: {exc})")
    return ExpertFailed(expert, f"unexpected error: {exc!r}")


def _status_error(expert: str, status: int, content: bytes) -> ExpertError:
    detail = _error_message(content) or f"HTTP {status}"
    if 400 <= status < 500:
        return ExpertRejected(expert, detail, status)
    return ExpertFailed(expert, f"the expert's server answered {status}: {detail}")


def _error_message(content: bytes) -> str:
    """The message of an OpenAI-style error body ({"error": {"message": ...}}), or its text."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content.decode(errors="replace").strip()[:300]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if body.get("message"):
            return str(body["message"])
        if body.get("detail"):
            return str(body["detail"])
    return content.decode(errors="replace").strip()[:300]


class ExpertClient:
    """Talks to one expert's OpenAI-compatible server; one connection pool per expert."""

    def __init__(self, config: ExpertConfig, base_url: str) -> None:
        self.config = config
        self.name = config.name
        self.base_url = base_url
        self.prompt = ExpertPrompt(config)
        headers = dict(JSON_HEADERS)
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        # No retries: a retry would double the latency of a slow expert; the caller decides.
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self._defaults = config.generation.model_dump(exclude_none=True)

    def request_body(self, request: dict[str, Any], domain: str | None = None) -> dict[str, Any]:
        """The body for this expert: its model, its prompt format, its generation defaults."""
        body = {**self._defaults, **{k: v for k, v in request.items() if v is not None}}
        if "max_completion_tokens" in body:
            body.pop("max_tokens", None)  # an explicit request value wins over our default
        body["model"] = self.config.model
        body["messages"] = self.prompt.format(request["messages"], domain)
        return body

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming chat completion, as the JSON object the server returned."""
        try:
            async with asyncio.timeout(self.config.timeout_s):
                response = await self._client.post("chat/completions", content=orjson.dumps({**body, "stream": False}))
        except Exception as exc:
            raise _translate(self.name, exc) from exc
        if response.status_code >= 400:
            raise _status_error(self.name, response.status_code, response.content)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ExpertFailed(self.name, "answered with a body that is not JSON") from exc

    @asynccontextmanager
    async def stream(self, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open a streaming completion; the connection and the status are checked on entry,
        so errors before the first chunk can still become an HTTP error status."""
        request = self._client.build_request("POST", "chat/completions", content=orjson.dumps({**body, "stream": True}))
        try:
            response = await self._client.send(request, stream=True)
        except Exception as exc:
            raise _translate(self.name, exc) from exc
        try:
            if response.status_code >= 400:
                raise _status_error(self.name, response.status_code, await response.aread())
            yield self._lines(response)
        except httpx.HTTPError as exc:
            raise _translate(self.name, exc) from exc
        finally:
            await response.aclose()

    async def _lines(self, response: httpx.Response) -> AsyncIterator[bytes]:
        try:
            async for line in response.aiter_lines():
                if line:
                    yield line.encode()
        except ExpertError:
            raise
        except Exception as exc:
            raise _translate(self.name, exc) from exc

    async def is_healthy(self, timeout_s: float = 3.0) -> tuple[bool, str]:
        """Whether the server answers GET /models and serves this expert's model."""
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._client.get("models")
            if response.status_code >= 400:
                raise _status_error(self.name, response.status_code, response.content)
            served = [model["id"] for model in orjson.loads(response.content)["data"]]
        except Exception as exc:
            return False, str(_translate(self.name, exc))
        if self.config.model not in served:
            return False, f"server does not serve model '{self.config.model}' (serves {served})"
        return True, "ok"

    async def aclose(self) -> None:
        await self._client.aclose()
