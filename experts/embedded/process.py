"""Starting and stopping the embedded expert server as a child process."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from expertmesh.config import EmbeddedConfig
from experts.embedded.model import SERVED_MODEL_NAME

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedServerProcess:
    """`with EmbeddedServerProcess(cfg) as url:` runs the server for the block's duration."""

    def __init__(self, config: EmbeddedConfig, served_model_names: list[str] | None = None) -> None:
        self.config = config
        self.names = served_model_names or [SERVED_MODEL_NAME]
        self.port = config.port or free_port(config.host)
        self.base_url = f"http://{config.host}:{self.port}/v1"
        self._process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "experts.embedded",
            "--host", self.config.host,
            "--port", str(self.port),
            "--cache-dir", str(self.config.cache_dir),
            "--max-tokens-limit", str(self.config.max_tokens_limit),
            *[arg for name in self.names for arg in ("--served-model-name", name)],
        ]  # fmt: skip

    def start(self) -> str:
        log.info("starting the embedded expert server on %s", self.base_url)
        # Its own process group, so that stopping it also stops anything it spawned.
        self._process = subprocess.Popen(self.command(), start_new_session=True, preexec_fn=_die_with_parent)
        self._wait_ready()
        return self.base_url

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.config.startup_timeout_s
        health = self.base_url.removesuffix("/v1") + "/health"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"the embedded expert server exited with code {self._process.returncode} during start-up"
                )
            try:
                if httpx.get(health, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"the embedded expert server was not ready after {self.config.startup_timeout_s:.0f} s"
        )

    def stop(self, grace_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()



def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it if its parent dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the normal shutdown path still stops the child
