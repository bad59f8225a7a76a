"""What the gateway's OpenAPI document says about its bodies and answers.

The endpoints read their bodies themselves (Pydantic's JSON parser on the raw bytes: no
intermediate dict, and errors in OpenAI's shape), so FastAPI does not see a body parameter;
the request schemas are declared here instead, so that generated clients and API fuzzers send
real bodies. Every error the gateway answers with has OpenAI's error shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

REF = "#/components/schemas/{model}"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid request (the message says what is wrong)", **_ERROR},
    401: {"description": "Missing or wrong API key", **_ERROR},
    403: {"description": "The key may not use the model it named", **_ERROR},
    404: {"description": "Unknown model, path or request id", **_ERROR},
    409: {"description": "Feedback while the decision log is off", **_ERROR},
    413: {"description": "Body over gateway.max_body_bytes", **_ERROR},
    429: {"description": "The key's limit is reached, or every expert that could answer is overloaded; see Retry-After",
          **_ERROR},
    500: {"description": "A bug in the gateway (never expected)", **_ERROR},
    502: {"description": "No expert could answer (down, failing, or misconfigured)", **_ERROR},
    503: {"description": "No router is loaded (model 'auto')", **_ERROR},
    504: {"description": "The expert, or the request as a whole, ran out of time", **_ERROR},
}
# One server-sent event (as OpenAPI 3.2's itemSchema describes a stream, and API fuzzers check it):
# its `data` is a JSON chunk or [DONE], `event` the Responses API's event type.
SSE_EVENT: dict[str, Any] = {
    "type": "object", "required": ["data"], "description": "one server-sent event of the stream",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}  # fmt: skip
METRICS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
}
TRAFFIC_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The dashboard's figures for the window", "content": {"application/json": {"schema": {
        "type": "object", "required": ["object", "totals", "experts", "series", "confidence"]}}}},
    403: {"description": "The key may see only its own traffic", **_ERROR},
    409: {"description": "The decision log is off", **_ERROR},
}  # fmt: skip
READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "Some routed domain has no expert that can answer",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
}


def post_route(request: type[BaseModel], answer: str, stream: bool = True) -> dict[str, Any]:
    """A POST endpoint's request body and 200 answer (JSON, or SSE when the body asks to stream)."""
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object", "description": answer}}}
    if stream:
        content["text/event-stream"] = {"schema": SSE_EVENT}
    return {
        "openapi_extra": {"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": REF.format(model=request.__name__)}}}}},
        "responses": {200: {"description": answer, "content": content}},
    }  # fmt: skip


def document_schemas(app: FastAPI, models: list[type[BaseModel]], model_ids: list[str]) -> None:
    """Add the request models (and the error shape) to the document's components; a request's
    `model` is one of `model_ids` ("auto", the experts, the aliases), so clients can list them."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas["Error"] = ERROR_SCHEMA
            for model in models:
                schema = model.model_json_schema(ref_template=REF)
                schemas.update(schema.pop("$defs", {}))
                if "model" in schema.get("properties", {}):
                    schema["properties"]["model"] = {"type": "string", "enum": model_ids, "title": "Model",
                                                     "description": "'auto' routes; an expert's name asks it"}  # fmt: skip
                schemas[model.__name__] = schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]
