"""An instant OpenAI-compatible upstream for overhead benchmarks: raw asyncio + httptools,
pre-encoded responses, zero delay, so that what a gateway adds is all that is measured.

python benchmarks/instant_upstream.py --port 9000 [--chunks 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json

import httptools

ANSWER_WORDS = ["expertmesh", "benchmark", "answer"]


def _json_response(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _completion(model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-instant", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(ANSWER_WORDS)},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }).encode()  # fmt: skip


def _stream(model: str, chunks: int) -> bytes:
    def event(delta: dict, finish: str | None = None) -> bytes:
        payload = {"id": "chatcmpl-instant", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}  # fmt: skip
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    body = event({"role": "assistant", "content": ""})
    body += b"".join(event({"content": f"tok{i} "}) for i in range(chunks))
    body += event({}, "stop") + b"data: [DONE]\n\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return head + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


class _Protocol(asyncio.Protocol):
    def __init__(self, responses: dict[str, bytes]) -> None:
        self.responses = responses
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_begin(self) -> None:
        self.url, self.body = b"", b""

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.url.endswith(b"/models"):
            self.transport.write(self.responses["models"])
        elif self.url.endswith(b"/health"):
            self.transport.write(_json_response(b"{}"))
        else:
            self.transport.write(self.responses["stream" if b'"stream":true' in self.body.replace(b" ", b"") else "json"])


async def serve(host: str, port: int, chunks: int, model: str) -> None:
    responses = {
        "json": _json_response(_completion(model)),
        "stream": _stream(model, chunks),
        "models": _json_response(json.dumps({"object": "list", "data": [{"id": model, "object": "model"}]}).encode()),
    }
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Protocol(responses), host, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--model", default="fake-model")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.chunks, args.model))
