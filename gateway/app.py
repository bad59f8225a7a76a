"""Assembling the FastAPI application: thin handlers over ChatService."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from expertmesh.config import AUTO_MODEL, Config, KeyConfig
from expertmesh.experts.pool import ExpertPool
from expertmesh.gateway import openapi
from expertmesh.gateway.decision_log import DecisionLog
from expertmesh.gateway.errors import APIError, from_validation_error
from expertmesh.gateway.health import HealthMonitor
from expertmesh.gateway.keys import KeyRing, rate_limit_error
from expertmesh.gateway.limits import BodySizeLimit
from expertmesh.gateway.metrics import GatewayMetrics
from expertmesh.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    ResponsesRequest,
    RouteRequest,
    out_of_range_integer,
)
from expertmesh.gateway.recording import RequestRecorder
from expertmesh.gateway.serving import Caller, ChatService, decision_headers
from expertmesh.gateway.tracing import RequestTracer, build_tracer_provider
from expertmesh.gateway.traffic import TrafficQuery, Window, traffic_report
from expertmesh.gateway.ui import add_ui
from expertmesh.router.policy import RoutingPolicy

log = logging.getLogger(__name__)


# Dependencies are `async def`: FastAPI runs a plain `def` dependency in a worker thread, two
# thread hops per request for work that never blocks (measured: ~5% of the relay path's CPU).
async def _service(request: Request) -> ChatService:
    return request.app.state.service


Service = Annotated[ChatService, Depends(_service)]


def _has_valid_key(request: Request) -> bool:
    keys: KeyRing = request.app.state.keys
    return keys.identify(request.headers.get("authorization", "")) is not None


async def _authenticate(request: Request) -> KeyConfig:
    """The caller's key (401 without a valid one), noted in the request's record."""
    key = request.app.state.keys.authenticate(request.headers.get("authorization", ""))
    request.state.key = key
    request.state.record.key_name = key.name
    return key


async def _admit(request: Request) -> Caller:
    """Authenticate, then take one request from the key's limits (429 past them)."""
    key = await _authenticate(request)
    refusal = await request.app.state.keys.admit(key)
    if refusal is not None:
        request.app.state.service.metrics.rate_limited.labels(key.name, refusal.limit).inc()
        raise rate_limit_error(key, refusal)
    return Caller(key, request.state.record)


Authenticated = Depends(_authenticate)
Admitted = Annotated[Caller, Depends(_admit)]
Key = Annotated[KeyConfig, Depends(_authenticate)]


async def _parse(request: Request, model: type):
    body = await request.body()
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    # JSON integers have no size limit, but the experts' servers (and the gateway's encoder)
    # stop at 64 bits: such a number is the caller's mistake, said before any expert is asked.
    where = out_of_range_integer(body, parsed)
    if where is not None:
        raise APIError(400, f"invalid request: {where}: integer outside the 64-bit range", param=where,
                       code="integer_out_of_range")  # fmt: skip
    return parsed


def build_app(config: Config, policy: RoutingPolicy | None, experts: ExpertPool, span_exporter=None) -> FastAPI:
    """The gateway app; the caller owns the router and the expert pool it is given.
    span_exporter: where tracing's spans go instead of OTLP (tests: an in-memory exporter)."""

    health = HealthMonitor(config, experts)
    metrics = GatewayMetrics()
    keys = KeyRing(config.gateway)
    decisions = DecisionLog(config.log, metrics.log_dropped.inc) if config.log.enabled else None
    tracer = RequestTracer(build_tracer_provider(config.tracing, span_exporter)) if config.tracing.enabled else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if decisions is not None:
            await asyncio.to_thread(decisions.start)  # a database that cannot be opened stops start-up
        await health.start()
        try:
            yield
        finally:
            await health.stop()
            await experts.aclose()
            await keys.aclose()
            if decisions is not None:
                await asyncio.to_thread(decisions.stop)  # everything queued is written
            if tracer is not None:
                tracer.shutdown()

    app = FastAPI(title="expertmesh gateway", version="0.1.0", lifespan=lifespan, responses=openapi.ERROR_RESPONSES)
    experts.listen(metrics.replica_changed, metrics.retried)
    if tracer is not None:
        experts.trace(tracer.tracer)
    app.state.service = ChatService(policy, experts, config.router.fallback_expert, config.fanout,
                                    config.gateway.model_aliases, metrics, config.gateway.request_timeout_s,
                                    config.log.store_text, tracer.tracer if tracer else None)  # fmt: skip
    app.state.keys = keys
    app.state.decisions = decisions
    app.add_middleware(BodySizeLimit, max_bytes=config.gateway.max_body_bytes)
    # Outermost: every response, a 413 or a 401 included, carries the request's id and is logged.
    app.add_middleware(RequestRecorder, decisions=decisions, tracer=tracer, keys=keys)
    _add_error_handlers(app)

    @app.post("/v1/chat/completions", **openapi.post_route(ChatCompletionRequest, "ChatCompletion"))
    async def chat_completions(request: Request, service: Service, caller: Admitted) -> Response:
        """Answer a chat request with the routed (model "auto") or the named expert."""
        return await service.chat(await _parse(request, ChatCompletionRequest), request.is_disconnected, caller)

    @app.post("/v1/completions", **openapi.post_route(CompletionRequest, "Completion"))
    async def completions(request: Request, service: Service, caller: Admitted) -> Response:
        """A legacy completion of a raw prompt; model "auto" routes on the prompt."""
        return await service.completions(await _parse(request, CompletionRequest), caller)

    @app.post("/v1/responses", **openapi.post_route(ResponsesRequest, "Response"))
    async def responses(request: Request, service: Service, caller: Admitted) -> Response:
        """The Responses API; model "auto" routes on the input."""
        return await service.responses(await _parse(request, ResponsesRequest), caller)

    @app.post("/v1/route", **openapi.post_route(RouteRequest, "RoutingDecision", stream=False))
    async def route(request: Request, service: Service, caller: Admitted) -> Response:
        """The routing decision alone, without asking an expert."""
        body: RouteRequest = await _parse(request, RouteRequest)
        messages = [{"role": "user", "content": body.text}] if body.text is not None else [m.model_dump() for m in body.messages]
        decision = await service.decide(AUTO_MODEL, messages, caller)
        return JSONResponse(decision.to_dict(), headers=decision_headers(decision))

    @app.post("/v1/feedback", **openapi.post_route(FeedbackRequest, "FeedbackRecorded", stream=False))
    async def feedback(request: Request, key: Key) -> JSONResponse:
        """A rating of an answer, or the domain it should have gone to, for a logged request id
        (the x-request-id of its response): corrections become training rows (`log export`)."""
        body: FeedbackRequest = await _parse(request, FeedbackRequest)
        if body.domain is not None and body.domain not in config.domains:
            raise APIError(400, f"invalid request: domain: unknown domain '{body.domain}'; expected one of {config.domains}",
                           param="domain", code="invalid_request")  # fmt: skip
        if decisions is None:
            raise APIError(409, "the decision log is off (log.enabled: false): there is nothing to give feedback on",
                           code="log_disabled")  # fmt: skip
        args = (body.request_id, key.name, body.rating, body.domain, body.comment)
        recorded = await asyncio.to_thread(decisions.add_feedback, *args)
        shared = config.gateway.workers > 1 or not decisions.url.startswith("sqlite")
        if not recorded and shared:  # another worker or replica may not have written it yet: again after its next write
            await asyncio.sleep(2 * config.log.flush_interval_s)
            recorded = await asyncio.to_thread(decisions.add_feedback, *args)
        if not recorded:
            raise APIError(404, f"no logged request has the id '{body.request_id}'", param="request_id",
                           code="request_not_found")  # fmt: skip
        return JSONResponse({"object": "feedback", "request_id": body.request_id, "recorded": True})

    @app.get("/v1/traffic", responses=openapi.TRAFFIC_RESPONSES)
    async def traffic(
        key: Key,
        window: Annotated[Window, Query(description="How far back from `until`")] = "1h",
        until: Annotated[float | None, Query(description="The window's end, unix seconds (default: now)",
                                             allow_inf_nan=False, ge=0, le=1e11)] = None,
        buckets: Annotated[int, Query(description="At most this many time buckets", ge=6, le=240)] = 48,
        key_name: Annotated[str | None, Query(alias="key", max_length=128,
                                              description="Only this key's requests (keys with traffic: all)")] = None,
    ) -> JSONResponse:
        """The traffic dashboard's figures from the decision log: requests per expert over time,
        confidence per domain, fallback, failover and error rates, latency, feedback. A key sees
        its own requests unless it is configured with `traffic: all`."""
        if decisions is None:
            raise APIError(409, "the decision log is off (log.enabled: false): there is no traffic to show",
                           code="log_disabled")  # fmt: skip
        if key.traffic == "own" and key_name not in (None, key.name):
            raise APIError(403, f"The key '{key.name}' may see only its own traffic (traffic: own)", param="key",
                           code="traffic_not_allowed")  # fmt: skip
        query = TrafficQuery(window, time.time() if until is None else until, buckets,
                             key.name if key.traffic == "own" else key_name)  # fmt: skip
        threshold = app.state.service.policy.threshold if app.state.service.policy is not None else None

        def report() -> dict:
            decisions.flush()  # the requests of the last half second too
            return traffic_report(decisions.store, query, threshold, config.domains)

        return JSONResponse(await asyncio.to_thread(report))

    if config.gateway.ui:
        add_ui(app)

    started = int(time.time())  # the models' "created": when this gateway started serving them

    def model_card(model_id: str) -> dict:
        return {"id": model_id, "object": "model", "created": started, "owned_by": "expertmesh"}

    @app.get("/v1/models")
    async def models(service: Service, key: Key) -> dict:
        """The auto model, and every expert and alias the key may use, in OpenAI's list format."""
        return {"object": "list", "data": [model_card(m) for m in service.model_ids_for(key)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, service: Service, key: Key) -> dict:
        """One model, as the OpenAI SDK's models.retrieve asks for it."""
        if model_id not in service.model_ids_for(key):
            raise APIError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        return model_card(model_id)

    @app.get("/metrics", dependencies=[Authenticated], response_class=PlainTextResponse, responses=openapi.METRICS_RESPONSE)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics: requests, errors and latency per expert, routing latency and confidence."""
        return metrics.response()

    async def healthz() -> dict:
        """Liveness: the gateway process is up and its event loop answers."""
        return {"status": "ok"}

    async def readyz(request: Request, service: Service) -> JSONResponse:
        """Ready while every routed domain has an expert, or a fallback, that can answer (from the
        background health check; this probe asks no expert). Per-expert detail needs the API key."""
        unserved = health.unserved_domains()
        body: dict = {"status": "not ready" if unserved else "ready"}
        if _has_valid_key(request):
            body.update(router=service.policy is not None, unserved_domains=unserved, experts=service.experts.report())
        return JSONResponse(body, status_code=503 if unserved else 200)

    # Probes take GET and HEAD (load balancers and uptime checkers use both); /health as vLLM
    # and most gateways spell it. One route per method: each needs its own OpenAPI operation id.
    for path, probe, extra in [("/healthz", healthz, {}), ("/health", healthz, {}),
                               ("/readyz", readyz, {"responses": openapi.READY_RESPONSES})]:  # fmt: skip
        for method in ("GET", "HEAD"):
            app.add_api_route(path, probe, methods=[method], operation_id=f"{method.lower()}_{path[1:]}", **extra)

    openapi.document_schemas(app, [ChatCompletionRequest, CompletionRequest, ResponsesRequest, RouteRequest, FeedbackRequest],
                             app.state.service.model_ids)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return APIError(400, f"invalid request: {exc.errors()[0]['msg'] if exc.errors() else exc}").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        # exc.headers carries a 405's Allow: the methods the path does take (RFC 9110 requires it)
        return APIError(exc.status_code, str(exc.detail), kind, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return APIError(500, "internal error in the gateway; see its log", "server_error").response()
