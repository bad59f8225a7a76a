"""The OpenAI Responses API in front of chat-only experts: the response side. A chat completion
becomes a Response object; a chat completion stream becomes the Responses event stream, in the
order OpenAI sends it (`response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta` ..., the `.done` events, then
`response.completed`, `response.incomplete` or `response.failed`)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from expertmesh.gateway.errors import APIError
from expertmesh.gateway.protocol import ResponsesRequest

# chat finish reasons that leave a response incomplete, and the Responses API's reason
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def sse_event(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def response_skeleton(request: ResponsesRequest, model: str, created: int | None = None) -> dict[str, Any]:
    """A Response object without its output, as the request configured it."""
    return {
        "id": new_id("resp"),
        "object": "response",
        "created_at": created or int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": None,
        "reasoning": request.reasoning,
        "store": False,
        "temperature": request.temperature,
        "text": request.text or {"format": {"type": "text"}},
        "tool_choice": request.tool_choice or "auto",
        "tools": request.tools or [],
        "top_p": request.top_p,
        "truncation": request.truncation or "disabled",
        "usage": None,
        "user": request.user,
        "metadata": request.metadata or {},
    }


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not chat_usage:
        return None
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": chat_usage.get("prompt_tokens", 0),
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": chat_usage.get("completion_tokens", 0),
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": chat_usage.get("total_tokens", 0),
    }


def finish(response: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    """The response with its final status, from the chat finish reason."""
    reason = INCOMPLETE.get(finish_reason or "")
    return {
        **response,
        "status": "incomplete" if reason else "completed",
        "completed_at": int(time.time()),
        "incomplete_details": {"reason": reason} if reason else None,
    }


def text_part(text: str = "", logprobs: list | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def message_item(parts: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {"id": new_id("msg"), "type": "message", "status": status, "role": "assistant", "content": parts}


def function_call_item(
    call_id: str | None, name: str = "", arguments: str = "", status: str = "completed"
) -> dict[str, Any]:
    return {
        "id": new_id("fc"),
        "type": "function_call",
        "status": status,
        "call_id": call_id or new_id("call"),
        "name": name,
        "arguments": arguments,
    }


def response_from_chat(chat: dict[str, Any], request: ResponsesRequest) -> dict[str, Any]:
    """A non-streamed chat completion as a Response object."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    finish_reason = choice.get("finish_reason")
    output = []
    if message.get("content") or message.get("refusal") or not message.get("tool_calls"):
        parts = []
        if message.get("content") or not message.get("refusal"):
            parts.append(text_part(message.get("content") or "", (choice.get("logprobs") or {}).get("content")))
        if message.get("refusal"):
            parts.append({"type": "refusal", "refusal": message["refusal"]})
        output.append(message_item(parts, "incomplete" if finish_reason in INCOMPLETE else "completed"))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(function_call_item(call.get("id"), function.get("name", ""), function.get("arguments", "")))
    response = response_skeleton(request, str(chat.get("model") or request.model), chat.get("created"))
    return finish({**response, "output": output, "usage": usage(chat.get("usage"))}, finish_reason)


class ChatStreamToEvents:
    """Turns a chat completion stream, chunk by chunk, into the Responses API's event stream.

    An output item opens when its first delta arrives (the message at the first text, a function
    call at the first delta of its chat tool-call index) and every item closes when the stream
    ends; each event carries the next sequence number.
    """

    def __init__(self, request: ResponsesRequest, model: str, extra: dict[str, Any]) -> None:
        self.response = {**response_skeleton(request, model), **extra}
        self.sequence = 0
        self.items: list[dict[str, Any]] = []  # by output index
        self.message: int | None = None  # the output index of the message item
        self.parts: dict[str, int] = {}  # "output_text" / "refusal" -> content index in the message
        self.calls: dict[Any, int] = {}  # chat tool-call index (or id) -> output index
        self.last_call: Any = None
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse_event(event)

    def start(self) -> list[bytes]:
        snapshot = {**self.response, "output": []}
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                logprobs = (choice.get("logprobs") or {}).get("content") or []
                events += self._part_delta("output_text", delta["content"], logprobs)
            if delta.get("refusal"):
                events += self._part_delta("refusal", delta["refusal"])
            for call in delta.get("tool_calls") or []:
                events += self._tool_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _open(self, item: dict[str, Any]) -> bytes:
        """Add an output item; its `response.output_item.added` event."""
        self.items.append(item)
        return self._event("response.output_item.added", output_index=len(self.items) - 1, item=item)

    def _part_delta(self, kind: str, text: str, logprobs: list | None = None) -> list[bytes]:
        events = []
        if self.message is None:
            events.append(self._open(message_item([], "in_progress")))
            self.message = len(self.items) - 1
        item = self.items[self.message]
        ids = {"item_id": item["id"], "output_index": self.message}
        if kind not in self.parts:
            part = text_part() if kind == "output_text" else {"type": "refusal", "refusal": ""}
            item["content"].append(part)
            self.parts[kind] = len(item["content"]) - 1
            events.append(self._event("response.content_part.added", **ids, content_index=self.parts[kind], part=part))
        part = item["content"][self.parts[kind]]
        if kind == "output_text":
            part["text"] += text
            part["logprobs"] += logprobs or []
            events.append(
                self._event(
                    "response.output_text.delta",
                    **ids,
                    content_index=self.parts[kind],
                    delta=text,
                    logprobs=logprobs or [],
                )
            )
        else:
            part["refusal"] += text
            events.append(self._event("response.refusal.delta", **ids, content_index=self.parts[kind], delta=text))
        return events

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        """Chat streams a tool call as deltas keyed by `index`; a new `id` at a known index (some
        servers use index 0 for every call) or without an index starts a new call."""
        events = []
        function = call.get("function") or {}
        key = call.get("index") if isinstance(call.get("index"), int) else call.get("id") or self.last_call
        current = self.calls.get(key)
        if current is None or (call.get("id") and call["id"] != self.items[current]["call_id"]):
            events.append(
                self._open(function_call_item(call.get("id"), function.get("name") or "", status="in_progress"))
            )
            current = self.calls[key] = len(self.items) - 1
        elif function.get("name") and not self.items[current]["name"]:
            self.items[current]["name"] = function["name"]
        self.last_call = key
        if function.get("arguments"):
            item = self.items[current]
            item["arguments"] += function["arguments"]
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=current,
                    delta=function["arguments"],
                )
            )
        return events

    def end(self) -> list[bytes]:
        """The stream ended well: close every item, then `response.completed` (or `.incomplete`)."""
        events: list[bytes] = []
        if not self.items:  # an empty answer is an empty message, as when not streamed
            events += self._part_delta("output_text", "")
        for index, item in enumerate(self.items):
            events += self._close(index, item)
        response = finish({**self.response, "output": self.items, "usage": usage(self.usage)}, self.finish_reason)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return [*events, self._event(kind, response=response)]

    def _close(self, index: int, item: dict[str, Any]) -> list[bytes]:
        events = []
        ids = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            for number, part in enumerate(item["content"]):
                if part["type"] == "output_text":
                    events.append(
                        self._event(
                            "response.output_text.done",
                            **ids,
                            content_index=number,
                            text=part["text"],
                            logprobs=part["logprobs"],
                        )
                    )
                else:
                    events.append(
                        self._event("response.refusal.done", **ids, content_index=number, refusal=part["refusal"])
                    )
                events.append(self._event("response.content_part.done", **ids, content_index=number, part=part))
            item["status"] = "incomplete" if self.finish_reason in INCOMPLETE else "completed"
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done", **ids, name=item["name"], arguments=item["arguments"]
                )
            )
            item["status"] = "completed"
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        return events

    def fail(self, error: APIError) -> list[bytes]:
        """The expert failed mid-stream: `response.failed`, with what was produced so far."""
        output = [{**item, "status": "incomplete"} for item in self.items]
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"  # the API's codes
        response = {
            **self.response,
            "status": "failed",
            "output": output,
            "error": {"code": code, "message": error.message},
        }
        return [self._event("response.failed", response=response)]
