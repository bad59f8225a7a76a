"""Wire types of the gateway's OpenAI-compatible API (Pydantic, nothing else)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["system", "developer", "user", "assistant", "tool"]
# What JSON encoders and the experts' servers take: int64 and uint64 (orjson's limits).
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
_LONG_DIGITS = re.compile(rb"[0-9]{19}")  # any integer outside the range has 19 or more digits


def out_of_range_integer(body: bytes, parsed: BaseModel) -> str | None:
    """Where the request holds an integer beyond 64 bits ("seed", "messages[0].x"), or None.
    Scans the raw body first: the tree is walked only if it has a run of 19 digits."""
    if _LONG_DIGITS.search(body) is None:
        return None
    return _find_big_int(parsed.model_dump(), "")


def _find_big_int(value: Any, where: str) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return where if not INT_MIN <= value <= INT_MAX else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _find_big_int(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["text"]
    text: str


class MediaPart(BaseModel):
    """An image, audio clip or file in a message: passed to the expert as it is (the router
    reads the text parts; an expert whose model takes no images says so itself)."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["image_url", "input_audio", "file"]


ContentPart = Annotated[TextPart | MediaPart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        # Only assistant turns (carrying tool calls) may omit their content.
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a '{self.role}' message needs a 'content'")
        return self


class FanoutOptions(BaseModel):
    """The request's own fan-out settings (the "expertmesh" field); unset ones come from the config."""

    model_config = ConfigDict(extra="forbid")

    fanout: bool | None = None
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_experts: int | None = Field(default=None, ge=1, le=8)
    strategy: Literal["synthesize", "best", "all"] | None = None
    decompose: bool | None = None
    # Each expert's own answer text in the fan-out report, beside the combined answer (the playground shows them).
    include_answers: bool | None = None


class ChatCompletionRequest(BaseModel):
    """The fields the gateway checks; any other field is passed to the expert unchanged."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = None
    expertmesh: FanoutOptions | None = None  # the gateway's own options; never sent to an expert

    def upstream_fields(self) -> dict[str, Any]:
        """The request as a dict for the expert, without the gateway's own `model` and options."""
        body = self.model_dump(exclude={"model", "expertmesh"}, exclude_none=True)
        body["messages"] = [m.model_dump(exclude_none=True) for m in self.messages]
        return body


class RouteRequest(BaseModel):
    """POST /v1/route: either chat `messages` or a plain `text`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    text: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_of(self) -> RouteRequest:
        if (self.messages is None) == (self.text is None):
            raise ValueError("give exactly one of 'messages' or 'text'")
        return self


class FeedbackRequest(BaseModel):
    """POST /v1/feedback: a rating of a logged request's answer, the domain it should have been
    routed to, or both (with an optional comment)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str = Field(min_length=1, max_length=128, description="The x-request-id of the response")
    rating: int | None = Field(default=None, ge=-1, le=1, description="-1 bad, 0 neutral, 1 good")
    domain: str | None = Field(default=None, min_length=1, description="The domain the request belonged to")
    comment: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackRequest:
        if self.rating is None and self.domain is None:
            raise ValueError("give a 'rating', a corrected 'domain', or both")
        return self


class CompletionRequest(BaseModel):
    """POST /v1/completions, the legacy completions API: a raw prompt, no roles."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool | None = None
    suffix: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    user: str | None = None

    def prompt_text(self) -> str | None:
        """The text the router reads: the prompt, or a batch's prompts together; None for token ids."""
        if isinstance(self.prompt, str):
            return self.prompt
        if self.prompt and all(isinstance(p, str) for p in self.prompt):
            return "\n".join(self.prompt)  # type: ignore[arg-type]
        return None

    def upstream_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude={"model"}, exclude_none=True)


class ResponsesRequest(BaseModel):
    """POST /v1/responses. The fields the gateway reads or translates are declared; any other
    field is passed on (to a native Responses server as is, to a chat expert where chat has it)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    input: str | Annotated[list[dict[str, Any]], Field(min_length=1)]
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    store: bool | None = None
    include: list[str] | None = None
    # State kept by a server between requests: the gateway keeps none (see gateway/responses.py).
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None
