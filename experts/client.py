"""An async OpenAI-compatible client per expert (what vLLM and the embedded server speak).

Responses are relayed as raw bytes where possible: the gateway adds its routing
decision to the JSON body, and passes stream chunks through unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import orjson

from expertmesh.config import ExpertConfig
from experts.errors import ExpertError, ExpertFailed, ExpertRejected, ExpertTimeout, ExpertUnavailable
from experts.prompts import ExpertPrompt

CONNECT_TIMEOUT_S = 5.0


def _translate(expert: str, exc: Exception) -> ExpertError:
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError)):
        return ExpertTimeout(expert, "did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        return ExpertUnavailable(expert, f"cannot reach the expert's server ({exc.__cause__ or exc})")
    if isinstance(exc, openai.APIStatusError):
        detail = _error_message(exc)
        if 400 <= exc.status_code < 500:
            return ExpertRejected(expert, detail, exc.status_code)
        return ExpertFailed(expert, f"the expert's server answered {exc.status_code}: {detail}")
    return ExpertFailed(expert, f"unexpected error: {exc!r}")


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if body.get("message"):
            return str(body["message"])
    return exc.message


class ExpertClient:
    """Talks to one expert's OpenAI-compatible server; one connection pool per expert."""

    def __init__(self, config: ExpertConfig, base_url: str) -> None:
        self.config = config
        self.name = config.name
        self.base_url = base_url
        self.prompt = ExpertPrompt(config)
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=config.api_key or "not-needed",
            max_retries=0,  # a retry would double the latency of a slow expert; the caller decides
            timeout=openai.Timeout(config.timeout_s, connect=CONNECT_TIMEOUT_S),
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
        params = self._params(body, stream=False)
        try:
            async with asyncio.timeout(self.config.timeout_s):
                raw = await self._client.chat.completions.with_raw_response.create(**params)
                content = raw.content
        except Exception as exc:
            raise _translate(self.name, exc) from exc
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ExpertFailed(self.name, "answered with a body that is not JSON") from exc

    @asynccontextmanager
    async def stream(self, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open a streaming completion; the connection and the status are checked on entry,
        so errors before the first chunk can still become an HTTP error status."""
        params = self._params(body, stream=True)
        try:
            manager = self._client.chat.completions.with_streaming_response.create(**params)
            response = await manager.__aenter__()
        except Exception as exc:
            raise _translate(self.name, exc) from exc
        try:
            yield self._lines(response)
        finally:
            await manager.__aexit__(None, None, None)

    async def _lines(self, response) -> AsyncIterator[bytes]:
        try:
            async for line in response.iter_lines():
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
                models = await self._client.models.list()
        except Exception as exc:
            return False, str(_translate(self.name, exc))
        served = [model.id for model in models.data]
        if self.config.model not in served:
            return False, f"server does not serve model '{self.config.model}' (serves {served})"
        return True, "ok"

    async def aclose(self) -> None:
        await self._client.close()

    @staticmethod
    def _params(body: dict[str, Any], stream: bool) -> dict[str, Any]:
        extra = {k: v for k, v in body.items() if k not in ("model", "messages", "stream")}
        return {"model": body["model"], "messages": body["messages"], "stream": stream, "extra_body": extra}
