"""Reformatting a chat request for one expert, with langchain-core prompt templates.

The expert's system prompt goes first (a caller's own system messages are appended to
it, since many chat templates accept one system message only), and the last user turn
is rendered through the expert's user template. For models whose chat template has no
system role (Mistral-based ones such as Saul-7B-Instruct refuse it), the system text opens
the first user turn instead.
"""

from __future__ import annotations

from typing import Any

from langchain_core.prompts import PromptTemplate

from expertmesh.config import ExpertConfig
from expertmesh.messages import message_text

SYSTEM_ROLES = {"system", "developer"}


class ExpertPrompt:
    def __init__(self, expert: ExpertConfig, domain: str | None = None) -> None:
        self.system_prompt = expert.system_prompt
        self.system_role = expert.system_role
        self.user_template = PromptTemplate.from_template(expert.user_template)
        self.default_domain = domain or (expert.domains[0] if expert.domains else "general")

    def format(
        self, messages: list[dict[str, Any]], domain: str | None = None, system_prompt: bool = True
    ) -> list[dict[str, Any]]:
        """The messages to send to the expert, in OpenAI's format. Turns of other roles than
        system, developer, user and assistant pass through as they are (the gateway carries the
        Responses API's function-call items that way). system_prompt=False leaves the expert's
        system prompt out (a conversation its server stores already has it)."""
        system_parts = [self.system_prompt] if self.system_prompt and system_prompt else []
        system_parts += [message_text(m.get("content")) for m in messages if m["role"] in SYSTEM_ROLES]
        turns = [m for m in messages if m["role"] not in SYSTEM_ROLES]
        last_user = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=None)
        if last_user is not None:
            content = turns[last_user].get("content")
            rendered = self.user_template.format(query=message_text(content), domain=domain or self.default_domain)
            turns = [
                *turns[:last_user],
                {**turns[last_user], "content": _with_media(rendered, content)},
                *turns[last_user + 1 :],
            ]
        system = "\n\n".join(p for p in system_parts if p)
        if not system:
            return turns
        if self.system_role:
            return [{"role": "system", "content": system}, *turns]
        first_user = next((i for i, m in enumerate(turns) if m["role"] == "user"), None)
        if first_user is None:
            return [{"role": "user", "content": system}, *turns]
        content = turns[first_user].get("content")
        opening = {**turns[first_user], "content": _with_media(f"{system}\n\n{message_text(content)}", content)}
        return [*turns[:first_user], opening, *turns[first_user + 1 :]]


def _with_media(text: str, original: Any) -> str | list[dict[str, Any]]:
    """`text` as the message content, keeping the original's images, audio and files after it."""
    media = [part for part in original if part.get("type") != "text"] if isinstance(original, list) else []
    return [{"type": "text", "text": text}, *media] if media else text
