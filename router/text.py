"""What text of a chat request the router reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from expertmesh.messages import message_text


def user_turns(messages: Iterable[Mapping[str, Any]]) -> list[str]:
    """The text of every user turn, in order (what the router reads of a conversation)."""
    return [message_text(m.get("content")) for m in messages if m.get("role") == "user"]


def routing_text(messages: Iterable[Mapping[str, Any]]) -> str:
    """The last user turn: the question the expert has to answer."""
    turns = user_turns(messages)
    return turns[-1] if turns else ""
