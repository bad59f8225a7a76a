"""`expertmesh experts ...`: the expert backends."""

from __future__ import annotations

from typing import Annotated

import typer

from expertmesh.cli_common import ConfigOption, load_or_exit

experts_app = typer.Typer(help="Run and inspect expert backends.", no_args_is_help=True)


@experts_app.command("embedded")
def embedded(
    config: ConfigOption = None,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
) -> None:
    """Run the embedded SmolLM2 expert server in the foreground (what `serve` starts for you)."""
    from experts.embedded.__main__ import main as run_embedded

    cfg = load_or_exit(config)
    names = sorted({expert.model for expert in cfg.experts if expert.is_embedded}) or None
    args = ["--host", cfg.embedded.host, "--port", str(port), "--cache-dir", str(cfg.embedded.cache_dir),
            "--max-tokens-limit", str(cfg.embedded.max_tokens_limit)]  # fmt: skip
    for name in names or []:
        args += ["--served-model-name", name]
    run_embedded(args)


@experts_app.command("list")
def list_experts(config: ConfigOption = None) -> None:
    """The configured experts: name, domains, backend and model."""
    from rich.console import Console
    from rich.table import Table

    cfg = load_or_exit(config)
    table = Table("expert", "domains", "backend", "model", "timeout (s)")
    for expert in cfg.experts:
        table.add_row(expert.name, ", ".join(expert.domains), str(expert.backend), expert.model, f"{expert.timeout_s:g}")
    Console().print(table)
