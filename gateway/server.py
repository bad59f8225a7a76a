"""Running the gateway: the embedded expert process (when used), the app, uvicorn.

With `gateway.workers` > 1, uvicorn's supervisor runs that many gateway processes on one
listening socket; each rebuilds the app in `worker_app` from the parent's validated config and
loads its own router, and they share the parent's embedded expert server.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import tempfile
from contextlib import ExitStack

import uvicorn
from fastapi import FastAPI

from expertmesh.config import Config
from expertmesh.experts.embedded.process import EmbeddedServerProcess
from expertmesh.experts.pool import ExpertPool
from expertmesh.experts.process import die_with_parent
from expertmesh.gateway.app import build_app
from expertmesh.gateway.metrics import MULTIPROC_ENV
from expertmesh.router.classifier import load_classifier
from expertmesh.router.onnx_minilm import THREADS_ENV, router_threads
from expertmesh.router.policy import RoutingPolicy

log = logging.getLogger(__name__)

# What the parent hands its worker processes (spawned: they inherit the environment).
WORKER_CONFIG_ENV = "EXPERTMESH_WORKER_CONFIG"
WORKER_EMBEDDED_URL_ENV = "EXPERTMESH_WORKER_EMBEDDED_URL"


def run_gateway(config: Config, policy: RoutingPolicy | None, host: str, port: int, workers: int = 1) -> None:
    """Serve until SIGINT/SIGTERM; the embedded server process is stopped on the way out.

    One worker serves with `policy` (None: named experts only). With several, each worker loads
    the router from `router.artifact` itself, and `policy` is not used (pass None).
    """
    limited = [key.name for key in config.gateway.keys if key.limited]
    if workers > 1 and limited and not config.gateway.redis_url:
        # Each process would count on its own: a key would get up to `workers` times its limits.
        raise ValueError(f"gateway.keys: keys {limited} have limits, which {workers} worker processes can only share "
                         "through Redis: set gateway.redis_url (or run one worker)")
    # uvicorn handles SIGTERM itself, then re-raises it once it has shut down; turning
    # that into SystemExit lets the ExitStack below stop the child processes.
    signal.signal(signal.SIGTERM, _exit_quietly)
    embedded_models = sorted({e.model for e in config.experts if e.is_embedded})
    with ExitStack() as stack:
        embedded_url = None
        if embedded_models:
            embedded_url = stack.enter_context(EmbeddedServerProcess(config.embedded, embedded_models))
        experts = ", ".join(e.name for e in config.experts)
        log.info("expertmesh gateway on http://%s:%d/v1 (%d worker(s); experts: %s)", host, port, workers, experts)
        if workers == 1:
            app = build_app(config, policy, ExpertPool(config, embedded_url))
            uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
            return
        _return_freed_memory()  # the router the caller checked and dropped: ~100 MB back
        _hand_to_workers(config, embedded_url, workers)
        if not os.environ.get(MULTIPROC_ENV):  # the workers add up their metrics through files here
            os.environ[MULTIPROC_ENV] = stack.enter_context(tempfile.TemporaryDirectory(prefix="expertmesh-metrics-"))
        uvicorn.run("expertmesh.gateway.server:worker_app", factory=True, workers=workers, host=host, port=port,
                    log_level="warning", access_log=False)  # fmt: skip


def _hand_to_workers(config: Config, embedded_url: str | None, workers: int) -> None:
    os.environ[WORKER_CONFIG_ENV] = config.model_dump_json()
    os.environ[WORKER_EMBEDDED_URL_ENV] = embedded_url or ""
    # The workers split the cores for the router's encoder instead of each taking all of them.
    os.environ.setdefault(THREADS_ENV, str(max(1, router_threads() // workers)))


def _return_freed_memory() -> None:
    """Collect, then ask glibc to give freed heap pages back to the OS (the supervisor idles)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the memory stays reserved, nothing else changes


def worker_app() -> FastAPI:
    """The app in one of uvicorn's worker processes (`gateway.workers` > 1)."""
    die_with_parent()  # a supervisor killed with SIGKILL must not leave workers behind
    config = Config.model_validate_json(os.environ[WORKER_CONFIG_ENV])
    policy = RoutingPolicy(load_classifier(config.router.artifact), config)
    return build_app(config, policy, ExpertPool(config, os.environ.get(WORKER_EMBEDDED_URL_ENV) or None))


def _exit_quietly(signum, frame) -> None:
    raise SystemExit(0)
