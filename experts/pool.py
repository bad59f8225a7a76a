"""All the experts of a configuration, each with its client, and the order to ask them in."""

from __future__ import annotations

import asyncio

from expertmesh.config import Config
from expertmesh.experts.client import ExpertClient, RetryListener
from expertmesh.experts.replicas import StateListener


class ExpertPool:
    def __init__(self, config: Config, embedded_base_url: str | None = None) -> None:
        self.clients: dict[str, ExpertClient] = {}
        for expert in config.experts:
            if expert.is_embedded:
                if embedded_base_url is None:
                    raise ValueError(
                        f"expert '{expert.name}' uses the embedded backend, but no embedded server is running"
                    )
                urls = [embedded_base_url]
            else:
                urls = expert.backend_urls
            self.clients[expert.name] = ExpertClient(expert, urls, config.resilience)
        # The experts to ask for each one, in order: itself, then its fallbacks.
        self.chains: dict[str, list[ExpertClient]] = {
            expert.name: [self.clients[name] for name in dict.fromkeys([expert.name, *expert.fallbacks])]
            for expert in config.experts
        }

    def listen(self, on_state: StateListener, on_retry: RetryListener) -> None:
        """Tell `on_state` of every breaker change and `on_retry` of every retry (the metrics)."""
        for client in self.clients.values():
            client.on_retry = on_retry
            for replica in client.replicas.replicas:
                replica.on_state = on_state
                on_state(client.name, replica.index, replica.state())

    def trace(self, tracer) -> None:
        """Trace every expert call with `tracer` (an OpenTelemetry Tracer; gateway/tracing.py)."""
        for client in self.clients.values():
            client.tracer = tracer

    def get(self, name: str) -> ExpertClient | None:
        return self.clients.get(name)

    def chain(self, name: str) -> list[ExpertClient]:
        """The expert `name`, then its fallbacks."""
        return self.chains[name]

    @property
    def names(self) -> list[str]:
        return list(self.clients)

    async def check(self, timeout_s: float = 3.0) -> None:
        """Every replica of every expert checked now; each keeps its reading."""
        await asyncio.gather(*(client.check_replicas(timeout_s) for client in self.clients.values()))

    def report(self) -> dict[str, dict]:
        """Each expert's state from the last check and its breakers, without checking."""
        return {
            name: {"ok": client.replicas.any_up, "replicas": [r.report() for r in client.replicas.replicas]}
            for name, client in self.clients.items()
        }

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients.values()))
