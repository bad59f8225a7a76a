"""What text of a chat request the router reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from expertmesh.messages import message_text

# The router reads at most this many characters of a text: the first HEAD_CHARS and the last
# TAIL_CHARS. Both are far more than the 64-128 tokens the classifier keeps (a token is at least
# one character), so the decision is the same as on the whole text, while tokenizing a 1 MB
# message would otherwise cost ~1,000x a short one and stall the requests batched with it.
HEAD_CHARS = 2048
TAIL_CHARS = 1024


def bounded(text: str, head: int = HEAD_CHARS, tail: int = TAIL_CHARS) -> str:
    """The text, or for a longer one, its first `head` and last `tail` characters."""
    if len(text) <= head + tail:
        return text
    return text[:head] + "\n…\n" + text[-tail:]


def user_turns(messages: Iterable[Mapping[str, Any]]) -> list[str]:
    """The text of every user turn, in order (what the router reads of a conversation)."""
    return [message_text(m.get("content")) for m in messages if m.get("role") == "user"]


def routing_text(messages: Iterable[Mapping[str, Any]]) -> str:
    """The last user turn: the question the expert has to answer."""
    turns = user_turns(messages)
    return turns[-1] if turns else ""


def conversation_context(earlier_turns: list[str], turns: int) -> str:
    """The earlier user turns a context-reading router sees beside the last one: the most
    recent first (the classifier cuts the context from its end, so the oldest go first), each
    bounded, at most `turns` of them."""
    recent = earlier_turns[-turns:] if turns else []
    return "\n".join(bounded(turn, 512, 256) for turn in reversed(recent))
