"""The OpenAI Responses API (`POST /v1/responses`) in front of experts that speak chat completions.

A request's `input` becomes the conversation that the router reads and that the expert's prompt
format is applied to. An expert whose server serves the Responses API itself (vLLM) then gets
the request relayed with its model name and prompt format; any other expert gets it translated
to a chat completion, and the answer translated back: as one Response object, or streamed event
by event in the order OpenAI sends them (`response.created`, `response.output_item.added`,
`response.output_text.delta`, ..., `response.completed`).

The gateway keeps no state: what needs a stored response (`previous_response_id`,
`conversation`, `background`) is refused with a 400 that says so, except `previous_response_id`
relayed to a named expert whose own server keeps it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson

from expertmesh.gateway.errors import APIError
from expertmesh.gateway.protocol import ResponsesRequest

# An item of `input` that is not a message (a function call, its output, a reasoning item) rides
# through the prompt formatting as a pseudo-message of this role: the formatter leaves it alone.
ITEM_ROLE = "item"
MESSAGE_ROLES = {"user", "system", "developer", "assistant"}
TEXT_PARTS = {"input_text", "output_text", "text"}
MEDIA_PARTS = {"input_image", "input_file", "input_audio"}
PASSTHROUGH_ITEMS = {"function_call", "function_call_output", "reasoning"}
# Responses fields that mean nothing to a chat completion (translated or answered locally).
NOT_FOR_CHAT = {
    "model", "input", "instructions", "stream", "max_output_tokens", "text", "tools", "tool_choice",
    "top_logprobs", "include", "store", "metadata", "truncation", "reasoning", "service_tier",
    "previous_response_id", "background", "conversation", "prompt", "max_tool_calls", "stream_options",
    "prompt_cache_key", "safety_identifier", "expertmesh",
}  # fmt: skip


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# --- input -> conversation ---------------------------------------------------------------------


def conversation(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The request as chat messages (system instructions first); the text parts are chat text
    parts, media parts stay as the Responses API spells them, other items are ITEM_ROLE entries."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        return [*messages, {"role": "user", "content": request.input}]
    for index, item in enumerate(request.input):
        messages.append(_message(index, item))
    return messages


def _message(index: int, item: dict[str, Any]) -> dict[str, Any]:
    kind = item.get("type", "message")
    if kind in PASSTHROUGH_ITEMS:
        return {"role": ITEM_ROLE, "item": item}
    if kind != "message":
        raise APIError(
            400,
            f"input[{index}]: items of type '{kind}' are not supported (expertmesh keeps no stored "
            "items and runs no built-in tools); send messages, function calls and their outputs",
            param=f"input[{index}].type",
        )
    role = item.get("role")
    if role not in MESSAGE_ROLES:
        raise APIError(400, f"input[{index}].role: expected one of {sorted(MESSAGE_ROLES)}, got {role!r}",
                       param=f"input[{index}].role")  # fmt: skip
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise APIError(400, f"input[{index}].content: expected a string or a list of content parts",
                       param=f"input[{index}].content")  # fmt: skip
    return {"role": role, "content": [_part(index, n, part) for n, part in enumerate(content)]}


def _part(index: int, number: int, part: Any) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in TEXT_PARTS and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    if kind in MEDIA_PARTS:
        return part
    where = f"input[{index}].content[{number}]"
    raise APIError(400, f"{where}: unknown content part {kind!r}; expected input_text, input_image, "
                        "input_file or input_audio", param=where)  # fmt: skip


# --- conversation -> a native Responses request (vLLM) -------------------------------------------


def native_input(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Formatted chat messages back into Responses input items."""
    items = []
    for message in messages:
        if message["role"] == ITEM_ROLE:
            items.append(message["item"])
            continue
        text_type = "output_text" if message["role"] == "assistant" else "input_text"
        content = message.get("content")
        if isinstance(content, list):
            content = [{"type": text_type, "text": p["text"]} if p.get("type") == "text" else p for p in content]
        items.append({"type": "message", "role": message["role"], "content": content or ""})
    return items


# --- conversation -> a chat completion request --------------------------------------------------


def chat_messages(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Formatted messages as chat messages: media parts and function-call items in chat's terms."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] != ITEM_ROLE:
            content = message.get("content")
            if isinstance(content, list):
                content = [_chat_part(part) for part in content]
            out.append({**message, "content": content})
            continue
        item = message["item"]
        if item["type"] == "function_call":
            call = {"id": item.get("call_id") or item.get("id") or new_id("call"), "type": "function",
                    "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")}}  # fmt: skip
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls") and not out[-1].get("content"):
                out[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif item["type"] == "function_call_output":
            output = item.get("output", "")
            if isinstance(output, list):
                output = "\n".join(p.get("text", "") for p in output if isinstance(p, dict))
            out.append({"role": "tool", "tool_call_id": item.get("call_id", ""), "content": str(output)})
        # reasoning items: a chat model has no place for them
    return out


def _chat_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "input_image":
        if not part.get("image_url"):
            raise APIError(400, "input_image: only images given by image_url (a URL or a data: URL) can be "
                                "sent to this expert; file_id refers to OpenAI's file store", param="input")  # fmt: skip
        return {"type": "image_url", "image_url": {"url": part["image_url"], "detail": part.get("detail", "auto")}}
    if kind == "input_file":
        file = {k: part[k] for k in ("file_data", "file_id", "filename") if k in part}
        return {"type": "file", "file": file}
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": part.get("input_audio", part)}
    return part


def chat_request_fields(request: ResponsesRequest) -> dict[str, Any]:
    """Everything but the messages: sampling, tools, output format; extra fields pass through."""
    body = {k: v for k, v in request.model_dump(exclude_none=True).items() if k not in NOT_FOR_CHAT}
    if request.max_output_tokens is not None:
        body["max_tokens"] = request.max_output_tokens
    if request.tools:
        body["tools"] = [_chat_tool(index, tool) for index, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        body["tool_choice"] = _chat_tool_choice(request.tool_choice)
    response_format = _chat_response_format((request.text or {}).get("format"))
    if response_format is not None:
        body["response_format"] = response_format
    if request.top_logprobs:
        body.update(logprobs=True, top_logprobs=request.top_logprobs)
    if request.stream:
        body["stream_options"] = {"include_usage": True}  # the final usage of response.completed
    return body


def _chat_tool(index: int, tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise APIError(400, f"tools[{index}]: tool type {tool.get('type')!r} is not supported; "
                            "expertmesh passes function tools to the expert", param=f"tools[{index}].type")  # fmt: skip
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    return choice  # "auto", "none", "required"


def _chat_response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    return {"type": fmt.get("type")}  # json_object


# --- chat completion -> Response ----------------------------------------------------------------

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_skeleton(request: ResponsesRequest, response_id: str, created: int, model: str) -> dict[str, Any]:
    """A Response object without its output, as the request configured it."""
    return {
        "id": response_id, "object": "response", "created_at": created, "status": "in_progress",
        "background": False, "error": None, "incomplete_details": None,
        "instructions": request.instructions, "max_output_tokens": request.max_output_tokens,
        "model": model, "output": [], "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": None, "reasoning": request.reasoning, "store": False,
        "temperature": request.temperature, "text": request.text or {"format": {"type": "text"}},
        "tool_choice": request.tool_choice or "auto", "tools": request.tools or [], "top_p": request.top_p,
        "truncation": request.truncation or "disabled", "usage": None, "user": request.user,
        "metadata": request.metadata or {},
    }  # fmt: skip


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not chat_usage:
        return None
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    return {
        "input_tokens": chat_usage.get("prompt_tokens", 0), "input_tokens_details": {"cached_tokens": cached or 0},
        "output_tokens": chat_usage.get("completion_tokens", 0),
        "output_tokens_details": {"reasoning_tokens": reasoning or 0},
        "total_tokens": chat_usage.get("total_tokens", 0),
    }  # fmt: skip


def finish(response: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    """Set the final status from the chat finish reason."""
    reason = _INCOMPLETE.get(finish_reason or "")
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    response["completed_at"] = int(time.time())
    return response


def message_item(text: str, logprobs: list | None = None, refusal: str | None = None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text or not refusal:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": new_id("msg"), "type": "message", "status": "completed", "role": "assistant", "content": content}


def function_call_item(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {"id": new_id("fc"), "type": "function_call", "status": "completed", "call_id": call.get("id") or new_id("call"),
            "name": function.get("name", ""), "arguments": function.get("arguments", "")}  # fmt: skip


def response_from_chat(chat: dict[str, Any], request: ResponsesRequest) -> dict[str, Any]:
    """A non-streamed chat completion as a Response object."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    response = response_skeleton(request, new_id("resp"), int(chat.get("created") or time.time()),
                                 str(chat.get("model", request.model)))  # fmt: skip
    output = []
    if message.get("content") or message.get("refusal") or not message.get("tool_calls"):
        logprobs = (choice.get("logprobs") or {}).get("content")
        output.append(message_item(message.get("content") or "", logprobs, message.get("refusal")))
    output += [function_call_item(call) for call in message.get("tool_calls") or []]
    response["output"] = output
    response["usage"] = usage(chat.get("usage"))
    return finish(response, choice.get("finish_reason"))


# --- streamed chat chunks -> Response events -----------------------------------------------------


def sse_event(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class ResponseEvents:
    """Turns a chat completion stream, chunk by chunk, into the Responses API's event stream.

    Output items open when their first delta arrives and close when another item starts or the
    stream ends; every event carries the next sequence number.
    """

    def __init__(self, request: ResponsesRequest, model: str, extra: dict[str, Any]) -> None:
        self.response = {**response_skeleton(request, new_id("resp"), int(time.time()), model), **extra}
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # closed items
        self.item: dict[str, Any] | None = None  # the open item
        self.tool_index: int | None = None  # the chat tool-call index of the open function call
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse_event(event)

    def start(self) -> list[bytes]:
        snapshot = {**self.response, "output": []}
        return [self._event("response.created", response=snapshot), self._event("response.in_progress", response=snapshot)]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._tool_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _text(self, text: str) -> list[bytes]:
        events = []
        if self.item is None or self.item["type"] != "message":
            events += self._close()
            self.item = {"id": new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            events.append(self._event("response.output_item.added", output_index=len(self.output), item=self.item))
            self.item = {**self.item, "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]}
            events.append(self._event("response.content_part.added", item_id=self.item["id"], output_index=len(self.output),
                                      content_index=0, part={"type": "output_text", "text": "", "annotations": []}))  # fmt: skip
        self.item["content"][0]["text"] += text
        events.append(self._event("response.output_text.delta", item_id=self.item["id"], output_index=len(self.output),
                                  content_index=0, delta=text, logprobs=[]))  # fmt: skip
        return events

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        events = []
        function = call.get("function") or {}
        index = call.get("index", 0)
        if self.item is None or self.item["type"] != "function_call" or self.tool_index != index:
            events += self._close()
            self.tool_index = index
            self.item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                         "call_id": call.get("id") or new_id("call"), "name": function.get("name") or "", "arguments": ""}  # fmt: skip
            events.append(self._event("response.output_item.added", output_index=len(self.output), item=dict(self.item)))
        elif function.get("name"):
            self.item["name"] += function["name"]
        if function.get("arguments"):
            self.item["arguments"] += function["arguments"]
            events.append(self._event("response.function_call_arguments.delta", item_id=self.item["id"],
                                      output_index=len(self.output), delta=function["arguments"]))  # fmt: skip
        return events

    def _close(self) -> list[bytes]:
        item, self.item = self.item, None
        if item is None:
            return []
        index = len(self.output)
        item = {**item, "status": "completed"}
        events = []
        if item["type"] == "message":
            part = {"type": "output_text", "text": item["content"][0]["text"], "annotations": []}
            events.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                      content_index=0, text=part["text"], logprobs=[]))  # fmt: skip
            events.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                      content_index=0, part=part))  # fmt: skip
        else:
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                      name=item["name"], arguments=item["arguments"]))  # fmt: skip
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        self.output.append(item)
        return events

    def end(self) -> list[bytes]:
        """The stream ended well: close the open item, then `response.completed` (or `.incomplete`)."""
        events = self._close()
        response = finish({**self.response, "output": self.output, "usage": usage(self.usage)}, self.finish_reason)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return [*events, self._event(kind, response=response)]

    def fail(self, error: APIError) -> list[bytes]:
        """The expert failed mid-stream: `response.failed`, with what was produced so far."""
        response = {**self.response, "status": "failed", "output": self.output,
                    "error": {"code": error.code or "server_error", "message": error.message}}  # fmt: skip
        return [self._event("response.failed", response=response)]
