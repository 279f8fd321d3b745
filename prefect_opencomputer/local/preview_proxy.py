"""Preview traffic: ``sb-xxxxxxxx-p<port>.<domain>`` requests go to that port inside the sandbox.

Like the service's edge, the server routes on the Host header's first DNS label, so any name that
resolves here works (browsers resolve ``*.localhost`` to loopback). Requests and responses stream
through HTTP/1.1 (h11) on a fresh connection into the sandbox's own network namespace.
"""

from __future__ import annotations

import asyncio
import re
from typing import Protocol

import h11
from starlette.types import ASGIApp, Receive, Scope, Send

from prefect_opencomputer.local.errors import BackendError
from prefect_opencomputer.local.wire_errors import error_response

PREVIEW_LABEL = re.compile(r"^(sb-[0-9a-f]{8})-p(\d+)$")
_READ_CHUNK = 65536
_PREVIEW_TOKEN_HEADER = b"x-oc-preview-token"
# The proxy sends the whole body at once, so an upstream "100 Continue" has nothing to unblock. The
# API key is the server's credential: it never reaches a sandbox, whatever host it was sent to.
_NOT_FORWARDED = frozenset({_PREVIEW_TOKEN_HEADER, b"expect", b"x-api-key"})
# Forwarding headers are the proxy's own to write: a client's would let it pose as another address.
_PROXY_OWNED = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-proto",
        b"x-real-ip",
    }
)
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class PreviewBackend(Protocol):
    """What the proxy needs from the backend: a connection to a port inside a sandbox."""

    async def connect_preview(
        self, sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...

    def preview_access_allowed(self, sandbox_id: str, presented_token: str | None) -> bool: ...

    def touch(self, sandbox_id: str) -> None: ...


def _presented_preview_token(scope: Scope) -> tuple[str | None, bytes]:
    """The preview token a request carries, and the header it came in (the edge's precedence)."""
    bearer = None
    for name, value in scope["headers"]:
        if name == _PREVIEW_TOKEN_HEADER:
            return value.decode("latin-1"), name
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                bearer = credential.strip()
    return bearer, b"authorization"


def preview_target(scope: Scope) -> tuple[str, int] | None:
    """``(sandbox_id, port)`` when the request's Host names a preview, else None."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            label = value.decode("latin-1").split(".", 1)[0].split(":", 1)[0].lower()
            match = PREVIEW_LABEL.match(label)
            if match is None:
                return None
            return match.group(1), int(match.group(2))
    return None


class PreviewProxyMiddleware:
    """Sends preview-host requests to the sandbox; everything else to the API."""

    def __init__(self, app: ASGIApp, *, backend: PreviewBackend) -> None:
        self.app = app
        self.backend = backend

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = preview_target(scope) if scope["type"] in ("http", "websocket") else None
        if target is None:
            await self.app(scope, receive, send)
            return
        sandbox_id, port = target
        if scope["type"] == "websocket":
            response = error_response(501, "WebSocket preview traffic is not supported by the local server")
            await response(scope, receive, send)
            return
        if not 1 <= port <= 65535:
            await error_response(400, "port must be between 1 and 65535")(scope, receive, send)
            return
        hidden = _NOT_FORWARDED
        if not self.backend.preview_access_allowed(sandbox_id, None):
            # Gated: the token is the edge's business, never the app's.
            token, credential_header = _presented_preview_token(scope)
            if not self.backend.preview_access_allowed(sandbox_id, token):
                await error_response(401, "missing or invalid preview token")(scope, receive, send)
                return
            hidden = hidden | {credential_header}
        try:
            reader, writer = await self.backend.connect_preview(sandbox_id, port)
        except BackendError as exc:
            await error_response(exc.status, exc.message, headers=exc.headers, **exc.extra)(
                scope, receive, send
            )
            return
        except OSError:
            message = f"nothing is listening on port {port} in sandbox {sandbox_id}"
            await error_response(502, message)(scope, receive, send)
            return
        try:
            await _forward(scope, receive, send, reader, writer, sandbox_id, port, hidden)
        finally:
            writer.close()
            # A long response is activity too: the idle timer restarts when it ends.
            self.backend.touch(sandbox_id)


async def _forward(
    scope: Scope,
    receive: Receive,
    send: Send,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    sandbox_id: str,
    port: int,
    hidden_headers: frozenset[bytes],
) -> None:
    upstream = h11.Connection(h11.CLIENT)
    dropped = _HOP_BY_HOP | _PROXY_OWNED | hidden_headers | _connection_listed(scope["headers"])
    headers = [(name, value) for name, value in scope["headers"] if name not in dropped]
    has_length = any(name == b"content-length" for name, _ in headers)
    chunked = any(name == b"transfer-encoding" for name, _ in scope["headers"])
    if chunked and not has_length:
        headers.append((b"transfer-encoding", b"chunked"))
    client = scope.get("client")
    if client:
        headers.append((b"x-forwarded-for", str(client[0]).encode()))
    headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
    # One request per upstream connection: no pooling state to get wrong.
    headers.append((b"connection", b"close"))
    target = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]

    started = False
    watcher: asyncio.Task[None] | None = None
    try:
        writer.write(upstream.send(h11.Request(method=scope["method"], target=target, headers=headers)))
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            if body:
                writer.write(upstream.send(h11.Data(data=body)))
                await writer.drain()
            more_body = message.get("more_body", False)
        writer.write(upstream.send(h11.EndOfMessage()))
        await writer.drain()
        # A client that goes away must not leave an endless upstream response (say, a live
        # event stream) being read for nobody: closing the upstream ends the loops below.
        watcher = asyncio.ensure_future(_close_on_disconnect(receive, writer))

        while True:
            event = await _next_event(upstream, reader)
            if isinstance(event, h11.Response):
                break
            if not isinstance(event, h11.InformationalResponse):
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} before the response")
        upstream_headers = [(name.lower(), value) for name, value in event.headers.raw_items()]
        hop_by_hop = _HOP_BY_HOP | _connection_listed(upstream_headers)
        response_headers = [(name, value) for name, value in upstream_headers if name not in hop_by_hop]
        await send({"type": "http.response.start", "status": event.status_code, "headers": response_headers})
        started = True
        while True:
            event = await _next_event(upstream, reader)
            if isinstance(event, h11.Data):
                await send({"type": "http.response.body", "body": bytes(event.data), "more_body": True})
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
    except (h11.ProtocolError, OSError) as exc:
        if started or (watcher is not None and watcher.done()):
            return  # the response is cut short: all a client can be told now, if it is still there
        reason = f"bad response from port {port} in sandbox {sandbox_id}: {exc}"
        await error_response(502, reason)(scope, receive, send)
    finally:
        if watcher is not None:
            watcher.cancel()


def _connection_listed(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names a ``Connection`` header lists: hop-by-hop for this message (RFC 9110 7.6.1)."""
    return frozenset(
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
        if token.strip()
    )


async def _close_on_disconnect(receive: Receive, writer: asyncio.StreamWriter) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    writer.close()


async def _next_event(upstream: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = upstream.next_event()
        if event is h11.NEED_DATA:
            upstream.receive_data(await reader.read(_READ_CHUNK))
            continue
        if event is h11.PAUSED:
            raise h11.RemoteProtocolError("upstream connection paused unexpectedly")
        return event
