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


def routing_text(messages: Iterable[Mapping[str, Any]]) -> str:
    """The last user turn: the question the expert has to answer."""
    for message in reversed(list(messages)):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return ""
