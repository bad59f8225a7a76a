"""Running model-written code against a task's tests (MBPP), in a subprocess that:

- runs in a fresh temporary directory (its cwd, HOME and TMPDIR), deleted afterwards;
- has a wall-clock time-out (the whole process group is killed) and CPU, memory, file-size
  and open-file limits (setrlimit);
- cannot write, delete or rename outside that directory, start processes, open sockets or
  load C libraries through ctypes: a Python audit hook, installed before the code runs,
  refuses those operations (audit hooks cannot be removed from inside the process).

This guards against the accidents that generated code makes (an os.remove of the wrong
path, an infinite loop, a fork bomb, a huge allocation). It is not a security boundary
against code written to escape: run untrusted benchmarks in a container as well.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TIME_LIMIT_S = 10.0
MEMORY_LIMIT_BYTES = 1 << 30
FILE_SIZE_LIMIT_BYTES = 16 << 20

# Runs in the child before the model's code. SANDBOX is the temporary directory.
_GUARD = r'''
import os, sys
SANDBOX = os.path.realpath(os.getcwd())
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod",
                "os.chown", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
_REFUSED = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
            "socket.connect", "socket.bind", "socket.sendto", "ctypes.dlopen", "ctypes.dlsym", "os.kill", "os.killpg"}

def _inside(path):
    if isinstance(path, int):
        return True  # an already open descriptor
    real = os.path.realpath(os.fsdecode(path))
    return real == SANDBOX or real.startswith(SANDBOX + os.sep)

def _guard(event, args):
    if event in _REFUSED or (event == "import" and args[0] in ("ctypes", "_ctypes")):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in mode for c in "wax+")) or (mode is None and flags & _WRITE_FLAGS)
        if writes and not _inside(path):
            raise PermissionError(f"sandbox: writing {path} is not allowed")
    elif event in _PATH_EVENTS and not all(_inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
        raise PermissionError(f"sandbox: {event} outside the sandbox is not allowed")

sys.addaudithook(_guard)
del _guard
exec(compile(open("solution.py").read(), "solution.py", "exec"), {"__name__": "__main__"})
'''


@dataclass(frozen=True)
class Outcome:
    passed: bool
    summary: str  # "passed", "failed: AssertionError ...", "timed out after 10 s", "no code"


def extract_code(text: str) -> str:
    """The first ```python block (or any ``` block), else the whole text."""
    blocks = re.findall(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", text, flags=re.DOTALL)
    if blocks:
        return blocks[0]
    unterminated = re.search(r"```(?:python|py)?[ \t]*\n(.*)", text, flags=re.DOTALL)  # cut off by max_tokens
    return unterminated.group(1) if unterminated else text


def _limits(time_limit_s: float) -> None:
    import resource

    os.setsid()  # its own process group: a time-out kills everything it started
    resource.setrlimit(resource.RLIMIT_CPU, (int(time_limit_s) + 1, int(time_limit_s) + 2))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT_BYTES, FILE_SIZE_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def run_tests(code: str, tests: Sequence[str], setup: str = "", time_limit_s: float = TIME_LIMIT_S) -> Outcome:
    """Run setup + code + the asserts; passed when every assert holds within the limits."""
    if not code.strip():
        return Outcome(False, "no code")
    with tempfile.TemporaryDirectory(prefix="expertmesh-sandbox-") as folder:
        Path(folder, "solution.py").write_text("\n\n".join([setup, code, *tests]) + "\n")
        Path(folder, "guard.py").write_text(_GUARD)
        env = {"PATH": "/usr/bin:/bin", "HOME": folder, "TMPDIR": folder, "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONHASHSEED": "0"}  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, "-I", "guard.py"], cwd=folder, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, preexec_fn=lambda: _limits(time_limit_s),  # noqa: PLW1509 - before exec, no threads
        )  # fmt: skip
        try:
            _, stderr = process.communicate(timeout=time_limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return Outcome(False, f"timed out after {time_limit_s:g} s")
    if process.returncode == 0:
        return Outcome(True, "passed")
    last = stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {process.returncode}"]
    return Outcome(False, f"failed: {last[0][:200]}")
