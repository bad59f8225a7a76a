"""What can go wrong when asking an expert, independent of HTTP serving.

Each kind says what the gateway may do about it: `retry` (ask again, on another replica if
there is one), `failover` (ask the expert's fallbacks), and whether it counts against the
replica's circuit breaker. A message is shown to clients, so it never names a backend's
address; `detail` (for the logs) may.
"""

from __future__ import annotations


class ExpertError(Exception):
    """An expert could not answer. `expert` names it."""

    retry = False
    failover = False
    breaks_circuit = False

    def __init__(self, expert: str, message: str, detail: str = "") -> None:
        super().__init__(f"expert '{expert}': {message}")
        self.expert = expert
        self.detail = detail

    @property
    def kind(self) -> str:
        """ExpertTimeout -> "timeout": for metrics and the failover report."""
        return type(self).__name__.removeprefix("Expert").lower() or "error"

    def for_log(self) -> str:
        return f"{self} ({self.detail})" if self.detail else str(self)


class ExpertUnavailable(ExpertError):
    """The expert's server could not be reached or dropped the connection (or every replica
    is cooling down after failures)."""

    retry = failover = breaks_circuit = True


class ExpertCircuitOpen(ExpertUnavailable):
    """Every server of the expert is out, cooling down after failures. Nothing was sent; the
    breaker already counted the failures behind it."""

    breaks_circuit = False
    kind = "circuit_open"  # type: ignore[assignment]


class ExpertTimeout(ExpertError):
    """The expert did not answer within its timeout."""

    retry = failover = breaks_circuit = True


class ExpertFailed(ExpertError):
    """The expert's server answered with an error of its own (5xx or a bad response)."""

    retry = failover = breaks_circuit = True


class ExpertRateLimited(ExpertError):
    """The expert's server is overloaded (429): ask elsewhere; the replica itself works."""

    retry = failover = True
    kind = "rate_limited"  # type: ignore[assignment]

    def __init__(self, expert: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(expert, message)
        self.retry_after_s = retry_after_s


class ExpertMisconfigured(ExpertError):
    """The expert's server refused the gateway itself (401/403: its API key; 404: its model
    name or URL): the gateway's configuration is wrong, not the caller's request. Asking the
    same expert again cannot help; a fallback can."""

    failover = True

    def __init__(self, expert: str, message: str, status_code: int) -> None:
        super().__init__(expert, message)
        self.status_code = status_code


class ExpertRejected(ExpertError):
    """The expert's server refused the request as invalid (400, 413, 422...): the caller's fault."""

    def __init__(self, expert: str, message: str, status_code: int) -> None:
        super().__init__(expert, message)
        self.status_code = status_code


class RequestTimedOut(ExpertError):
    """The request used up the gateway's total time limit (gateway.request_timeout_s)."""

    kind = "request_timeout"  # type: ignore[assignment]
