"""Starting and stopping the embedded expert server as a child process."""

from __future__ import annotations

import sys

from expertmesh.config import EmbeddedConfig
from expertmesh.experts.embedded.model import SERVED_MODEL_NAME
from expertmesh.experts.process import ServerProcess, free_port


class EmbeddedServerProcess:
    """`with EmbeddedServerProcess(cfg) as url:` runs the server for the block's duration."""

    def __init__(self, config: EmbeddedConfig, served_model_names: list[str] | None = None) -> None:
        self.config = config
        self.names = served_model_names or [SERVED_MODEL_NAME]
        self.port = config.port or free_port(config.host)
        self.base_url = f"http://{config.host}:{self.port}/v1"
        self._server = ServerProcess(
            "the embedded expert server", self.command(), f"http://{config.host}:{self.port}/health",
            config.startup_timeout_s,
        )  # fmt: skip

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "expertmesh.experts.embedded",
            "--host", self.config.host,
            "--port", str(self.port),
            "--cache-dir", str(self.config.cache_dir),
            "--max-tokens-limit", str(self.config.max_tokens_limit),
            *[arg for name in self.names for arg in ("--served-model-name", name)],
        ]  # fmt: skip

    def start(self) -> str:
        self._server.start()
        self._server.wait_ready(poll_s=0.25)
        return self.base_url

    def stop(self) -> None:
        self._server.stop()

    @property
    def pid(self) -> int | None:
        return self._server.pid

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
