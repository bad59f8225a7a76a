"""OpenAI chat messages, as both the router and the experts read them."""

from __future__ import annotations

from collections.abc import Mapping
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
