"""Replica counts for a Kubernetes deployment, from the traffic each expert gets.

An expert's replicas: the completion tokens per second its share of the load needs, divided by
what one replica generates (tokens/s per GPU x its GPUs, at a target utilisation), rounded up.
The gateway's: the requests per second over what its routed requests per core give. The traffic
comes from the decision log (what was answered by whom, and with how many tokens) or from given
shares.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from expertmesh.config import Config
from expertmesh.gateway.decision_log import Store, open_store

ANSWER_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")

# Measured or cited; each default says where it comes from (README, "On Kubernetes").
# Output tokens/s of vLLM with Llama-3.1-8B on one H100, MLPerf Inference v5.1 server scenario
# (Red Hat's submission, FP8): https://www.redhat.com/en/blog/efficient-and-reproducible-llm-inference-red-hat-mlperf-inference-v51-results
GPU_TOKENS_PER_S = 5103.0
# Routed requests/s per gateway worker process: BENCHMARKS.md, "Worker processes" (~780 on one
# worker at c=8 while sharing its cores with the load generator), rounded down.
GATEWAY_RPS_PER_CORE = 600.0
TOKENS_PER_REQUEST = 350.0  # when the log has no token counts and none are given


@dataclass(frozen=True)
class Traffic:
    """Each expert's share of the answered requests, and its mean completion tokens (if known)."""

    shares: dict[str, float]
    tokens_per_request: dict[str, float]
    requests: int  # how many requests the shares come from (0: given shares)


@dataclass(frozen=True)
class ExpertPlan:
    expert: str
    share: float
    requests_per_s: float
    tokens_per_request: float
    tokens_per_s: float
    replica_tokens_per_s: float  # what one replica is planned to give (GPUs x tokens/s x utilisation)
    gpus_per_replica: int
    replicas: int


@dataclass(frozen=True)
class Plan:
    rps: float
    utilisation: float
    experts: list[ExpertPlan]
    gateway_replicas: int
    gateway_replica_rps: float

    @property
    def gpus(self) -> int:
        return sum(e.replicas * e.gpus_per_replica for e in self.experts)


def traffic_from_log(store: Store, since: float) -> Traffic:
    """Shares and tokens from the log's successful answers since `since` (unix seconds). A
    fan-out's answer counts once for each expert it asked."""
    p = store.placeholder
    endpoints = ", ".join(f"'{e}'" for e in ANSWER_ENDPOINTS)  # constants, not input
    rows = store.query(
        f"SELECT COALESCE(answered_by, expert), completion_tokens FROM decisions "
        f"WHERE time >= {p} AND status = 200 AND endpoint IN ({endpoints})",
        (since,),
    )
    counts: Counter[str] = Counter()
    tokens: dict[str, list[int]] = defaultdict(list)
    for answered_by, completion in rows:
        for expert in (answered_by or "").split(","):
            if expert:
                counts[expert] += 1
                if completion is not None:
                    tokens[expert].append(completion)
    total = sum(counts.values())
    if not total:
        raise ValueError("the decision log has no successful answers in that period")
    return Traffic(
        {expert: n / total for expert, n in counts.items()},
        {expert: sum(values) / len(values) for expert, values in tokens.items() if values},
        len(rows),
    )


def traffic_from_shares(text: str, config: Config) -> Traffic:
    """ "medical=3,legal=1,..." (weights, normalised) by expert or by domain (its expert's)."""
    weights: Counter[str] = Counter()
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        expert = name if name in {e.name for e in config.experts} else config.expert_for_domain().get(name)
        if expert is None:
            raise ValueError(f"'{name}' is neither an expert nor a domain of the configuration")
        try:
            weights[expert] += float(weight)
        except ValueError:
            raise ValueError(f"'{part.strip()}': write name=weight, e.g. medical=0.3") from None
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the shares add up to nothing")
    return Traffic({expert: w / total for expert, w in weights.items()}, {}, 0)


def read_traffic(source: str, config: Config, since: float) -> Traffic:
    """A decision log (a database URL or a SQLite file) or shares ("medical=0.3,legal=0.1")."""
    if source.startswith(("sqlite:///", "postgresql://", "postgres://")):
        return traffic_from_log(open_store(source), since)
    if Path(source).is_file():
        return traffic_from_log(open_store(f"sqlite:///{Path(source).resolve()}"), since)
    if "=" in source:
        return traffic_from_shares(source, config)
    raise ValueError(f"'{source}' is not a decision log (a database URL or a file) nor shares (medical=0.3,...)")


def plan(traffic: Traffic, rps: float, experts: list[str], gpus: dict[str, int], gpu_tokens_per_s: float,
         tokens_per_request: float | None, gateway_rps_per_core: float, gateway_cores: int,
         utilisation: float) -> Plan:  # fmt: skip
    """The replicas each expert and the gateway need for `rps` requests/s at `utilisation`."""
    rows = []
    for expert in experts:
        share = traffic.shares.get(expert, 0.0)
        per_request = tokens_per_request or traffic.tokens_per_request.get(expert, TOKENS_PER_REQUEST)
        replica = gpu_tokens_per_s * gpus.get(expert, 1) * utilisation
        needed = rps * share * per_request
        rows.append(ExpertPlan(expert, share, rps * share, per_request, needed, replica, gpus.get(expert, 1),
                               max(1, math.ceil(needed / replica))))  # fmt: skip
    gateway_replica = gateway_rps_per_core * gateway_cores * utilisation
    # Two gateway replicas at least: one can be drained (the PodDisruptionBudget) while the other serves.
    return Plan(rps, utilisation, rows, max(2, math.ceil(rps / gateway_replica)), gateway_replica)


def overlay(plan_: Plan, base: str) -> str:
    """A kustomization on `base` (a path relative to the overlay) with the planned replicas; the
    autoscalers' minimum is the plan, their maximum twice it."""
    lines = [
        "# Written by `expertmesh deploy plan`: replicas from the traffic (the arithmetic is in its output).",
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        "resources:",
        f"  - {base}",
        "replicas:",
        f"  - {{name: gateway, count: {plan_.gateway_replicas}}}",
        *(f"  - {{name: vllm-{e.expert}, count: {e.replicas}}}" for e in plan_.experts),
        "patches:",
    ]
    targets = [("gateway", plan_.gateway_replicas), *((f"vllm-{e.expert}", e.replicas) for e in plan_.experts)]
    for name, count in targets:
        lines += [
            f"  - target: {{kind: HorizontalPodAutoscaler, name: {name}}}",
            "    patch: |-",
            f"      - {{op: replace, path: /spec/minReplicas, value: {count}}}",
            f"      - {{op: replace, path: /spec/maxReplicas, value: {max(2 * count, count + 1)}}}",
        ]
    return "\n".join(lines) + "\n"
