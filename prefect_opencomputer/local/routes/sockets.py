"""What the exec and PTY WebSockets share: reading the frames a client sends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import WebSocket, WebSocketDisconnect


async def client_frames(websocket: WebSocket, *, text: bool) -> AsyncIterator[bytes]:
    """Each non-empty frame the client sends until it goes away; ``text`` frames too (as UTF-8) if asked."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None and text and message.get("text") is not None:
                data = message["text"].encode()
            if data:
                yield data
