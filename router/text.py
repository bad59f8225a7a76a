"""What text of a chat request the router reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def message_text(content: Any) -> str:
    """The text of an OpenAI message content: a string or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(
        part.get("text", "") for part in content if isinstance(part, Mapping) and part.get("type") == "text"
    )


def user_turns(messages: Iterable[Mapping[str, Any]]) -> list[str]:
    """The text of every user turn, in order (what the router reads of a conversation)."""
    return [message_text(m.get("content")) for m in messages if m.get("role") == "user"]


def routing_text(messages: Iterable[Mapping[str, Any]]) -> str:
    """The last user turn: the question the expert has to answer."""
    turns = user_turns(messages)
    return turns[-1] if turns else ""
