"""Real Redis and PostgreSQL servers for the tests, on 127.0.0.1, each in a folder of its own,
started and stopped by the tests (scripts/install-services.sh installs them from Debian's packages).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

STARTUP_S = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log.read_text()[-2000:] if log else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start listening on port {port}")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _need(program: str | None, name: str) -> str:
    if program is None:
        pytest.fail(f"{name} is not installed: run scripts/install-services.sh (make install-test does)")
    return program


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server (no persistence); yields its redis:// URL."""
    program = _need(shutil.which("redis-server"), "redis-server")
    port = _free_port()
    process = subprocess.Popen([program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_for_port(port, process, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process)


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(_need(initdb, "PostgreSQL (initdb)")).parent


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster (initdb, trust auth); yields its postgresql:// URL. As root
    the server runs as the `postgres` user that Debian's package made (it refuses to run as root)."""
    bindir = _postgres_bin()
    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    # Not under the tests' TMPDIR: that folder is private to this user, and the server may run as another.
    folder = Path(tempfile.mkdtemp(prefix="expertmesh-pg-", dir="/tmp"))
    data, log = folder / "data", folder / "server.log"
    if as_root:
        shutil.chown(folder, "postgres", "postgres")
    port = _free_port()
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "--no-sync", "-E", "UTF8"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    # fsync off: a test cluster need not survive a power cut, and its writes are then fast.
    process = subprocess.Popen([*run_as, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                                "-k", str(folder), "-c", "fsync=off", "-c", "synchronous_commit=off"],
                               stdout=subprocess.DEVNULL, stderr=log.open("w"))  # fmt: skip
    try:
        _wait_for_port(port, process, "PostgreSQL", log)
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        _wait_for_connection(url)
        yield url
    finally:
        _stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_connection(url: str) -> None:
    import psycopg

    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:  # "the database system is starting up"
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
