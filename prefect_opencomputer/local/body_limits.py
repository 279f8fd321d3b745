"""Bounded request bodies: a client cannot make the server buffer more than it agreed to hold.

JSON bodies are read whole here (at most ``max_json_bytes``) and replayed to the route, so the limit
holds whatever the ``Content-Length`` header claims. File uploads stream through, counted on the way.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefect_opencomputer.local.errors import TooLarge
from prefect_opencomputer.local.wire_errors import error_response

TOO_LARGE = "request body too large"
# Routes whose body is file content, not JSON: `PUT .../files` and the signed `PUT .../files/upload`.
_FILE_UPLOAD = re.compile(r"^/api/sandboxes/[^/]+/files(/upload)?/?$")
# Past the limit, read (and drop) this much more so the client can finish sending and read the 413.
_DRAIN_BYTES = 16 * 1024 * 1024


class BodyLimitMiddleware:
    """Answers 413 ``{"error": "request body too large"}`` for bodies above the configured limits."""

    def __init__(self, app: ASGIApp, *, max_json_bytes: int, max_file_bytes: int) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.max_file_bytes = max_file_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_upload = scope["method"] == "PUT" and _FILE_UPLOAD.match(scope["path"]) is not None
        limit = self.max_file_bytes if is_upload else self.max_json_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            # A JSON body a little over its (large) cap is read and dropped so its sender sees the 413.
            drainable = _DRAIN_BYTES if is_upload else limit + _DRAIN_BYTES
            budget = declared if declared <= drainable else 0
            await _refuse(scope, receive, send, more_body=declared > 0, budget=budget)
            return
        if is_upload:
            await self.app(scope, _counted(receive, limit), send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                more = bool(message.get("more_body", False))
                await _refuse(scope, receive, send, more_body=more, budget=_DRAIN_BYTES)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, *, more_body: bool, budget: int) -> None:
    """Answer 413, first reading up to ``budget`` more bytes so a client still sending can read it."""
    drained = 0
    while more_body and drained < budget:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        drained += len(message.get("body", b""))
        more_body = message.get("more_body", False)
    headers = {"Connection": "close"} if more_body else None
    await error_response(413, TOO_LARGE, headers=headers)(scope, receive, send)


def _counted(receive: Receive, limit: int) -> Receive:
    received = 0

    async def counted_receive() -> Message:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise TooLarge(TOO_LARGE, headers={"Connection": "close"})
        return message

    return counted_receive


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay_receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        # After the body, the route may still wait for the client to disconnect.
        return await receive()

    return replay_receive
