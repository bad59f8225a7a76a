"""The `expertmesh` command: serve the gateway, train and evaluate routers, route a text."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from expertmesh.cli.common import ConfigOption, fail, load_or_exit, stderr
from expertmesh.cli.deploy_commands import deploy_app
from expertmesh.cli.eval_commands import eval_app
from expertmesh.cli.experts_commands import experts_app
from expertmesh.cli.log_commands import log_app
from expertmesh.cli.router_commands import router_app

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
app.add_typer(router_app, name="router")
app.add_typer(experts_app, name="experts")
app.add_typer(eval_app, name="eval")
app.add_typer(log_app, name="log")
app.add_typer(deploy_app, name="deploy")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpx2", "httpcore", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Model loading progress bars add noise, not information, to our own progress display.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Override gateway.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override gateway.port.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Override gateway.workers (processes).")] = None,
) -> None:
    """Start the gateway (and the embedded expert server if the config uses it).

    If the router artifact does not exist yet, the default router is trained first.
    """
    from expertmesh.cli.router_setup import load_or_train_policy
    from expertmesh.gateway.server import run_gateway
    from expertmesh.router.classifier import ArtifactError

    cfg = load_or_exit(config)
    workers = workers or cfg.gateway.workers
    try:
        policy = load_or_train_policy(cfg, stderr)
    except (ArtifactError, ValueError) as exc:
        fail(str(exc))
    if workers > 1:
        policy = None  # it loads: each worker loads its own, and the supervisor keeps none (~260 MB)
    try:
        run_gateway(cfg, policy, host=host or cfg.gateway.host, port=port if port is not None else cfg.gateway.port,
                    workers=workers)  # fmt: skip
    except ValueError as exc:  # a setting that does not fit the worker count
        fail(str(exc))


@app.command()
def route(
    text: Annotated[str, typer.Argument(help="The user message to route.")],
    config: ConfigOption = None,
    router: Annotated[Path | None, typer.Option(help="Router artifact folder (default: router.artifact).")] = None,
) -> None:
    """Print the routing decision for one text, as JSON."""
    from expertmesh.cli.router_setup import load_policy
    from expertmesh.router.classifier import ArtifactError

    cfg = load_or_exit(config)
    try:
        policy = load_policy(cfg, router)
    except (ArtifactError, ValueError) as exc:
        fail(str(exc))
    decision = policy.route(text)
    typer.echo(json.dumps(decision.to_dict(), indent=2))


def main() -> None:
    app()
