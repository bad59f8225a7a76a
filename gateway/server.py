"""Running the gateway: the embedded expert process (when used), the app, uvicorn."""

from __future__ import annotations

import logging
import signal
from contextlib import ExitStack

import uvicorn

from expertmesh.config import Config
from experts.embedded.process import EmbeddedServerProcess
from experts.pool import ExpertPool
from gateway.app import build_app
from router.policy import RoutingPolicy

log = logging.getLogger(__name__)


def run_gateway(config: Config, policy: RoutingPolicy | None, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; the embedded server process is stopped on the way out."""
    # uvicorn handles SIGTERM itself, then re-raises it once it has shut down; turning
    # that into SystemExit lets the ExitStack below stop the child processes.
    signal.signal(signal.SIGTERM, _exit_quietly)
    embedded_models = sorted({e.model for e in config.experts if e.is_embedded})
    with ExitStack() as stack:
        embedded_url = None
        if embedded_models:
            embedded_url = stack.enter_context(EmbeddedServerProcess(config.embedded, embedded_models))
        app = build_app(config, policy, ExpertPool(config, embedded_url))
        log.info("expertmesh gateway on http://%s:%d/v1 (experts: %s)", host, port, ", ".join(e.name for e in config.experts))
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def _exit_quietly(signum, frame) -> None:
    raise SystemExit(0)
