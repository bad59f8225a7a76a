"""Per-key limits: requests per minute and tokens per minute, as token buckets.

Each limited key has two buckets. The request bucket holds up to `burst_s` seconds' worth of the
per-minute rate and refills continuously; a request takes one token or is refused with how long
until one is back (the 429's Retry-After). The token bucket is debited with the tokens a request
used once its answer is complete (they are not known before), may go below zero, and refuses new
requests until it is positive again.

Counted in the gateway process by default (one process: `gateway.workers` 1), or in Redis
(`gateway.redis_url`) so that every worker process and every gateway replica shares one count:
one Lua script call per request, atomic in Redis, on Redis's own clock (replicas' clocks may differ).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

from expertmesh.config import KeyConfig

log = logging.getLogger(__name__)
SECONDS_PER_MINUTE = 60.0


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused: which limit, and when to come back."""

    limit: str  # "requests" or "tokens" (OpenAI's error type for a 429)
    per_minute: int
    retry_after_s: float


@dataclass(frozen=True)
class Bucket:
    capacity: float
    rate_per_s: float

    @classmethod
    def per_minute(cls, limit: int, burst_s: float) -> Bucket:
        rate = limit / SECONDS_PER_MINUTE
        return cls(capacity=max(1.0, rate * burst_s), rate_per_s=rate)


def _buckets(key: KeyConfig, burst_s: float) -> tuple[Bucket | None, Bucket | None]:
    requests = Bucket.per_minute(key.requests_per_minute, burst_s) if key.requests_per_minute else None
    # Tokens come in large, uneven amounts (one request may use thousands): the token bucket
    # holds a whole minute's worth, so one big request does not lock a key out for long.
    tokens = Bucket.per_minute(key.tokens_per_minute, SECONDS_PER_MINUTE) if key.tokens_per_minute else None
    return requests, tokens


class Limiter(Protocol):
    async def admit(self, key: KeyConfig) -> Refusal | None:
        """Take one request from the key's limits, or say why not (nothing is taken then)."""

    async def spend(self, key: KeyConfig, tokens: int) -> None:
        """Debit the tokens a finished request used."""

    async def aclose(self) -> None: ...


class _State:
    __slots__ = ("at", "level")

    def __init__(self, level: float, at: float) -> None:
        self.level, self.at = level, at

    def refill(self, bucket: Bucket, now: float) -> None:
        self.level = min(bucket.capacity, self.level + (now - self.at) * bucket.rate_per_s)
        self.at = now


class _KeyBuckets:
    """Each key's two buckets, worked out once (keys are few, and fixed at start)."""

    def __init__(self, burst_s: float) -> None:
        self.burst_s = burst_s
        self._of: dict[str, tuple[Bucket | None, Bucket | None]] = {}

    def buckets(self, key: KeyConfig) -> tuple[Bucket | None, Bucket | None]:
        found = self._of.get(key.name)
        if found is None:
            found = self._of[key.name] = _buckets(key, self.burst_s)
        return found


class LocalLimiter(_KeyBuckets):
    """The buckets in this process's memory: exact for one gateway process."""

    def __init__(self, burst_s: float) -> None:
        super().__init__(burst_s)
        self._state: dict[tuple[str, str], _State] = {}

    def _state_of(self, name: str, kind: str, bucket: Bucket, now: float) -> _State:
        state = self._state.get((name, kind))
        if state is None:
            state = self._state[(name, kind)] = _State(bucket.capacity, now)
        state.refill(bucket, now)
        return state

    async def admit(self, key: KeyConfig) -> Refusal | None:
        requests, tokens = self.buckets(key)
        now = time.monotonic()
        if tokens is not None:
            state = self._state_of(key.name, "tokens", tokens, now)
            if state.level <= 0:
                return Refusal("tokens", key.tokens_per_minute or 0, (1 - state.level) / tokens.rate_per_s)
        if requests is not None:
            state = self._state_of(key.name, "requests", requests, now)
            if state.level < 1:
                return Refusal("requests", key.requests_per_minute or 0, (1 - state.level) / requests.rate_per_s)
            state.level -= 1
        return None

    async def spend(self, key: KeyConfig, tokens: int) -> None:
        _, bucket = self.buckets(key)
        if bucket is not None and tokens > 0:
            self._state_of(key.name, "tokens", bucket, time.monotonic()).level -= tokens

    async def aclose(self) -> None:
        pass


# KEYS: the request bucket, the token bucket. ARGV: request capacity, request rate/s, token
# capacity, token rate/s (a capacity of 0: no such limit), tokens to debit first, 1 to admit a
# request (0: only the debit). Returns {0 or 1 (admitted), the limit that refused ("" /
# "requests" / "tokens"), wait in ms}.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function level(key, capacity, rate)
  local s = redis.call('HMGET', key, 'level', 'at')
  local l = tonumber(s[1]) or capacity
  local at = tonumber(s[2]) or now
  return math.min(capacity, l + math.max(0, now - at) * rate)
end
local function save(key, l, capacity, rate)
  redis.call('HSET', key, 'level', tostring(l), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((capacity - math.min(l, 0)) / rate * 1000) + 1000)
end
local rcap, rrate, tcap, trate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local debit, admit = tonumber(ARGV[5]), tonumber(ARGV[6])
if debit > 0 and tcap > 0 then
  save(KEYS[2], level(KEYS[2], tcap, trate) - debit, tcap, trate)
end
if admit == 0 then return {1, '', 0} end
if tcap > 0 then
  local tl = level(KEYS[2], tcap, trate)
  if tl <= 0 then return {0, 'tokens', math.ceil((1 - tl) / trate * 1000)} end
end
if rcap > 0 then
  local rl = level(KEYS[1], rcap, rrate)
  if rl < 1 then return {0, 'requests', math.ceil((1 - rl) / rrate * 1000)} end
  save(KEYS[1], rl - 1, rcap, rrate)
end
return {1, '', 0}
"""


class RedisLimiter(_KeyBuckets):
    """The buckets in Redis, shared by every gateway process that uses the same Redis.

    One round trip per request: the tokens a finished answer used are owed, and go to Redis with
    the key's next admission (the same script call), or within DEBIT_DELAY_S if none comes."""

    PREFIX = "expertmesh:limit:"
    DEBIT_DELAY_S = 0.25

    def __init__(self, url: str, burst_s: float) -> None:
        import redis.asyncio as redis

        super().__init__(burst_s)
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self._script = self._redis.register_script(_SCRIPT)
        self._owed: dict[str, tuple[KeyConfig, int]] = {}  # key name -> (key, tokens not yet debited)
        self._debiting: asyncio.Task | None = None

    async def _call(self, key: KeyConfig, admit: bool) -> list:
        _, owed = self._owed.pop(key.name, (key, 0))
        requests, tokens = self.buckets(key)
        keys = [f"{self.PREFIX}{key.name}:requests", f"{self.PREFIX}{key.name}:tokens"]
        args = [requests.capacity if requests else 0, requests.rate_per_s if requests else 0,
                tokens.capacity if tokens else 0, tokens.rate_per_s if tokens else 0, owed, int(admit)]  # fmt: skip
        try:
            return await self._script(keys=keys, args=args)
        except BaseException:
            if owed:
                self._owe(key, owed)  # not lost: it goes with the next call
            raise

    def _owe(self, key: KeyConfig, tokens: int) -> None:
        self._owed[key.name] = (key, self._owed.get(key.name, (key, 0))[1] + tokens)

    async def admit(self, key: KeyConfig) -> Refusal | None:
        admitted, limit, wait_ms = await self._call(key, admit=True)
        if admitted:
            return None
        limit = limit.decode() if isinstance(limit, bytes) else str(limit)
        per_minute = key.requests_per_minute if limit == "requests" else key.tokens_per_minute
        return Refusal(limit, per_minute or 0, int(wait_ms) / 1000)

    async def spend(self, key: KeyConfig, tokens: int) -> None:
        if key.tokens_per_minute and tokens > 0:
            self._owe(key, tokens)
            if self._debiting is None or self._debiting.done():
                self._debiting = asyncio.create_task(self._debit_soon())

    async def _debit_soon(self) -> None:
        """Send what is still owed after DEBIT_DELAY_S (a key that made no request since)."""
        await asyncio.sleep(self.DEBIT_DELAY_S)
        for key, _ in list(self._owed.values()):
            try:
                await self._call(key, admit=False)
            except Exception as exc:  # noqa: BLE001 - kept owed; the next call carries it
                log.warning("rate limits: cannot debit tokens in Redis (%s: %s)", type(exc).__name__, exc)
                return

    async def aclose(self) -> None:
        if self._debiting is not None and not self._debiting.done():
            self._debiting.cancel()
        for key, _ in list(self._owed.values()):  # what is owed, before the gateway goes
            try:
                await self._call(key, admit=False)
            except Exception:  # noqa: BLE001 - Redis is away: nothing more to do
                break
        await self._redis.aclose()


def build_limiter(redis_url: str | None, burst_s: float) -> Limiter:
    return RedisLimiter(redis_url, burst_s) if redis_url else LocalLimiter(burst_s)


def retry_after_header(refusal: Refusal) -> str:
    return str(max(1, math.ceil(refusal.retry_after_s)))
