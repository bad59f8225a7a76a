"""All the experts of a configuration, each with its client."""

from __future__ import annotations

import asyncio

from expertmesh.config import Config
from expertmesh.experts.client import ExpertClient


class ExpertPool:
    def __init__(self, config: Config, embedded_base_url: str | None = None) -> None:
        self.clients: dict[str, ExpertClient] = {}
        for expert in config.experts:
            if expert.is_embedded:
                if embedded_base_url is None:
                    raise ValueError(
                        f"expert '{expert.name}' uses the embedded backend, but no embedded server is running"
                    )
                base_url = embedded_base_url
            else:
                base_url = str(expert.backend)
            self.clients[expert.name] = ExpertClient(expert, base_url)

    def get(self, name: str) -> ExpertClient | None:
        return self.clients.get(name)

    @property
    def names(self) -> list[str]:
        return list(self.clients)

    async def health(self) -> dict[str, dict]:
        results = await asyncio.gather(*(client.is_healthy() for client in self.clients.values()))
        return {name: {"ok": ok, "detail": detail} for name, (ok, detail) in zip(self.clients, results)}

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients.values()))
