"""The gateway's readiness, from a background health check rather than per probe.

Every `resilience.health_check.interval_s`, each replica of each expert is asked for its
models (GET /models); /readyz then reads the cached result, so a load balancer probing it
every second adds no load on the experts. The gateway is ready while every domain it routes
to has an expert that can answer: its own, or one of its fallbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from expertmesh.config import Config
from expertmesh.experts.pool import ExpertPool

log = logging.getLogger(__name__)


class HealthMonitor:
    def __init__(self, config: Config, experts: ExpertPool) -> None:
        self.settings = config.resilience.health_check
        self.experts = experts
        self.expert_for_domain = config.expert_for_domain()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """The first check (so the first probe has an answer), then the periodic ones."""
        await self.check()
        self._task = asyncio.create_task(self._loop(), name="expertmesh-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check(self) -> None:
        await self.experts.check(self.settings.timeout_s)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                await self.check()
            except Exception:  # a failed round must not end the checking
                log.exception("health check failed")

    def unserved_domains(self) -> list[str]:
        """Domains for which neither the expert nor any of its fallbacks can take a request now."""
        return [
            domain for domain, expert in self.expert_for_domain.items()
            if not any(client.replicas.any_up for client in self.experts.chain(expert))
        ]  # fmt: skip
