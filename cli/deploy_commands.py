"""`expertmesh deploy plan`: replicas per expert (and for the gateway) from the traffic, as a
Kustomize overlay on deploy/kubernetes/overlays/multi-node."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from expertmesh.cli import capacity
from expertmesh.cli.common import fail, load_or_exit
from expertmesh.cli.log_commands import parse_moment

deploy_app = typer.Typer(help="Plan a Kubernetes deployment (deploy/kubernetes).", no_args_is_help=True)
KUBERNETES = Path("deploy/kubernetes")


def _gpus(values: list[str]) -> dict[str, int]:
    gpus = {}
    for value in values:
        expert, _, count = value.partition("=")
        if not count.isdigit() or int(count) < 1:
            fail(f"--gpus {value}: write expert=count, e.g. general=2")
        gpus[expert] = int(count)
    return gpus


@deploy_app.command("plan")
def plan_command(
    traffic: Annotated[
        str,
        typer.Option(
            help="A decision log (postgresql://..., sqlite:///..., or a .db file) "
            "or shares by expert or domain: 'medical=0.3,legal=0.1,...'."
        ),
    ],
    rps: Annotated[float, typer.Option(min=0.001, help="The peak requests/s the deployment must serve.")],
    out: Annotated[Path, typer.Option(help="The overlay folder to write.")] = KUBERNETES / "overlays/planned",
    base: Annotated[Path, typer.Option(help="The overlay the plan scales.")] = KUBERNETES / "overlays/multi-node",
    config: Annotated[Path, typer.Option(help="The gateway configuration the cluster runs.")] = KUBERNETES
    / "base/expertmesh.yaml",
    since: Annotated[str, typer.Option(help="The log's period: a time ago (7d) or an ISO date.")] = "7d",
    gpus: Annotated[
        list[str],
        typer.Option(
            help="GPUs per replica of an expert (default 1), e.g. general=2 (multi-node's tensor-parallel general)."
        ),
    ] = ["general=2"],  # noqa: B006
    gpu_tokens_per_s: Annotated[
        float,
        typer.Option(min=1, help="Output tokens/s of one GPU's vLLM replica (default: MLPerf v5.1, H100, 8B, server)."),
    ] = capacity.GPU_TOKENS_PER_S,
    tokens_per_request: Annotated[
        float | None,
        typer.Option(min=1, help="Completion tokens per request (default: the log's mean per expert, else 350)."),
    ] = None,
    gateway_rps_per_core: Annotated[
        float, typer.Option(min=1, help="Routed requests/s per gateway worker (BENCHMARKS.md).")
    ] = capacity.GATEWAY_RPS_PER_CORE,
    gateway_cores: Annotated[int, typer.Option(min=1, help="Worker processes per gateway replica.")] = 4,
    utilisation: Annotated[
        float, typer.Option(min=0.05, max=1, help="Planned share of each replica's capacity.")
    ] = 0.7,
) -> None:
    """Replicas per expert and for the gateway, written as a Kustomize overlay, with the arithmetic."""
    os.environ.setdefault("EXPERTMESH_API_KEY", "unused-for-planning")  # ${VAR}s the config reads
    cfg = load_or_exit(config)
    try:
        seen = capacity.read_traffic(traffic, cfg, parse_moment(since))
    except Exception as exc:  # noqa: BLE001 - a log that cannot be read, or bad shares: say which
        fail(f"--traffic: {exc}")
    experts = [expert.name for expert in cfg.experts]
    result = capacity.plan(
        seen,
        rps,
        experts,
        _gpus(gpus),
        gpu_tokens_per_s,
        tokens_per_request,
        gateway_rps_per_core,
        gateway_cores,
        utilisation,
    )
    _show(result, seen, gpu_tokens_per_s)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kustomization.yaml").write_text(capacity.overlay(result, os.path.relpath(base.resolve(), out.resolve())))
    Console().print(f"wrote {out / 'kustomization.yaml'}: kubectl apply -k {out}")


def _show(result: capacity.Plan, seen: capacity.Traffic, gpu_tokens_per_s: float) -> None:
    source = f"{seen.requests:,} logged answers" if seen.requests else "the given shares"
    table = Table(
        title=f"{result.rps:g} requests/s, shares from {source}; each replica planned at "
        f"{result.utilisation:.0%} of {gpu_tokens_per_s:,.0f} tokens/s per GPU"
    )
    for column in (
        "expert",
        "share",
        "req/s",
        "tokens/req",
        "tokens/s needed",
        "per replica",
        "GPUs/replica",
        "replicas",
        "GPUs",
    ):
        table.add_column(column, justify="left" if column == "expert" else "right")
    for e in result.experts:
        table.add_row(
            e.expert,
            f"{e.share:.1%}",
            f"{e.requests_per_s:.1f}",
            f"{e.tokens_per_request:.0f}",
            f"{e.tokens_per_s:,.0f}",
            f"{e.replica_tokens_per_s:,.0f}",
            str(e.gpus_per_replica),
            str(e.replicas),
            str(e.replicas * e.gpus_per_replica),
        )
    table.add_row(
        "gateway",
        "",
        f"{result.rps:g}",
        "",
        "",
        f"{result.gateway_replica_rps:,.0f} req/s",
        "",
        str(result.gateway_replicas),
        "0",
        end_section=True,
    )
    table.add_row("total", "", "", "", "", "", "", "", str(result.gpus))
    Console(width=140).print(table)
    Console().print(
        "replicas = max(1, ceil(req/s x tokens/req / per replica)); gateway: ceil(req/s / (req/s per core "
        "x cores x utilisation)), at least 2",
        highlight=False,
    )
