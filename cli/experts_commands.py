"""`expertmesh experts ...`: the expert backends."""

from __future__ import annotations

from typing import Annotated

import typer

from expertmesh.cli.common import ConfigOption, fail, load_or_exit

experts_app = typer.Typer(help="Run and inspect expert backends.", no_args_is_help=True)


@experts_app.command("embedded")
def embedded(
    config: ConfigOption = None,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
) -> None:
    """Run the embedded SmolLM2 expert server in the foreground (what `serve` starts for you)."""
    from expertmesh.experts.embedded.__main__ import main as run_embedded

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
        table.add_row(
            expert.name,
            ", ".join(expert.domains),
            ", ".join(expert.backend_urls) or "embedded",
            expert.model,
            f"{expert.timeout_s:g}",
        )
    Console().print(table)


@experts_app.command("prepare")
def prepare(config: ConfigOption = None) -> None:
    """Convert the packaged SmolLM2 GGUF into the safetensors folder that vLLM serves (cached)."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from expertmesh.experts.packaged import prepare_model

    cfg = load_or_exit(config)
    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("checking the cache", total=None)
        try:
            folder = prepare_model(
                cfg.embedded.cache_dir,
                on_step=lambda step: progress.update(task, description=step),
            )
        except RuntimeError as exc:
            fail(str(exc))
        progress.update(task, description="ready", total=1, completed=1)
    print(folder)


@experts_app.command("serve")
def serve_experts(config: ConfigOption = None) -> None:
    """Start the vLLM servers that the configuration's experts need, wait until each is healthy,
    print their URLs, and stop them all on Ctrl-C or SIGTERM."""
    import signal
    import time

    from rich.console import Console

    from expertmesh.config import ConfigError
    from expertmesh.experts.process import ServerStartError
    from expertmesh.experts.vllm import VllmFleet, plan_servers

    cfg = load_or_exit(config)
    console = Console(stderr=True, highlight=False)
    servers = plan_servers(cfg)
    if not servers:
        fail("no expert in this configuration has a 'serve' section: nothing to start")
    # SIGTERM (docker stop, systemd, kill) stops the servers as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with console.status("preparing models"):
            fleet = VllmFleet(cfg, servers)
        for process in fleet.processes:
            console.print(f"starting {process.label}; log: {process.log_file}")
        with console.status(f"waiting for {len(servers)} vLLM server(s) to answer /health (minutes on a CPU)"):
            fleet.start(
                on_ready=lambda s: console.print(
                    f"[green]ready[/] {s.base_url}  models: {', '.join(s.served_names + tuple(n for n, _ in s.loras))}"
                )
            )
        print("\n".join(server.base_url for server in servers), flush=True)  # stdout: for scripts
        console.print("all servers ready; Ctrl-C or SIGTERM stops them")
        while True:
            time.sleep(5)
            fleet.check_alive()
    except (ConfigError, ServerStartError) as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        console.print("stopping the vLLM servers")
    finally:
        if fleet is not None:
            fleet.stop()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
