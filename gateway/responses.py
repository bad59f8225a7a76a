"""The OpenAI Responses API (`POST /v1/responses`) in front of experts: the request side.

A request's `instructions` and `input` become the conversation that the router reads and that
the expert's prompt format is applied to. An expert whose server serves the Responses API itself
(vLLM) then gets the request relayed with its model name and that formatted input; any other
expert gets a chat completion request, and its answer goes back through
gateway/response_events.py.

The gateway keeps no state: what needs a stored response (`previous_response_id`,
`conversation`, `background`, `prompt`) is refused with a 400 that says so, except
`previous_response_id` relayed to a named expert whose own server keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from expertmesh.gateway.errors import APIError
from expertmesh.gateway.protocol import ResponsesRequest

# An item of `input` that is not a message (a function call, its output, a reasoning item) rides
# through the expert's prompt formatting as a pseudo-message of this role, which the formatter
# passes through untouched (experts/prompts.py).
ITEM_ROLE = "item"
MESSAGE_ROLES = {"user", "system", "developer", "assistant"}
TEXT_PARTS = {"input_text", "output_text", "text"}
MEDIA_PARTS = {"input_image", "input_file", "input_audio"}
PASSTHROUGH_ITEMS = {"function_call", "function_call_output", "reasoning"}
# Responses fields that a chat completion does not take as they are (translated, or answered here).
NOT_FOR_CHAT = {
    "model",
    "input",
    "instructions",
    "stream",
    "max_output_tokens",
    "text",
    "tools",
    "tool_choice",
    "top_logprobs",
    "include",
    "store",
    "metadata",
    "truncation",
    "reasoning",
    "service_tier",
    "previous_response_id",
    "background",
    "conversation",
    "prompt",
    "max_tool_calls",
    "stream_options",
    "prompt_cache_key",
    "safety_identifier",
    "expertmesh",
}


def refuse_stored_state(request: ResponsesRequest) -> None:
    """What only a server that stores responses could answer (checked before routing)."""
    if request.background:
        raise APIError(
            400, "background responses are not supported: the gateway stores no responses", param="background"
        )
    for field in ("conversation", "prompt"):
        if getattr(request, field) is not None:
            raise APIError(400, f"'{field}' refers to objects stored by OpenAI; send the input itself", param=field)


def refuse_previous_response(request: ResponsesRequest, native_and_named: bool) -> None:
    if request.previous_response_id and not native_and_named:
        raise APIError(
            400,
            "previous_response_id needs the server that stored that response: name an expert whose server "
            "serves the Responses API as the model, or send the whole conversation as input",
            param="previous_response_id",
        )


# --- input -> conversation ---------------------------------------------------------------------


def conversation(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The request as chat messages (the instructions first, as a system message): text parts as
    chat's text parts, media parts as the Responses API spells them, other items as ITEM_ROLE."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        return [*messages, {"role": "user", "content": request.input}]
    return messages + [_message(index, item) for index, item in enumerate(request.input)]


def _string(value: Any, where: str, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise APIError(400, f"{where}: expected {what}, got {value!r:.60}", param=where)
    return value


def _message(index: int, item: dict[str, Any]) -> dict[str, Any]:
    where = f"input[{index}]"
    kind = _string(item.get("type", "message"), f"{where}.type")
    if kind in PASSTHROUGH_ITEMS:
        _check_item(where, kind, item)
        return {"role": ITEM_ROLE, "item": item}
    if kind != "message":
        raise APIError(
            400,
            f"{where}: items of type '{kind}' are not supported (expertmesh keeps no stored items and "
            "runs no built-in tools); send messages, function calls and their outputs",
            param=f"{where}.type",
        )
    role = _string(item.get("role"), f"{where}.role", f"one of {sorted(MESSAGE_ROLES)}")
    if role not in MESSAGE_ROLES:
        raise APIError(
            400, f"{where}.role: expected one of {sorted(MESSAGE_ROLES)}, got {role!r}", param=f"{where}.role"
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise APIError(400, f"{where}.content: expected a string or a list of content parts", param=f"{where}.content")
    return {"role": role, "content": [_part(f"{where}.content[{n}]", part) for n, part in enumerate(content)]}


def _check_item(where: str, kind: str, item: dict[str, Any]) -> None:
    required = {"function_call": ("call_id", "name", "arguments"), "function_call_output": ("call_id",)}
    for field in required.get(kind, ()):
        _string(item.get(field), f"{where}.{field}")
    if kind == "function_call_output" and not isinstance(item.get("output"), str | list):
        raise APIError(400, f"{where}.output: expected a string or a list of content parts", param=f"{where}.output")


def _part(where: str, part: Any) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise APIError(400, f"{where}: expected a content part object", param=where)
    kind = _string(part.get("type"), f"{where}.type")
    if kind in TEXT_PARTS:
        return {"type": "text", "text": _string(part.get("text"), f"{where}.text")}
    if kind == "refusal":
        return {"type": "text", "text": _string(part.get("refusal"), f"{where}.refusal")}
    if kind in MEDIA_PARTS:
        return part
    raise APIError(
        400,
        f"{where}: unknown content part {kind!r}; expected input_text, input_image, input_file or input_audio",
        param=where,
    )


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
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            if out and out[-1]["role"] == "assistant":  # the assistant turn that made the call(s)
                out[-1]["tool_calls"] = [*(out[-1].get("tool_calls") or []), call]
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif item["type"] == "function_call_output":
            output = item["output"]
            if isinstance(output, list):
                output = "\n".join(p.get("text", "") for p in output if isinstance(p, dict))
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        # reasoning items: a chat model has no place for them
    return out


def _chat_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "input_image":
        if not isinstance(part.get("image_url"), str):
            raise APIError(
                400,
                "input_image: only images given by image_url (a URL or a data: URL) can be "
                "sent to this expert; file_id refers to OpenAI's file store",
                param="input",
            )
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
        body["tools"] = [_chat_tool(f"tools[{index}]", tool) for index, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        body["tool_choice"] = _chat_tool_choice(request.tool_choice)
    response_format = _chat_response_format(request.text)
    if response_format is not None:
        body["response_format"] = response_format
    if request.top_logprobs:
        body.update(logprobs=True, top_logprobs=request.top_logprobs)
    if request.stream:
        body["stream_options"] = {"include_usage": True}  # the final usage of response.completed
    return body


def _chat_tool(where: str, tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise APIError(
            400,
            f"{where}: tool type {tool.get('type')!r} is not supported; expertmesh passes function tools to the expert",
            param=f"{where}.type",
        )
    function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
    _string(function.get("name"), f"{where}.name")
    # A Responses function tool is strict unless it says otherwise; a chat one is not.
    return {"type": "function", "function": {**function, "strict": tool.get("strict", True)}}


def _chat_tool_choice(choice: Any) -> Any:
    if not isinstance(choice, dict):
        return choice  # "auto", "none", "required"
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    if choice.get("type") == "allowed_tools":
        tools = [_chat_tool_choice(tool) for tool in choice.get("tools") or []]
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice.get("mode", "auto"), "tools": tools}}
    raise APIError(400, f"tool_choice: type {choice.get('type')!r} is not supported", param="tool_choice")


def _chat_response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise APIError(400, 'text.format: expected an object such as {"type": "json_schema", ...}', param="text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    if kind == "json_object":
        return {"type": "json_object"}
    raise APIError(
        400, f"text.format.type: expected text, json_schema or json_object, got {kind!r}", param="text.format.type"
    )
