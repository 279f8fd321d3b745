"""The uvicorn protocols the local server runs with, each fixing one thing ASGI cannot express.

- `TrackedH11Protocol`: ASGI gives an application no handle on its socket, so an injected fault
  could not drop a connection for real. This protocol registers each connection's transport under
  the (server, client) address pair it also puts in the request scope; `transport_for` finds it.
  It also bounds idle connections: one that never sends a request is dropped after the keep-alive
  timeout like any idle one (uvicorn times out only connections that finished a request), and past
  `MAX_CONNECTIONS` the longest-idle ones are dropped first, so a local user opening thousands of
  idle connections holds neither the server's descriptors nor the API.
- `RefusableWebSocketProtocol`: a route may refuse a WebSocket upgrade with a plain HTTP response
  (401, 404, ...); uvicorn 0.54's sans-I/O protocol then still logs "ASGI callable returned without
  completing handshake" for every refusal, burying real errors.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable

from starlette.types import Scope
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

_Address = tuple[object, object]
# Connections the server holds before it drops idle ones, the longest idle first.
MAX_CONNECTIONS = 512

# Weak values: a connection upgraded to a WebSocket never reports its loss to the HTTP protocol.
_transports: weakref.WeakValueDictionary[_Address, asyncio.Transport] = weakref.WeakValueDictionary()


class TrackedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, registering its transport for `transport_for`, idle ones bounded."""

    idle_since: float | None = None  # when it last went idle; None while a request is in progress

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _transports[(self.server, self.client)] = transport
        self._go_idle()
        if len(self.connections) > MAX_CONNECTIONS:
            _drop_longest_idle(self.connections, len(self.connections) - MAX_CONNECTIONS)

    def data_received(self, data: bytes) -> None:
        self.idle_since = None
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:
            self.idle_since = self.loop.time()

    def _go_idle(self) -> None:
        self.idle_since = self.loop.time()
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        _transports.pop((self.server, self.client), None)
        super().connection_lost(exc)


def _drop_longest_idle(connections: Iterable[object], count: int) -> None:
    idle = [
        connection
        for connection in connections
        if isinstance(connection, TrackedH11Protocol) and connection.idle_since is not None
    ]
    idle.sort(key=lambda connection: connection.idle_since or 0.0)
    for connection in idle[:count]:
        connection.timeout_keep_alive_handler()


def transport_for(scope: Scope) -> asyncio.Transport | None:
    """The transport that carries the request of ``scope``, if the server tracks it."""
    return _transports.get((scope.get("server"), scope.get("client")))


class RefusableWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol; a refused upgrade counts as a finished handshake."""

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True
