"""A fake OpenAI-compatible expert server for tests and benchmarks.

Its behaviour is steered by markers in the last user message:
  [sleep=S]     wait S seconds before answering (between chunks when streaming)
  [status=N]    answer with HTTP status N and an OpenAI error body
  [tool=NAME]   answer with a call of the tool NAME (arguments {"query": <the message>})
  [cut=N]       stream N words, then end the stream without [DONE] (an expert that died)
  [chunk_sleep=S] stream, waiting S seconds before each chunk (a slow generation)
Otherwise it answers "[<model>] <last user message>", cut to max_tokens words (finish_reason
"length"), and reports the messages it got in an extra `received_messages` field, so tests can
check the prompt reformatting. It also serves the legacy /v1/completions ("[<model>] <prompt>")
and a Responses API of its own at /v1/responses, as vLLM does.

Run standalone: python tests/fake_expert.py --port 9100 [--model NAME ...]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

SLEEP = re.compile(r"\[sleep=([0-9.]+)\]")
STATUS = re.compile(r"\[status=([0-9]{3})\]")
TOOL = re.compile(r"\[tool=([A-Za-z0-9_]+)\]")
CUT = re.compile(r"\[cut=([0-9]+)\]")
CHUNK_SLEEP = re.compile(r"\[chunk_sleep=([0-9.]+)\]")


def _last_user(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content or [])
    return ""


def build_fake_app(models: list[str] | None = None, delay_s: float = 0.0) -> FastAPI:
    """delay_s: a delay for every answer without its own [sleep=S] marker."""
    app = FastAPI()
    app.state.requests = []  # every body received, for assertions
    # model -> {"delay": s, "status": code, "answer": text, "choices": [...], "failures": n,
    # "retry_after": s}: set by tests. "choices" is a stream's choices, sent one chunk each as
    # they are (then [DONE]); "failures": the next n requests get `status` (default 503), the
    # ones after are answered; "retry_after": a Retry-After header on error answers.
    app.state.per_model = {}
    app.state.disconnects = 0  # requests whose client went away while the fake was still "thinking"
    app.state.model_list_calls = 0  # GET /v1/models: what health checks cost the expert
    app.state.traceparents = []  # the W3C traceparent header of every chat request (None if absent)

    @app.get("/health")
    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> dict:
        app.state.model_list_calls += 1
        served = models or ["fake-model"]
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in served]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        app.state.requests.append(body)
        app.state.traceparents.append(request.headers.get("traceparent"))
        query = _last_user(body["messages"])
        rule = app.state.per_model.get(body.get("model"), {})
        failing = rule.get("failures", 0) > 0
        if failing:
            rule["failures"] -= 1
        if failing or (rule.get("status") and "failures" not in rule) or (status := STATUS.search(query)):
            code = int(rule.get("status") or (status.group(1) if not failing else 503))
            headers = {"retry-after": str(rule["retry_after"])} if "retry_after" in rule else None
            return JSONResponse({"error": {"message": f"fake failure {code}", "type": "fake", "code": code}}, code,
                                headers=headers)  # fmt: skip
        delay = float(SLEEP.search(query).group(1)) if SLEEP.search(query) else rule.get("delay", delay_s)
        answer, finish = _truncated(rule.get("answer") or f"[{body['model']}] {query}", body.get("max_tokens"))
        usage = {"prompt_tokens": 7, "completion_tokens": len(answer.split()), "total_tokens": 7 + len(answer.split())}
        tool = TOOL.search(query)
        call = {"id": "call_fake1", "type": "function",
                "function": {"name": tool.group(1), "arguments": orjson.dumps({"query": query}).decode()}} if tool else None  # fmt: skip
        if body.get("stream") and rule.get("choices"):
            return StreamingResponse(_scripted(body["model"], rule["choices"]), media_type="text/event-stream")
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            cut = int(CUT.search(query).group(1)) if CUT.search(query) else None
            if CHUNK_SLEEP.search(query):
                delay = float(CHUNK_SLEEP.search(query).group(1))
            return StreamingResponse(_stream(body["model"], answer, delay, usage if include_usage else None, finish,
                                             call, cut), media_type="text/event-stream")  # fmt: skip
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:  # sleep, but notice a client that gives up
            await asyncio.sleep(min(0.02, max(deadline - time.monotonic(), 0)))
            if await request.is_disconnected():
                app.state.disconnects += 1
                return Response(status_code=499)
        return JSONResponse({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": None if call else answer,
                                                 **({"tool_calls": [call]} if call else {})},
                         "logprobs": None, "finish_reason": "tool_calls" if call else finish}],
            "usage": usage,
            "received_messages": body["messages"],
        })  # fmt: skip

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = orjson.loads(await request.body())
        app.state.requests.append(body)
        prompt = body["prompt"] if isinstance(body["prompt"], str) else " ".join(map(str, body["prompt"]))
        answer, finish = _truncated(f"[{body['model']}] {prompt}", body.get("max_tokens"))
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(answer.split()),
                 "total_tokens": len(prompt.split()) + len(answer.split())}  # fmt: skip
        if body.get("stream"):
            return StreamingResponse(_completion_stream(body["model"], answer, finish), media_type="text/event-stream")
        return JSONResponse({"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                             "model": body["model"], "usage": usage,
                             "choices": [{"index": 0, "text": answer, "logprobs": None, "finish_reason": finish}]})  # fmt: skip

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        """A native Responses API, as vLLM serves it: it answers with the last user message's text."""
        body = orjson.loads(await request.body())
        app.state.requests.append(body)
        items = [body["input"]] if isinstance(body["input"], str) else body["input"]
        users = [i for i in items if isinstance(i, str) or i.get("role") == "user"]
        last = users[-1] if users else ""
        text = last if isinstance(last, str) else last["content"] if isinstance(last["content"], str) else \
            " ".join(p.get("text", "") for p in last["content"])  # fmt: skip
        answer = f"[{body['model']}] {text}"
        if STATUS.search(answer):
            return JSONResponse({"error": {"message": "fake failure", "type": "fake", "code": 500}}, 500)
        message = {"id": "msg_fake", "type": "message", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": answer, "annotations": [], "logprobs": []}]}  # fmt: skip
        response = {"id": "resp_fake", "object": "response", "created_at": int(time.time()), "model": body["model"],
                    "status": "completed", "output": [message], "parallel_tool_calls": True, "tool_choice": "auto",
                    "tools": [], "usage": {"input_tokens": 5, "output_tokens": len(answer.split()), "total_tokens": 5 +
                    len(answer.split()), "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens_details": {"reasoning_tokens": 0}}}  # fmt: skip
        if body.get("stream"):
            return StreamingResponse(_response_events(response, CUT.search(answer) is not None),
                                     media_type="text/event-stream")  # fmt: skip
        return JSONResponse({**response, "received_input": body["input"]})

    return app


async def _scripted(model: str, choices: list[dict | str]):
    """Each choice in a chunk of its own; a string is sent as a raw data line (a broken event)."""
    for choice in choices:
        if isinstance(choice, str):
            yield b"data: " + choice.encode() + b"\n\n"
            continue
        payload = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "logprobs": None, "finish_reason": None, **choice}]}  # fmt: skip
        yield b"data: " + orjson.dumps(payload) + b"\n\n"
    yield b"data: [DONE]\n\n"


def _truncated(answer: str, max_tokens: int | None) -> tuple[str, str]:
    """The answer cut to max_tokens words (a word for a token), and its finish reason."""
    words = answer.split(" ")
    if max_tokens is not None and len(words) > max_tokens:
        return " ".join(words[:max_tokens]), "length"
    return answer, "stop"


async def _completion_stream(model: str, answer: str, finish: str):
    def chunk(text: str, finish_reason: str | None = None) -> bytes:
        payload = {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": model,
                   "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}  # fmt: skip
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    for i, word in enumerate(answer.split(" ")):
        yield chunk(word if i == 0 else " " + word)
    yield chunk("", finish)
    yield b"data: [DONE]\n\n"


async def _response_events(response: dict, cut: bool):
    """A Responses API event stream for `response` (one message), as vLLM sends it."""
    message = response["output"][0]
    text = message["content"][0]["text"]
    part = {"type": "output_text", "text": "", "annotations": []}
    ids = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    events = [("response.created", {"response": {**response, "status": "in_progress", "output": []}}),
              ("response.in_progress", {"response": {**response, "status": "in_progress", "output": []}}),
              ("response.output_item.added", {"output_index": 0, "item": {**message, "status": "in_progress", "content": []}}),
              ("response.content_part.added", {**ids, "part": part})]  # fmt: skip
    events += [("response.output_text.delta", {**ids, "delta": w if i == 0 else " " + w, "logprobs": []})
               for i, w in enumerate(text.split(" "))]  # fmt: skip
    events += [("response.output_text.done", {**ids, "text": text, "logprobs": []}),
               ("response.content_part.done", {**ids, "part": {**part, "text": text}}),
               ("response.output_item.done", {"output_index": 0, "item": message}),
               ("response.completed", {"response": response})]  # fmt: skip
    for number, (kind, fields) in enumerate(events[:5] if cut else events):
        yield f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, "sequence_number": number, **fields}) + b"\n\n"


async def _stream(model: str, answer: str, delay: float, usage: dict | None, finish: str = "stop",
                  call: dict | None = None, cut: int | None = None):  # fmt: skip
    def chunk(delta: dict, finish: str | None = None) -> bytes:
        payload = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}  # fmt: skip
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    if call:  # as OpenAI streams a tool call: its id and name first, then the arguments in pieces
        arguments = call["function"]["arguments"]
        yield chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                     "function": {"name": call["function"]["name"], "arguments": ""}}]})  # fmt: skip
        for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        finish = "tool_calls"
    else:
        for i, word in enumerate(answer.split(" ")):
            if cut is not None and i == cut:
                return  # the connection ends: no finish reason, no [DONE]
            await asyncio.sleep(delay)
            yield chunk({"content": word if i == 0 else " " + word})
    yield chunk({}, finish)
    if usage:
        yield b"data: " + orjson.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                                         "model": model, "choices": [], "usage": usage}) + b"\n\n"  # fmt: skip
    yield b"data: [DONE]\n\n"


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--model", action="append", dest="models")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer (between chunks when streaming)")
    args = parser.parse_args()
    uvicorn.run(build_fake_app(args.models, args.delay), host=args.host, port=args.port, log_level="warning")
