"""What can go wrong when asking an expert, independent of HTTP serving."""

from __future__ import annotations


class ExpertError(Exception):
    """An expert could not answer. `expert` names it."""

    def __init__(self, expert: str, message: str) -> None:
        super().__init__(f"expert '{expert}': {message}")
        self.expert = expert


class ExpertUnavailable(ExpertError):
    """The expert's server could not be reached or dropped the connection."""


class ExpertTimeout(ExpertError):
    """The expert did not answer within its timeout."""


class ExpertFailed(ExpertError):
    """The expert's server answered with an error of its own (5xx or a bad response)."""


class ExpertRejected(ExpertError):
    """The expert's server refused the request as invalid (4xx): the caller's fault."""

    def __init__(self, expert: str, message: str, status_code: int) -> None:
        super().__init__(expert, message)
        self.status_code = status_code
