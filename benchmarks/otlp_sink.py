"""A stand-in OTLP/HTTP collector for benchmarks: accepts POST /v1/traces, counts what came,
answers 200 with an empty ExportTraceServiceResponse. So that a traced gateway really exports
(encodes and sends its spans) without a collector installed.

    python benchmarks/otlp_sink.py [--port 4318]
"""

from __future__ import annotations

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink(BaseHTTPRequestHandler):
    batches = 0
    received_bytes = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        self.rfile.read(length)
        Sink.batches += 1
        Sink.received_bytes += length
        if Sink.batches == 1:
            print(f"otlp sink: first batch of spans received ({length} bytes)", flush=True)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:  # quiet
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=4318)
    server = ThreadingHTTPServer(("127.0.0.1", parser.parse_args().port), Sink)
    try:
        server.serve_forever()
    finally:
        print(f"otlp sink: {Sink.batches} batches, {Sink.received_bytes} bytes")
