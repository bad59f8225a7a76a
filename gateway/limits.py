"""Refusing request bodies over the configured size, before they are read into memory."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from expertmesh.gateway.errors import APIError


class BodySizeLimit:
    """Pure ASGI middleware: checks Content-Length up front and counts streamed bytes too
    (a chunked body has no Content-Length); the APIError it raises while the handler
    reads the body is answered by the app's APIError handler."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> APIError:
        return APIError(
            413, f"the request body is larger than the limit of {self.max_bytes} bytes", code="request_too_large"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._error().response()(scope, receive, send)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error()
            return message

        await self.app(scope, limited_receive, send)
