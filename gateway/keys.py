"""API keys: who is calling, which experts they may use, and whether their limits let them in."""

from __future__ import annotations

import hashlib
import logging
import time

from expertmesh.config import GatewayConfig, KeyConfig
from expertmesh.gateway.errors import APIError
from expertmesh.gateway.ratelimit import Limiter, Refusal, build_limiter, retry_after_header

log = logging.getLogger(__name__)

# When no key is configured, every caller is this one: unlimited, every expert, all traffic.
ANONYMOUS = KeyConfig(name="anonymous", key="-", traffic="all")
LIMITER_WARNING_EVERY_S = 30.0


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class KeyRing:
    """Looks a bearer token up among the configured keys and applies the key's limits.

    Keys are looked up by the SHA-256 of the token: the lookup's timing depends on the digest,
    not on how much of a real key the caller guessed."""

    def __init__(self, config: GatewayConfig, limiter: Limiter | None = None) -> None:
        keys = config.all_keys()
        self.required = bool(keys)
        self._by_digest = {_digest(key.key): key for key in keys}
        self.limiter = limiter or build_limiter(config.redis_url, config.rate_limit_burst_s)
        self._limiter_warned = 0.0

    def identify(self, authorization: str) -> KeyConfig | None:
        """The key an Authorization header carries; None if it carries no valid one."""
        if not self.required:
            return ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        return self._by_digest.get(_digest(token.strip()))

    def authenticate(self, authorization: str) -> KeyConfig:
        key = self.identify(authorization)
        if key is None:
            raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"www-authenticate": "Bearer"})  # fmt: skip
        return key

    async def admit(self, key: KeyConfig) -> Refusal | None:
        """The key's limits for one more request. A limiter that cannot be reached (Redis down)
        lets requests through: the limits are for fairness, and an outage of them must not
        become an outage of the gateway. It is logged, at most every 30 s."""
        if not key.limited:
            return None
        try:
            return await self.limiter.admit(key)
        except Exception as exc:  # noqa: BLE001 - any limiter failure: admit, and say so
            self._warn(exc)
            return None

    async def spend(self, key: KeyConfig, tokens: int) -> None:
        if key.tokens_per_minute is None or tokens <= 0:
            return
        try:
            await self.limiter.spend(key, tokens)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._limiter_warned >= LIMITER_WARNING_EVERY_S:
            self._limiter_warned = now
            log.warning("rate limits not applied: the limiter failed (%s: %s)", type(exc).__name__, exc)

    async def aclose(self) -> None:
        await self.limiter.aclose()


def rate_limit_error(key: KeyConfig, refusal: Refusal) -> APIError:
    """OpenAI's 429: type "requests" or "tokens", code rate_limit_exceeded, and Retry-After."""
    unit = "requests per minute (RPM)" if refusal.limit == "requests" else "tokens per minute (TPM)"
    message = (f"Rate limit reached for key '{key.name}' on {unit}: limit {refusal.per_minute}. "
               f"Please try again in {refusal.retry_after_s:.3g}s.")  # fmt: skip
    return APIError(429, message, refusal.limit, code="rate_limit_exceeded",
                    headers={"retry-after": retry_after_header(refusal)})  # fmt: skip


def may_use(key: KeyConfig, expert: str) -> bool:
    return not key.experts or expert in key.experts
