"""`expertmesh eval ...`: domain benchmark runs comparing routed, oracle and single-expert systems."""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from expertmesh.cli.common import ConfigOption, fail, load_or_exit, stderr

eval_app = typer.Typer(help="Evaluate the routed system against oracle and single experts.", no_args_is_help=True)


@eval_app.command("ls")
def list_tasks() -> None:
    """The tasks (one YAML file each in eval/tasks/) and the suites that group them."""
    from rich.console import Console
    from rich.table import Table

    from expertmesh.eval.bench_tasks import TaskError, all_suites, all_tasks

    try:
        tasks, suites = all_tasks(), all_suites()
    except TaskError as exc:
        fail(str(exc))
    table = Table("task", "domain", "answer kind", "source", "description")
    for spec in tasks.values():
        table.add_row(spec.name, spec.domain or "per item", spec.kind, spec.source, spec.description)
    suite_table = Table("suite", "items per task", "tasks")
    for name, suite in suites.items():
        suite_table.add_row(name, str(suite.items_per_task or "all"), ", ".join(suite.tasks))
    Console().print(table, suite_table)


@eval_app.command("run")
def run(
    suite: Annotated[str, typer.Option(help="A suite (or a single task) from `expertmesh eval ls`.")],
    config: ConfigOption = None,
    systems: Annotated[str, typer.Option(help="Comma-separated: routed, oracle, general, random, top-p (fan-out), expert:NAME, experts (each alone).")] = "routed,oracle,general,random",
    limit: Annotated[int | None, typer.Option(min=1, help="Items per task (default: the suite's).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: eval-runs/<suite>-seed<seed>).")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Requests to experts in flight at once (default: 1 if every expert is the embedded model, which generates one answer at a time; else 4).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for item sampling, random routing and generation.")] = 0,
    scoring: Annotated[str, typer.Option(help="generate, likelihood or both (comma-separated).")] = "generate,likelihood",
    gateway: Annotated[str | None, typer.Option(help="Base URL of a running gateway (…/v1): routed answers go through it.")] = None,
) -> None:
    """Run a suite: every system's answers, stored as they arrive (a rerun resumes), then the report."""
    from expertmesh.cli.router_setup import load_or_train_policy
    from expertmesh.eval.bench_run import (
        MODES,
        RunError,
        RunSettings,
        check_systems,
        default_concurrency,
        make_plan,
        suite_tasks,
        write_manifest,
    )
    from expertmesh.eval.bench_tasks import TaskError
    from expertmesh.router.classifier import ArtifactError

    cfg = load_or_exit(config)
    concurrency = concurrency or default_concurrency(cfg, gateway)
    modes = tuple(m.strip() for m in scoring.split(",") if m.strip())
    if not modes or set(modes) - set(MODES):
        fail(f"--scoring: expected generate, likelihood or both, got '{scoring}'")
    try:
        chosen = check_systems([s.strip() for s in systems.split(",") if s.strip()], cfg)
        settings = RunSettings(suite=suite, systems=chosen, limit=limit, seed=seed, concurrency=concurrency,
                               modes=modes, gateway_url=gateway)  # fmt: skip
        specs, _ = suite_tasks(settings)
        folder = out or Path("eval-runs") / f"{suite}-seed{seed}"
        write_manifest(folder, settings, cfg, specs)
        policy = load_or_train_policy(cfg, stderr)
        plan = make_plan(settings, cfg, policy, chosen)
    except (RunError, TaskError, ArtifactError, ValueError) as exc:
        fail(str(exc))
    _write_plan(folder, plan, settings)
    failures = _answer(plan, folder, settings, cfg)
    _finish(folder, failures)


def _write_plan(folder: Path, plan, settings) -> None:
    items = [{"key": plan.item_key(i), "task": i.task, "id": i.id, "domain": i.domain, "kind": i.kind} for i in plan.items]
    body = {"seed": settings.seed, "modes": list(settings.modes), "items": items, "routes": plan.routes,
            "responders": plan.responders}  # fmt: skip
    (folder / "plan.json").write_text(json.dumps(body))


def _answer(plan, folder: Path, settings, cfg) -> list[str]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from expertmesh.eval.answer_store import AnswerStore, answer_key
    from expertmesh.eval.bench_run import TOP_P_RESPONDER, answer_all
    from expertmesh.experts.embedded.process import EmbeddedServerProcess
    from expertmesh.experts.pool import ExpertPool

    store = AnswerStore(folder)
    done = sum(store.get(answer_key(i.task, i.id, r, m)) is not None for i, r, m in plan.jobs)
    if store.torn_lines:
        stderr.print(f"{store.torn_lines} answer line(s) cut short by an interruption: asked again")
    responders = {responder for _, responder, _ in plan.jobs}
    if TOP_P_RESPONDER in responders:  # a fan-out may ask any expert
        responders |= {e.name for e in cfg.experts}
    embedded = sorted({e.model for e in cfg.experts if e.is_embedded and e.name in responders})
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with ExitStack() as stack, Progress(*columns, console=stderr) as progress:
        task = progress.add_task("answers", total=len(plan.jobs), completed=done)
        embedded_url = None
        if embedded and done < len(plan.jobs):
            progress.update(task, description="starting the embedded expert")
            embedded_url = stack.enter_context(EmbeddedServerProcess(cfg.embedded, embedded))
        progress.update(task, description="answers")

        async def main() -> list[str]:
            import openai

            needs_embedded = any(e.is_embedded for e in cfg.experts)
            pool = ExpertPool(cfg, embedded_url) if embedded_url or not needs_embedded else None
            gateway = openai.AsyncOpenAI(base_url=settings.gateway_url, api_key="none", max_retries=0, timeout=600) if settings.gateway_url else None
            try:
                return await answer_all(plan, store, settings, cfg, pool, gateway, lambda ok: progress.advance(task))
            finally:
                if pool is not None:
                    await pool.aclose()

        return asyncio.run(main())


def _finish(folder: Path, failures: list[str]) -> None:
    from expertmesh.eval.bench_report import write_report

    results = write_report(folder)
    _print_summary(results)
    stderr.print(f"report: {folder / 'report.md'} (and report.json, PNG plots)")
    if failures:
        for failure in failures[:10]:
            stderr.print(f"[red]failed[/] {failure}", highlight=False)
        fail(f"{len(failures)} answer(s) failed; run the same command again to ask for them", code=1)


def _print_summary(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = {k: v for k, v in results["systems"].items() if v["mode"] == "generate"}
    domains = sorted({d for v in rows.values() for d in v["domains"]})
    table = Table("system", *domains, "all", title="accuracy (generate) per domain")
    for v in rows.values():
        table.add_row(v["system"], *(f"{v['domains'][d]['accuracy']:.2f}" if d in v["domains"] else "–" for d in domains),
                      f"{v['overall']['accuracy']:.2f}")  # fmt: skip
    Console(stderr=True).print(table)


@eval_app.command("report")
def report(folder: Annotated[Path, typer.Argument(help="A run folder written by `expertmesh eval run`.")]) -> None:
    """Re-render a run's report (report.md, report.json, plots) from its stored answers."""
    if not (folder / "plan.json").is_file():
        fail(f"{folder} is not an evaluation run folder (no plan.json)")
    _finish(folder, [])
