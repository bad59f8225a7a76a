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
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

import aiohttp
import orjson

from expertmesh.config import ExpertConfig, ResilienceConfig
from expertmesh.experts.errors import (
    ExpertCircuitOpen,
    ExpertError,
    ExpertFailed,
    ExpertMisconfigured,
    ExpertRateLimited,
    ExpertRejected,
    ExpertTimeout,
    ExpertUnavailable,
    RequestTimedOut,
)
from expertmesh.experts.prompts import ExpertPrompt
from expertmesh.experts.replicas import Replica, ReplicaSet, StateListener

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

# (expert, error kind): how the metrics hear of a retry.
RetryListener = Callable[[str, str], None]

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
        # The exception's text names the server's address: for the logs, not for clients.
        return ExpertUnavailable(expert, f"cannot reach the expert's server ({type(exc).__name__})", str(exc))
    return ExpertFailed(expert, f"unexpected error ({type(exc).__name__})", repr(exc))


def _status_error(expert: str, status: int, content: bytes, headers: Mapping[str, str] | None = None) -> ExpertError:
    detail = _error_message(content) or f"HTTP {status}"
    if status == 429:
        return ExpertRateLimited(expert, f"the expert's server is overloaded (429): {detail}",
                                 _retry_after(headers or {}))  # fmt: skip
    if status in (401, 403):
        return ExpertMisconfigured(
            expert, f"the expert's server refused the gateway's credentials ({status}): {detail}", status
        )
    if status == 404:
        return ExpertMisconfigured(
            expert, f"the expert's server does not know its model or path (404): {detail}", status
        )
    if 400 <= status < 500:
        return ExpertRejected(expert, detail, status)
    return ExpertFailed(expert, f"the expert's server answered {status}: {detail}")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header in its seconds form (the HTTP-date form is ignored)."""
    try:
        return max(0.0, float(headers.get("retry-after", "")))
    except ValueError:
        return None


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


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


class ExpertClient:
    """Talks to one expert's OpenAI-compatible server(s); one connection pool per expert.

    With several replicas, each request goes to the usable one with the fewest in flight
    (experts/replicas.py). A connect error, 5xx, 429 or timeout before the first byte is tried
    again (`resilience.retries`): at once on another replica, after a jittered backoff on the
    same one. Once a stream has yielded a line it is never retried: the client has it.

    The aiohttp session is made on first use, inside the event loop that uses it (a session
    belongs to one loop; the pool is built before uvicorn starts its loop).
    """

    def __init__(self, config: ExpertConfig, base_urls: list[str], resilience: ResilienceConfig | None = None,
                 on_state: StateListener | None = None, on_retry: RetryListener | None = None) -> None:  # fmt: skip
        resilience = resilience or ResilienceConfig()
        self.config = config
        self.name = config.name
        self.retries = resilience.retries
        self.replicas = ReplicaSet([Replica(config.name, index, url, resilience.circuit_breaker, on_state)
                                    for index, url in enumerate(base_urls)])  # fmt: skip
        self.on_retry = on_retry
        # An OpenTelemetry tracer (gateway/tracing.py) when tracing is on: a span per try, and
        # its W3C traceparent sent along, so the expert's server can continue the trace.
        self.tracer: Tracer | None = None
        self.prompt = ExpertPrompt(config)
        self._headers = dict(JSON_HEADERS)
        if config.api_key:
            self._headers["authorization"] = f"Bearer {config.api_key}"
        # sock_read bounds the wait for each piece of a stream; `total` (complete(), and the
        # request's deadline) bounds the whole.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=config.timeout_s)
        self._proxies = {replica.index: env_proxy(replica.base_url) for replica in self.replicas.replicas}
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

    # --- choosing a replica, and trying again ----------------------------------------------------

    def _choose(self, tried: set[int], last_error: ExpertError | None) -> Replica:
        replica = self.replicas.pick(tried)
        if replica is None:  # on a retry, the failure that just took the last replica out says more
            raise last_error or ExpertCircuitOpen(
                self.name, "every server of this expert is cooling down after failures"
            )
        return replica

    async def _before_retry(self, attempt: int, replica: Replica, error: ExpertError, tried: set[int],
                            deadline: float | None) -> bool:  # fmt: skip
        """Whether to try again after `error`; waits first if the next try reuses a replica."""
        if not error.retry or attempt + 1 >= self.retries.attempts:
            return False
        if len(tried) < len(self.replicas.replicas):
            wait = 0.0  # another replica is waiting: no reason to wait
        else:  # "full jitter" (AWS's backoff study): a random wait up to the doubled cap
            wait = random.uniform(0, min(self.retries.max_backoff_s, self.retries.backoff_s * 2**attempt))
        if isinstance(error, ExpertRateLimited) and error.retry_after_s and len(tried) >= len(self.replicas.replicas):
            return False  # the server said when to come back; that is later than a retry's backoff
        remaining = _remaining(deadline)
        if remaining is not None and remaining <= wait:
            return False
        if self.on_retry is not None:
            self.on_retry(self.name, error.kind)
        if wait:
            await asyncio.sleep(wait)
        return True

    def _attempt_timeout(self, deadline: float | None, total: float | None) -> aiohttp.ClientTimeout:
        remaining = _remaining(deadline)
        if remaining is not None and remaining <= 0:
            raise RequestTimedOut(self.name, "the request used up the gateway's time limit")
        limits = [t for t in (total, remaining) if t is not None]
        if not limits:
            return self._timeout
        return aiohttp.ClientTimeout(total=min(limits), sock_connect=CONNECT_TIMEOUT_S, sock_read=self.config.timeout_s)

    def _settle(self, replica: Replica, error: ExpertError | None) -> None:
        if error is None:
            replica.succeeded()
        elif error.breaks_circuit:
            replica.failed()
        elif replica.trial_out:  # a half-open trial that ended in a 4xx: the server works
            replica.succeeded()

    def _timed_out(self, exc: ExpertError, deadline: float | None) -> ExpertError:
        """A timeout at the request's deadline is the gateway's limit, not the expert's slowness."""
        if isinstance(exc, ExpertTimeout) and deadline is not None and time.monotonic() >= deadline - 0.01:
            return RequestTimedOut(self.name, "the request used up the gateway's time limit")
        return exc

    def _start_span(self, replica: Replica, path: str, attempt: int) -> tuple[Span | None, dict[str, str] | None]:
        """A span for one try (a child of the current one: the gateway's request span) and the
        headers that carry it to the expert; (None, None) when tracing is off."""
        if self.tracer is None:
            return None, None
        from opentelemetry import trace

        span = self.tracer.start_span(f"expert {self.name}", kind=trace.SpanKind.CLIENT, attributes={
            "expertmesh.replica": replica.index, "expertmesh.attempt": attempt, "url.full": replica.base_url + path,
            "gen_ai.request.model": self.config.model})  # fmt: skip
        # The W3C header by hand: what the propagator writes, without its context round trip.
        context = span.get_span_context()
        headers = {"traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"}
        if context.trace_state:  # a caller's vendor state goes on with it
            headers["tracestate"] = context.trace_state.to_header()
        return span, headers

    @staticmethod
    def _end_span(span: Span | None, error: BaseException | None = None) -> None:
        if span is None:
            return
        if isinstance(error, ExpertError):
            from opentelemetry.trace import Status, StatusCode

            span.set_attribute("error.type", error.kind)
            span.set_status(Status(StatusCode.ERROR, str(error)))
        span.end()

    # --- the calls ----------------------------------------------------------------------------

    async def complete(
        self, body: dict[str, Any], path: str = CHAT_PATH, deadline: float | None = None
    ) -> dict[str, Any]:
        """A non-streaming call (a chat completion by default), as the JSON object the server
        returned. `deadline` (time.monotonic()) bounds every try together."""
        data = orjson.dumps({**body, "stream": False})
        tried: set[int] = set()
        error: ExpertError | None = None
        for attempt in itertools.count():
            replica = self._choose(tried, error)
            tried.add(replica.index)
            try:
                return await self._complete_once(replica, data, path, deadline, attempt)
            except ExpertError as exc:
                error = self._timed_out(exc, deadline)
                if isinstance(error, RequestTimedOut) or not await self._before_retry(
                    attempt, replica, error, tried, deadline
                ):
                    raise error from exc
        raise AssertionError("unreachable")

    async def _complete_once(self, replica: Replica, data: bytes, path: str, deadline: float | None,
                             attempt: int = 0) -> dict[str, Any]:  # fmt: skip
        timeout = self._attempt_timeout(deadline, self.config.timeout_s)
        span, headers = self._start_span(replica, path, attempt)
        replica.acquire(time.monotonic())
        try:
            answer = await self._post_json(replica, data, path, timeout, headers)
        except BaseException as exc:
            self._end_span(span, exc)
            if isinstance(exc, ExpertError):
                self._settle(replica, exc)
            raise  # cancelled: the client went away, which says nothing about the replica
        else:
            self._end_span(span)
            self._settle(replica, None)
            return answer
        finally:
            replica.release()

    async def _post_json(self, replica: Replica, data: bytes, path: str, timeout: aiohttp.ClientTimeout,
                         headers: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        try:
            async with self._http().post(replica.base_url + path, data=data, proxy=self._proxies[replica.index],
                                         timeout=timeout, headers=headers) as response:  # fmt: skip
                status, content, headers = response.status, await response.read(), response.headers
        except Exception as exc:
            raise _translate(self.name, exc) from exc
        if status >= 400:
            raise _status_error(self.name, status, content, headers)
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            raise ExpertFailed(self.name, "answered with a body that is not JSON") from None

    @asynccontextmanager
    async def stream(self, body: dict[str, Any], path: str = CHAT_PATH,
                     deadline: float | None = None) -> AsyncIterator[AsyncIterator[bytes]]:  # fmt: skip
        """Open a streaming call and read its first line: every failure up to there can still be
        retried (and then become an HTTP error status). Yields the SSE lines, that first one included."""
        data = orjson.dumps({**body, "stream": True})
        tried: set[int] = set()
        error: ExpertError | None = None
        for attempt in itertools.count():
            replica = self._choose(tried, error)
            tried.add(replica.index)
            span, headers = self._start_span(replica, path, attempt)
            replica.acquire(time.monotonic())
            try:
                response, lines = await self._open_stream(replica, data, path, deadline, headers)
                break
            except BaseException as exc:
                replica.release()
                self._end_span(span, exc)
                if not isinstance(exc, ExpertError):
                    raise  # cancelled: the client went away
                self._settle(replica, exc)
                error = self._timed_out(exc, deadline)
                if isinstance(error, RequestTimedOut) or not await self._before_retry(
                    attempt, replica, error, tried, deadline
                ):
                    raise error from exc
        self._settle(replica, None)  # it answered: whatever happens next is not retried
        failure: BaseException | None = None
        try:
            yield lines
        except aiohttp.ClientError as exc:
            failure = _translate(self.name, exc)
            raise failure from exc
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._end_span(span, failure)  # the span covers the whole stream
            replica.release()
            # Back to the pool if the stream was read to its end; closed otherwise (a client
            # that went away mid-stream must not leave a half-read connection in the pool).
            response.release()

    async def _open_stream(self, replica: Replica, data: bytes, path: str, deadline: float | None,
                           headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, AsyncIterator[bytes]]:  # fmt: skip
        try:
            response = await self._http().post(replica.base_url + path, data=data, proxy=self._proxies[replica.index],
                                               timeout=self._attempt_timeout(deadline, None), headers=headers)  # fmt: skip
        except ExpertError:
            raise
        except Exception as exc:
            raise _translate(self.name, exc) from exc
        try:
            if response.status >= 400:
                raise _status_error(self.name, response.status, await response.read(), response.headers)
            first = await self._first_line(response)
        except BaseException as exc:
            response.release()
            if isinstance(exc, ExpertError | asyncio.CancelledError):
                raise
            raise _translate(self.name, exc) from exc  # type: ignore[arg-type]
        return response, self._lines(response, first, deadline)

    async def _first_line(self, response: aiohttp.ClientResponse) -> bytes:
        """The stream's first non-empty line; nothing has reached the client yet, so a failure
        here (an empty stream, a timeout before the first event) can still be retried."""
        try:
            async for line in response.content:
                line = line.rstrip(b"\r\n")
                if line:
                    return line
        except Exception as exc:
            raise _translate(self.name, exc) from exc
        raise ExpertUnavailable(self.name, "closed the stream before sending anything")

    async def _lines(
        self, response: aiohttp.ClientResponse, first: bytes, deadline: float | None
    ) -> AsyncIterator[bytes]:
        """The SSE lines, the prefetched first one included."""
        yield first
        try:
            async for line in response.content:
                line = line.rstrip(b"\r\n")
                if line:
                    yield line
        except Exception as exc:
            raise self._timed_out(_translate(self.name, exc), deadline) from exc

    # --- health ---------------------------------------------------------------------------------

    async def check_replicas(self, timeout_s: float = 3.0) -> None:
        """Ask every replica's GET /models; each keeps the reading (the background health check)."""
        await asyncio.gather(*(self._check(replica, timeout_s) for replica in self.replicas.replicas))

    async def _check(self, replica: Replica, timeout_s: float) -> None:
        ok, detail = await self._probe(replica, timeout_s)
        if not ok:
            log.info(
                "expert '%s' replica %d (%s) is not healthy: %s", self.name, replica.index, replica.base_url, detail
            )
        replica.checked(ok, detail)

    async def _probe(self, replica: Replica, timeout_s: float) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(timeout_s):
                async with self._http().get(
                    replica.base_url + "/models", proxy=self._proxies[replica.index]
                ) as response:
                    status, content = response.status, await response.read()
            if status >= 400:
                raise _status_error(self.name, status, content)
            served = [model["id"] for model in orjson.loads(content)["data"]]
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy", with its reason
            error = _translate(self.name, exc)
            return False, str(error).removeprefix(f"expert '{self.name}': ")
        if self.config.model not in served:
            return False, f"the server does not serve model '{self.config.model}'"
        return True, "ok"

    async def is_healthy(self, timeout_s: float = 3.0) -> tuple[bool, str]:
        """Checks every replica now: whether one of them is usable, and what each said."""
        await self.check_replicas(timeout_s)
        details = [r.health.detail for r in self.replicas.replicas]
        return self.replicas.any_up, details[0] if len(details) == 1 else "; ".join(
            f"replica {i}: {d}" for i, d in enumerate(details))  # fmt: skip

    async def aclose(self) -> None:
        if self._session is not None and self._session_loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = self._session_loop = None
