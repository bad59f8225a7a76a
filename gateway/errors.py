"""Errors in OpenAI's shape, and the one map from exceptions to HTTP statuses."""

from __future__ import annotations

import math
import re

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from expertmesh.experts.errors import (
    ExpertError,
    ExpertFailed,
    ExpertMisconfigured,
    ExpertRateLimited,
    ExpertRejected,
    ExpertTimeout,
    ExpertUnavailable,
    RequestTimedOut,
)


class APIError(Exception):
    """An error the gateway answers with, in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# status, OpenAI error type, code
_EXPERT_ERRORS: dict[type[ExpertError], tuple[int, str, str]] = {
    ExpertUnavailable: (502, "upstream_error", "expert_unavailable"),
    ExpertFailed: (502, "upstream_error", "expert_error"),
    ExpertTimeout: (504, "upstream_error", "expert_timeout"),
    RequestTimedOut: (504, "timeout_error", "request_timeout"),
}
# An expert's server refusing the gateway itself is the gateway's misconfiguration: a 502 with
# its own code, never the upstream's 401/404 (which would read as the caller's fault).
_MISCONFIGURED_CODES = {401: "expert_auth_failed", 403: "expert_auth_failed", 404: "expert_not_found"}
DEFAULT_RETRY_AFTER_S = 1


def from_expert_error(exc: ExpertError) -> APIError:
    if isinstance(exc, ExpertRejected):  # the caller's request was invalid for the expert
        return APIError(exc.status_code, str(exc), code="expert_rejected_request")
    if isinstance(exc, ExpertMisconfigured):
        return APIError(502, str(exc), "upstream_error", code=_MISCONFIGURED_CODES.get(exc.status_code, "expert_error"))
    if isinstance(exc, ExpertRateLimited):
        wait = math.ceil(exc.retry_after_s) if exc.retry_after_s else DEFAULT_RETRY_AFTER_S
        return APIError(429, str(exc), "rate_limit_error", code="expert_overloaded", headers={"retry-after": str(wait)})
    status, kind, code = _EXPERT_ERRORS.get(type(exc), (502, "upstream_error", "expert_error"))
    return APIError(status, str(exc), kind, code=code)


# Pydantic names the union member it tried ("str", "list[...]", "function-after[...]",
# "tagged-union[...]") in an error's location; users know no such key.
_UNION_MEMBER = re.compile(r"^(str|[a-z-]+\[.*\])$")


def _location(loc: tuple) -> str:
    parts: list[str] = []
    tag_follows = False  # in a tagged union, the item's index is followed by its tag ("text")
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
            continue
        if _UNION_MEMBER.match(str(part)):
            tag_follows = tag_follows or "tagged-union[" in str(part)
            continue
        if tag_follows and parts and parts[-1].startswith("["):
            tag_follows = False
            continue
        parts.append(("." if parts else "") + str(part))
    return "".join(parts)


def from_validation_error(exc: ValidationError) -> APIError:
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {errors[0]['ctx']['error']}", code="invalid_json")
    if errors and errors[0]["type"] == "model_type":
        return APIError(400, "the request body must be a JSON object", code="invalid_request")
    seen: list[str] = []
    for error in errors:
        where = _location(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        text = f"{where}: {message}" if where else message
        if text not in seen:
            seen.append(text)
    first = _location(errors[0]["loc"]) if errors else None
    return APIError(400, "invalid request: " + "; ".join(seen[:4]), param=first or None, code="invalid_request")
