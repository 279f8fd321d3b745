"""The uvicorn protocols the local server runs with, each fixing one thing ASGI cannot express.

- `TrackedH11Protocol`: ASGI gives an application no handle on its socket, so an injected fault
  could not drop a connection for real. This protocol registers each connection's transport under
  the (server, client) address pair it also puts in the request scope; `transport_for` finds it.
- `RefusableWebSocketProtocol`: a route may refuse a WebSocket upgrade with a plain HTTP response
  (401, 404, ...); uvicorn 0.54's sans-I/O protocol then still logs "ASGI callable returned without
  completing handshake" for every refusal, burying real errors.
"""

from __future__ import annotations

import asyncio
import weakref

from starlette.types import Scope
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

_Address = tuple[object, object]

# Weak values: a connection upgraded to a WebSocket never reports its loss to the HTTP protocol.
_transports: weakref.WeakValueDictionary[_Address, asyncio.Transport] = weakref.WeakValueDictionary()


class TrackedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, registering its transport for `transport_for`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _transports[(self.server, self.client)] = transport

    def connection_lost(self, exc: Exception | None) -> None:
        _transports.pop((self.server, self.client), None)
        super().connection_lost(exc)


def transport_for(scope: Scope) -> asyncio.Transport | None:
    """The transport that carries the request of ``scope``, if the server tracks it."""
    return _transports.get((scope.get("server"), scope.get("client")))


class RefusableWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol; a refused upgrade counts as a finished handshake."""

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True
