"""Outbound HTTP(S) for sandboxes, without giving them a route off their network namespace.

A sandbox's network namespace has only loopback, so its ports never collide with the host's or
another sandbox's. For ``pip install`` or ``apt-get`` it still needs the internet: the server
listens on ``127.0.0.1:3128`` *inside* each sandbox (a socket it created in that namespace) and
forwards ``CONNECT`` tunnels and plain ``http://`` requests from the host. Every sandbox process
gets ``http_proxy``/``https_proxy`` pointing there. Destinations on this machine or its private
networks (loopback, RFC 1918 and carrier-grade NAT ranges, link-local, unique-local IPv6) are
refused, so a sandbox cannot reach the host's own services through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

from prefect_opencomputer.local.sandbox.network import copy_stream

PROXY_PORT = 3128
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
PROXY_ENV: Mapping[str, str] = {
    "http_proxy": PROXY_URL,
    "https_proxy": PROXY_URL,
    "HTTP_PROXY": PROXY_URL,
    "HTTPS_PROXY": PROXY_URL,
    "no_proxy": "localhost,127.0.0.1,::1",
    "NO_PROXY": "localhost,127.0.0.1,::1",
}
_HEAD_LIMIT = 64 * 1024
_HEAD_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 15.0
_REFUSED_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer", "upgrade"}
)
logger = logging.getLogger(__name__)


class EgressRefused(Exception):
    """The proxy will not forward this request; the message is what the sandbox is told."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def serve(listener: socket.socket) -> asyncio.Server:
    """Start forwarding for connections accepted on ``listener`` (already bound and listening)."""
    return await asyncio.start_server(_handle, sock=listener, limit=_HEAD_LIMIT)


def listening_socket(sock: socket.socket) -> socket.socket:
    """Bind ``sock`` (created in the sandbox's namespace) to the proxy address and listen."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", PROXY_PORT))
    sock.listen(64)
    return sock


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    upstream: asyncio.StreamWriter | None = None
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT)
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        if method.upper() == "CONNECT":
            host, port = _host_port(target, 443)
            up_reader, upstream = await _open_upstream(host, port)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                raise EgressRefused(400, "only absolute http:// URLs and CONNECT are proxied")
            up_reader, upstream = await _open_upstream(url.hostname, url.port or 80)
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            headers = [
                line
                for line in header_lines
                if line and line.split(":", 1)[0].strip().lower() not in _HOP_BY_HOP
            ]
            upstream.write(
                "\r\n".join([f"{method} {path} {version}", *headers, "Connection: close", "", ""]).encode(
                    "latin-1"
                )
            )
        await asyncio.gather(copy_stream(reader, upstream), copy_stream(up_reader, writer))
    except EgressRefused as refused:
        _answer(writer, refused.status, str(refused))
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
        _answer(writer, 400, "malformed proxy request")
    except OSError as error:
        _answer(writer, 502, f"upstream unreachable: {error.strerror or error}")
    finally:
        for stream in (upstream, writer):
            if stream is not None:
                stream.close()


async def _open_upstream(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Resolve once, refuse non-global addresses, then connect to the address that was checked."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise EgressRefused(502, f"cannot resolve {host}: {error.strerror}") from None
    allowed = [info for info in infos if _reachable(str(info[4][0]))]
    if not allowed:
        raise EgressRefused(403, f"destination {host} is on this machine or a private network")
    family, _, _, _, address = allowed[0]
    return await asyncio.wait_for(
        asyncio.open_connection(str(address[0]), port, family=family), _CONNECT_TIMEOUT
    )


def _reachable(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return False
    return not any(ip in network for network in _REFUSED_NETWORKS)


def _host_port(target: str, default_port: int) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    if not host:
        return target, default_port
    return host.strip("[]"), int(port)


def _answer(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    body = message.encode()
    with contextlib.suppress(OSError, RuntimeError):
        writer.write(
            f"HTTP/1.1 {status} Proxy Error\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
