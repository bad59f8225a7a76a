"""An evaluation run: items of a suite, answered by the experts that each compared system picks.

Systems are views over answers: `routed` (the router's expert), `oracle` (the expert of the
item's gold domain), `general` (the fallback expert alone), `random` (a seeded random expert),
`expert:NAME` (that expert alone), `top-p` (the dynamic top-p set of experts, combined with the
config's fan-out strategy, `synthesize` by default: issue #6's fan-out, here in-process). An
answer depends only on (item, expert, scoring mode), so a
question that routed and oracle send to the same expert is asked once; every answer is stored
durably as it arrives (eval/answer_store.py) and a rerun asks only for what is missing.

Multiple-choice items are scored two ways: `generate` (generate, then extract the letter) and
`likelihood` (one token with top-20 logprobs: the most likely option letter).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from expertmesh.config import Config
from expertmesh.eval.answer_store import AnswerStore, answer_key
from expertmesh.eval.answers import choice_from_logprobs, score
from expertmesh.eval.bench_tasks import Item, TaskSpec, all_suites, all_tasks, data_fingerprint, load_items
from expertmesh.router.policy import RoutingPolicy
from expertmesh.router.top_p import select_experts

MANIFEST_FILE = "run.json"
MODES = ("generate", "likelihood")
TOP_LOGPROBS = 20
DEFAULT_SYSTEMS = ["routed", "oracle", "general", "random"]


@dataclass(frozen=True)
class RunSettings:
    suite: str
    systems: list[str] = field(default_factory=lambda: list(DEFAULT_SYSTEMS))
    limit: int | None = None  # items per task; None: the suite's own number
    seed: int = 0
    concurrency: int = 4
    modes: tuple[str, ...] = MODES
    gateway_url: str | None = None  # routed answers through a running gateway instead of in-process


class RunError(ValueError):
    """Bad arguments, or a run folder that holds another run."""


@dataclass
class Plan:
    """Who answers what: the items, their routing, and each system's responder per item."""

    items: list[Item]
    routes: dict[str, dict]  # item key -> routing decision
    responders: dict[str, dict[str, str]]  # system -> item key -> responder
    jobs: list[tuple[Item, str, str]]  # (item, responder, mode), unique

    @staticmethod
    def item_key(item: Item) -> str:
        return f"{item.task}|{item.id}"


# --- systems -----------------------------------------------------------------------------------


def _random_expert(item: Item, experts: list[str], seed: int) -> str:
    return random.Random(f"{seed}|{item.task}|{item.id}").choice(experts)


SYSTEMS: dict[str, Callable[[Item, dict, Config, int], str]] = {
    "routed": lambda item, route, config, seed: route["expert"],
    "oracle": lambda item, route, config, seed: config.expert_for_domain()[item.domain],
    "general": lambda item, route, config, seed: config.router.fallback_expert,
    "random": lambda item, route, config, seed: _random_expert(item, [e.name for e in config.experts], seed),
    "top-p": lambda item, route, config, seed: TOP_P_RESPONDER,
}
TOP_P_RESPONDER = "top-p"  # not an expert: the fan-out of eval/bench_run.ask_top_p


def check_systems(systems: list[str], config: Config) -> list[str]:
    experts = [e.name for e in config.experts]
    expanded = []
    for system in systems:
        if system == "experts":  # shorthand: every expert alone
            expanded += [f"expert:{name}" for name in experts]
        elif system in SYSTEMS or (system.startswith("expert:") and system.split(":", 1)[1] in experts):
            expanded.append(system)
        else:
            known = [*SYSTEMS, "experts", *(f"expert:{name}" for name in experts)]
            raise RunError(f"unknown system '{system}'; known: {', '.join(known)}")
    return list(dict.fromkeys(expanded))


def suite_tasks(settings: RunSettings) -> tuple[list[TaskSpec], int | None]:
    suites = all_suites()
    if settings.suite in suites:
        suite = suites[settings.suite]
        return [all_tasks()[name] for name in suite.tasks], settings.limit or suite.items_per_task
    if settings.suite in all_tasks():  # a single task is a suite of one
        return [all_tasks()[settings.suite]], settings.limit
    raise RunError(f"unknown suite or task '{settings.suite}'; see `expertmesh eval ls`")


def responder_for(system: str, item: Item, route: dict, config: Config, settings: RunSettings) -> str:
    """Who answers `item` for `system`: an expert's name, "gateway" or the top-p fan-out."""
    if system.startswith("expert:"):
        return system.split(":", 1)[1]
    if system == "routed" and settings.gateway_url:
        return "gateway"
    return SYSTEMS[system](item, route, config, settings.seed)


def make_plan(settings: RunSettings, config: Config, policy: RoutingPolicy, systems: list[str]) -> Plan:
    specs, limit = suite_tasks(settings)
    items = [item for spec in specs for item in load_items(spec, limit, settings.seed)]
    decisions = policy.route_batch([item.prompt for item in items])
    routes = {Plan.item_key(item): decision.to_dict() for item, decision in zip(items, decisions)}
    responders = {
        system: {Plan.item_key(i): responder_for(system, i, routes[Plan.item_key(i)], config, settings) for i in items}
        for system in systems
    }
    jobs = []
    for item in items:
        modes = [m for m in settings.modes if m == "generate" or item.kind == "multiple_choice"]
        wanted = {responders[system][Plan.item_key(item)] for system in systems}
        for responder in sorted(wanted):  # a fan-out's combined answer has no likelihood to read
            jobs += [(item, responder, mode) for mode in modes if responder != TOP_P_RESPONDER or mode == "generate"]
    return Plan(items, routes, responders, jobs)


# --- asking ------------------------------------------------------------------------------------


def request_for(item: Item, mode: str, seed: int) -> dict[str, Any]:
    request: dict[str, Any] = {"messages": [{"role": "user", "content": item.prompt}], "temperature": 0.0, "seed": seed}
    if mode == "likelihood":
        return {**request, "max_tokens": 1, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
    return {**request, "max_tokens": item.max_tokens}


async def ask_top_p(item: Item, route: dict, request: dict, config: Config, pool) -> dict[str, Any]:
    """The gateway's fan-out, in-process: the top-p experts' answers combined by the config's strategy."""
    from expertmesh.experts.fanout import Assignment, ask_experts, combine, sum_usage

    fanout = config.fanout
    chosen = select_experts(route["scores"], config.expert_for_domain(), fanout.top_p, fanout.max_experts)
    if len(chosen) < 2:  # one expert is enough: what the gateway does too
        client = pool.get(route["expert"])
        return await client.complete(client.request_body(request))
    assignments = [Assignment(expert, score, request["messages"]) for expert, score in chosen]
    answers = await ask_experts(pool, assignments, request, fanout.expert_timeout_s)
    aggregator = fanout.aggregator or config.router.fallback_expert
    text, usage = await combine(pool, fanout.strategy, aggregator, item.prompt, answers, request)
    return {"choices": [{"message": {"content": text}}], "usage": sum_usage([a.usage for a in answers] + [usage]),
            "expertmesh": {"expert": "+".join(a.expert for a in answers if a.status == "answered")}}  # fmt: skip


async def ask(item: Item, responder: str, mode: str, settings: RunSettings, pool, gateway, route: dict,
              config: Config) -> dict[str, Any]:  # fmt: skip
    """One answer as a record for the store."""
    request = request_for(item, mode, settings.seed)
    start = time.perf_counter()
    if responder == TOP_P_RESPONDER:
        answer = await ask_top_p(item, route, request, config, pool)
    elif responder == "gateway":
        answer = (await gateway.chat.completions.with_raw_response.create(model="auto", **request)).http_response.json()
    else:
        client = pool.get(responder)
        answer = await client.complete(client.request_body(request))
    latency = time.perf_counter() - start
    choice = answer["choices"][0]
    text = choice["message"].get("content") or ""
    if mode == "likelihood":
        first = ((choice.get("logprobs") or {}).get("content") or [{}])[0]
        prediction = choice_from_logprobs(first.get("top_logprobs") or [], item.choices)
        correct = prediction == item.gold
    else:
        prediction, correct = await asyncio.to_thread(score, item, text)  # MBPP runs code: off the loop
    usage = answer.get("usage") or {}
    decision = answer.get("expertmesh") or {}  # the gateway's (or the fan-out's) routing decision
    return {
        "key": answer_key(item.task, item.id, responder, mode), "task": item.task, "item": item.id,
        "domain": item.domain, "responder": responder, "mode": mode, "text": text, "prediction": prediction,
        "correct": bool(correct), "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0), "latency_s": round(latency, 4),
        "routed_expert": decision.get("expert"), "routed_domain": decision.get("domain"),
        "routed_by": decision.get("routed_by"),
    }  # fmt: skip


def default_concurrency(config: Config, gateway_url: str | None) -> int:
    """Requests in flight: 1 when every expert is the embedded model (it generates one answer at
    a time, so more only queue, and a queued request's wait counts against its timeout); 4 else."""
    if gateway_url is None and all(expert.is_embedded for expert in config.experts):
        return 1
    return 4


async def answer_all(plan: Plan, store: AnswerStore, settings: RunSettings, config: Config, pool, gateway,
                     on_done: Callable[[bool], None]) -> list[str]:  # fmt: skip
    """Ask every job not in the store yet, `concurrency` at a time; returns the failures."""
    semaphore = asyncio.Semaphore(settings.concurrency)
    failures: list[str] = []

    async def run(item: Item, responder: str, mode: str) -> None:
        async with semaphore:
            try:
                route = plan.routes[Plan.item_key(item)]
                store.put(await ask(item, responder, mode, settings, pool, gateway, route, config))
                on_done(True)
            except Exception as exc:  # one failed answer must not end the run: it is retried next time
                failures.append(f"{item.task}/{item.id} by {responder} ({mode}): {exc}")
                on_done(False)

    pending = [job for job in plan.jobs if store.get(answer_key(job[0].task, job[0].id, job[1], job[2])) is None]
    await asyncio.gather(*(run(*job) for job in pending))
    return failures


# --- the run folder's manifest -----------------------------------------------------------------


def fingerprint_config(config: Config) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


def fingerprint_router(artifact: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in artifact.rglob("*") if p.is_file() and p.suffix in {".json", ".npz", ".npy", ".safetensors"}):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def write_manifest(folder: Path, settings: RunSettings, config: Config, specs: list[TaskSpec]) -> dict:
    """Record what the run depends on; refuse a folder that holds answers of another setup."""
    manifest = {
        "settings": {**asdict(settings), "systems": settings.systems},
        "fingerprints": {"config": fingerprint_config(config), "router": fingerprint_router(config.router.artifact),
                         "data": data_fingerprint(specs)},  # fmt: skip
    }
    path = folder / MANIFEST_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        same = ("seed", "suite", "limit", "gateway_url")
        if previous["fingerprints"] != manifest["fingerprints"] or any(
            previous["settings"].get(k) != manifest["settings"].get(k) for k in same
        ):
            raise RunError(
                f"{folder} holds a run with other settings or another config/router/data "
                f"(see {path}); use another --out folder"
            )
        manifest["settings"]["systems"] = list(dict.fromkeys([*previous["settings"]["systems"], *settings.systems]))
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2))
    return manifest
