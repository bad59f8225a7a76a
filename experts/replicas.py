"""The servers behind one expert (replicas of one model), each with its circuit breaker.

A request goes to the usable replica with the fewest requests in flight. A replica is usable
while its breaker is closed, or half-open with no trial request out; replicas that the
background health check found down are tried only when no other one is usable. Its breaker opens after `failures` failures in a row (connect
errors, timeouts, 5xx) and stays open for `cooldown_s`; then one request tries it (half-open):
success closes the breaker, failure opens it for another cool-down.

All of this runs on the event loop's thread: no locks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from expertmesh.config import CircuitBreakerConfig

log = logging.getLogger(__name__)
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
# Gauge values for /metrics: 1 serving, 0.5 on trial, 0 taken out.
STATE_VALUES = {CLOSED: 1.0, HALF_OPEN: 0.5, OPEN: 0.0}

# (expert, replica index, new state): how the metrics hear of a breaker's change.
StateListener = Callable[[str, int, str], None]


@dataclass
class HealthReading:
    ok: bool | None = None  # None: not checked yet (then assumed up)
    detail: str = "not checked yet"


class Replica:
    def __init__(self, expert: str, index: int, base_url: str, breaker: CircuitBreakerConfig,
                 on_state: StateListener | None = None) -> None:  # fmt: skip
        self.expert, self.index = expert, index
        self.base_url = base_url.rstrip("/")
        self.breaker = breaker
        self.on_state = on_state
        self.in_flight = 0
        self.failures = 0  # in a row
        self.open_until = 0.0  # monotonic time; 0: the breaker is closed
        self.trial_out = False  # half-open: the one trial request is in flight
        self.health = HealthReading()

    def state(self, now: float | None = None) -> str:
        if not self.open_until:
            return CLOSED
        return OPEN if (now or time.monotonic()) < self.open_until else HALF_OPEN

    def usable(self, now: float, trust_health: bool = True) -> bool:
        if trust_health and self.health.ok is False:
            return False
        state = self.state(now)
        return state == CLOSED or (state == HALF_OPEN and not self.trial_out)

    def acquire(self, now: float) -> None:
        self.in_flight += 1
        if self.open_until and self.state(now) == HALF_OPEN:
            self.trial_out = True

    def release(self) -> None:
        self.in_flight -= 1

    def succeeded(self) -> None:
        self.failures = 0
        self.trial_out = False
        if self.open_until:
            self.open_until = 0.0
            self._tell(CLOSED)

    def failed(self) -> None:
        """A failure that the breaker counts."""
        self.failures += 1
        was_trial, self.trial_out = self.trial_out, False
        if was_trial or self.failures >= self.breaker.failures:
            if not self.open_until or was_trial:
                log.warning("expert '%s' replica %d (%s): %d failure(s) in a row, out for %g s", self.expert,
                            self.index, self.base_url, self.failures, self.breaker.cooldown_s)  # fmt: skip
            self.open_until = time.monotonic() + self.breaker.cooldown_s
            self._tell(OPEN)

    def checked(self, ok: bool, detail: str) -> None:
        """The background health check's reading. A replica found up after its cool-down is
        closed again without risking a request on it."""
        self.health = HealthReading(ok, detail)
        if ok and self.open_until and self.state() == HALF_OPEN and not self.trial_out:
            self.succeeded()

    def _tell(self, state: str) -> None:
        if self.on_state is not None:
            self.on_state(self.expert, self.index, state)

    def report(self) -> dict:
        """For /readyz: the replica's index, never its address (that is for logs)."""
        return {"replica": self.index, "state": self.state(), "healthy": self.health.ok,
                "in_flight": self.in_flight, "detail": self.health.detail}  # fmt: skip


class ReplicaSet:
    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self._next = 0  # where ties start: spreads equal loads round-robin

    def pick(self, avoid: set[int]) -> Replica | None:
        """The usable replica with the fewest requests in flight, preferring ones not in
        `avoid` (those already tried for this request); None if every breaker is open.

        Replicas the health check found down come last, not never: a check can fail while the
        server answers (a slow /models under load), and a real request tells; if the server is
        down, its failures open the breaker."""
        now = time.monotonic()
        return self._least_busy(now, avoid, True) or self._least_busy(now, avoid, False)

    def _least_busy(self, now: float, avoid: set[int], trust_health: bool) -> Replica | None:
        if len(self.replicas) == 1:  # the common case, kept cheap
            only = self.replicas[0]
            return only if only.usable(now, trust_health) else None
        count = len(self.replicas)
        start, self._next = self._next, (self._next + 1) % count
        best: Replica | None = None
        for offset in range(count):
            replica = self.replicas[(start + offset) % count]
            if not replica.usable(now, trust_health):
                continue
            key = (replica.index in avoid, replica.in_flight)
            if best is None or key < (best.index in avoid, best.in_flight):
                best = replica
        return best

    @property
    def any_up(self) -> bool:
        """Whether a replica is up: its breaker lets requests through and the health check has
        not found it down (what /readyz reports)."""
        now = time.monotonic()
        return any(replica.usable(now) for replica in self.replicas)
