"""An async OpenAI-compatible client per expert (what vLLM and the embedded server speak).

It speaks the chat-completions wire format over one aiohttp connection pool per expert
(HTTP/1.1 keep-alive) and relays responses as raw bytes where possible: the gateway adds its
routing decision to the JSON body and passes stream chunks through unchanged.

Why aiohttp and not the openai SDK or httpx: profiled under load (BENCHMARKS.md, "Gateway
speed"), the SDK's per-request parameter transformation took most of the gateway's own time,
and after it httpx's pool (httpcore on anyio) still took ~70% of it: the same relay spends
0.95 ms of CPU per request on httpx and 0.25 ms on aiohttp, whose HTTP parser is C.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

import aiohttp
import orjson

from expertmesh.config import ExpertConfig
from expertmesh.experts.errors import ExpertError, ExpertFailed, ExpertRejected, ExpertTimeout, ExpertUnavailable
from expertmesh.experts.prompts import ExpertPrompt

CONNECT_TIMEOUT_S = 5.0
# The OpenAI API paths under an expert's base URL (".../v1").
CHAT_PATH = "/chat/completions"
COMPLETIONS_PATH = "/completions"
RESPONSES_PATH = "/responses"
JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}
# aiohttp splits a stream into lines in a buffer of twice this size; an SSE line with
# top_logprobs can be long, so allow lines up to 2 MiB.
READ_BUFFER_BYTES = 1 << 20
# Idle keep-alive connections are dropped after this long: sooner than the servers do (uvicorn,
# and so vLLM, closes them after 5 s), because a POST sent on a connection the server is closing
# at that moment fails and is not retried (it is not idempotent). aiohttp's default is 15 s.
KEEPALIVE_S = 4.0


def env_proxy(url: str) -> str | None:
    """The proxy that HTTP(S)_PROXY / NO_PROXY name for this URL, as curl and httpx read them:
    looked up once per expert, not per request (aiohttp's own trust_env does it per request)."""
    parts = urlsplit(url)
    if proxy_bypass_environment(parts.hostname or ""):
        return None
    return getproxies_environment().get(parts.scheme)


def _translate(expert: str, exc: Exception) -> ExpertError:
    if isinstance(exc, ExpertError):
        return exc
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return ExpertTimeout(expert, "did not answer in time")
    if isinstance(exc, aiohttp.ClientError):
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
    """Talks to one expert's OpenAI-compatible server; one connection pool per expert.

    The aiohttp session is made on first use, inside the event loop that uses it (a session
    belongs to one loop; the pool is built before uvicorn starts its loop).
    """

    def __init__(self, config: ExpertConfig, base_url: str) -> None:
        self.config = config
        self.name = config.name
        self.base_url = base_url
        self.prompt = ExpertPrompt(config)
        self._headers = dict(JSON_HEADERS)
        if config.api_key:
            self._headers["authorization"] = f"Bearer {config.api_key}"
        self._base = base_url.rstrip("/")
        self._models_url = self._base + "/models"
        # No retries: a retry would double the latency of a slow expert; the caller decides.
        # sock_read bounds the wait for each piece of a stream; complete() also bounds the total.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=config.timeout_s)
        self._proxy = env_proxy(base_url)
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._defaults = config.generation.model_dump(exclude_none=True)

    def _http(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop:
            self._session_loop = loop
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S),  # no cap: the server queues
                cookie_jar=aiohttp.DummyCookieJar(),  # one user's cookies must not reach another's request
                read_bufsize=READ_BUFFER_BYTES,
            )
        return self._session

    @property
    def serves_responses_api(self) -> bool:
        """Whether this expert's server answers POST /responses itself."""
        return self.config.serves_responses_api

    def request_body(self, request: dict[str, Any], domain: str | None = None) -> dict[str, Any]:
        """The chat body for this expert: its model, its prompt format, its generation defaults."""
        body = self.completion_body(request)
        if "max_completion_tokens" in body:
            body.pop("max_tokens", None)  # an explicit request value wins over our default
        body["messages"] = self.prompt.format(request["messages"], domain)
        return body

    def completion_body(self, request: dict[str, Any]) -> dict[str, Any]:
        """A body with this expert's model and its generation defaults under the request's fields
        (a legacy completion's prompt is raw text: no prompt format applies)."""
        body = {**self._defaults, **{k: v for k, v in request.items() if v is not None}}
        body["model"] = self.config.model
        return body

    def responses_defaults(self) -> dict[str, Any]:
        """The generation defaults in the Responses API's names."""
        names = {"max_tokens": "max_output_tokens"}
        return {names.get(key, key): value for key, value in self._defaults.items()}

    async def complete(self, body: dict[str, Any], path: str = CHAT_PATH) -> dict[str, Any]:
        """A non-streaming call (a chat completion by default), as the JSON object the server returned."""
        try:
            async with asyncio.timeout(self.config.timeout_s):
                async with self._http().post(
                    self._base + path, data=orjson.dumps({**body, "stream": False}), proxy=self._proxy
                ) as response:
                    status, content = response.status, await response.read()
        except Exception as exc:
            raise _translate(self.name, exc) from exc
        if status >= 400:
            raise _status_error(self.name, status, content)
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ExpertFailed(self.name, "answered with a body that is not JSON") from exc

    @asynccontextmanager
    async def stream(self, body: dict[str, Any], path: str = CHAT_PATH) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open a streaming call; the connection and the status are checked on entry, so errors
        before the first chunk can still become an HTTP error status. Yields the SSE lines."""
        try:
            response = await self._http().post(
                self._base + path, data=orjson.dumps({**body, "stream": True}), proxy=self._proxy
            )
        except Exception as exc:
            raise _translate(self.name, exc) from exc
        try:
            if response.status >= 400:
                raise _status_error(self.name, response.status, await response.read())
            yield self._lines(response)
        except aiohttp.ClientError as exc:
            raise _translate(self.name, exc) from exc
        finally:
            # Back to the pool if the stream was read to its end; closed otherwise (a client
            # that went away mid-stream must not leave a half-read connection in the pool).
            response.release()

    async def _lines(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for line in response.content:
                line = line.rstrip(b"\r\n")
                if line:
                    yield line
        except ExpertError:
            raise
        except Exception as exc:
            raise _translate(self.name, exc) from exc

    async def is_healthy(self, timeout_s: float = 3.0) -> tuple[bool, str]:
        """Whether the server answers GET /models and serves this expert's model."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self._http().get(self._models_url, proxy=self._proxy) as response:
                    status, content = response.status, await response.read()
            if status >= 400:
                raise _status_error(self.name, status, content)
            served = [model["id"] for model in orjson.loads(content)["data"]]
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy", with its reason
            return False, str(_translate(self.name, exc))
        if self.config.model not in served:
            return False, f"server does not serve model '{self.config.model}' (serves {served})"
        return True, "ok"

    async def aclose(self) -> None:
        if self._session is not None and self._session_loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = self._session_loop = None
