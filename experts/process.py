"""A model server as a child process: started in its own process group, ready when its
/health answers, stopped with SIGTERM (then SIGKILL) to the whole group, so that nothing it
spawned outlives it. Linux also SIGTERMs it if expertmesh itself dies (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 25  # of a server's log, shown when it fails to start


class ServerStartError(RuntimeError):
    """A server exited or did not become healthy in time."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`with ServerProcess(...) as proc:` runs the server for the block's duration."""

    def __init__(
        self,
        label: str,
        command: list[str],
        health_url: str,
        startup_timeout_s: float,
        env: Mapping[str, str] | None = None,
        log_file: Path | None = None,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.label, self.command, self.health_url = label, command, health_url
        self.startup_timeout_s, self.stop_timeout_s = startup_timeout_s, stop_timeout_s
        self.env = {**os.environ, **(env or {})}
        self.log_file = log_file
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        """Launch without waiting (several servers start in parallel); then wait_ready()."""
        log.info("starting %s: %s", self.label, " ".join(self.command))
        output = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            output = self.log_file.open("wb")
        try:
            # start_new_session: its own process group, so that stopping it stops its children too.
            self._process = subprocess.Popen(
                self.command, env=self.env, stdout=output, stderr=subprocess.STDOUT if output else None,
                start_new_session=True, preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads touch it before exec
            )  # fmt: skip
        finally:
            if output is not None:
                output.close()  # the child holds its own copy

    def wait_ready(self, poll_s: float = 0.5) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.poll_ready():
                return
            time.sleep(poll_s)
        self.stop()
        raise ServerStartError(f"{self.label} was not ready after {self.startup_timeout_s:.0f} s{self._log_hint()}")

    def poll_ready(self) -> bool:
        """True once /health answers 200; raises if the process has exited."""
        assert self._process is not None, "start() first"
        if self._process.poll() is not None:
            code = self._process.returncode
            self._process = None
            raise ServerStartError(f"{self.label} exited with code {code} during start-up{self._log_hint()}")
        try:
            return httpx.get(self.health_url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning(
                "%s did not stop within %.0f s of SIGTERM; killing it",
                self.label,
                self.stop_timeout_s,
            )
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        # Children that outlived the leader (vLLM's engine processes) are still in its group.
        _signal_group(process.pid, signal.SIGKILL)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _log_hint(self) -> str:
        if self.log_file is None or not self.log_file.is_file():
            return ""
        tail = self.log_file.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        return f"; the end of its log ({self.log_file}):\n" + "\n".join(tail)

    def __enter__(self) -> ServerProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group is already gone


def die_with_parent() -> None:
    """Ask Linux to SIGTERM the calling process if its parent dies, even by SIGKILL (called in a
    child: before exec, or first thing in a worker)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the normal shutdown path still stops the child
