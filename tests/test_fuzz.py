"""Schemathesis against the gateway's own OpenAPI document: requests generated from the
declared bodies (valid and not), sent to a real gateway on 127.0.0.1 in front of the fake
expert. No answer may be a 5xx, and every answer must be one the document declares, in the
declared content type and shape.

Each operation is driven through Hypothesis with `operation.as_strategy()` (schemathesis's
pytest plugin does not load under this pytest)."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import fake_config, running_gateway

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
KEY = "sk-fuzz"
OPERATIONS = [
    ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/responses"), ("POST", "/v1/route"),
    ("POST", "/v1/feedback"), ("GET", "/v1/traffic"),
    ("GET", "/v1/models"), ("GET", "/v1/models/{model_id}"), ("GET", "/metrics"),
    ("GET", "/healthz"), ("HEAD", "/healthz"), ("GET", "/health"), ("HEAD", "/health"),
    ("GET", "/readyz"), ("HEAD", "/readyz"),
]  # fmt: skip


@pytest.fixture(scope="module")
def gateway_schema(fake_expert):
    with running_gateway(fake_config(fake_expert[0], api_keys=[KEY])) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_every_operation_is_fuzzed(gateway_schema):
    documented = {(result.ok().method.upper(), result.ok().path) for result in gateway_schema.get_all_operations()}
    assert documented == set(OPERATIONS)


# Negative cases need something to break: a body, or typed query parameters (/v1/traffic). The other
# GETs take neither (and a path's string can be any string).
BREAKABLE = {path for method, path in OPERATIONS if method == "POST"} | {"/v1/traffic"}
CASES = [(method, path, mode) for method, path in OPERATIONS for mode in schemathesis.GenerationMode
         if mode == schemathesis.GenerationMode.POSITIVE or path in BREAKABLE]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m}-{p}-{g.value}" for m, p, g in CASES])
def test_no_generated_request_gets_a_5xx_or_an_undeclared_answer(gateway_schema, method, path, mode):
    """Positive cases follow the schema (they must be answered, or refused with a declared
    4xx); negative ones break it (they must be refused with a declared 4xx, never a 5xx)."""
    operation = gateway_schema[path][method]
    # EXPERTMESH_FUZZ_EXAMPLES raises it for a longer run by hand (CI keeps the default).
    examples = int(os.environ.get("EXPERTMESH_FUZZ_EXAMPLES", "100")) if path in BREAKABLE else 10

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)  # fmt: skip
    def fuzz(case):
        case.headers = {**(case.headers or {}), "authorization": f"Bearer {KEY}"}
        case.call_and_validate(checks=CHECKS, timeout=30)

    fuzz()
