"""UDP from a sandbox to public addresses, relayed by the server as its TCP is (see `forwarding`).

nftables marks the sandbox's outgoing datagrams that are neither DNS nor bound for a refused
address; a policy route takes marked packets back in through ``lo``, where TPROXY hands them, their
destination untouched, to a transparent socket the server owns inside the namespace. The server
reads the first datagram's original destination (``IP_ORIGDSTADDR``), checks it, and opens a flow:
a socket on the host connected to the destination, and inside the namespace a transparent socket
bound to the destination's address and connected to the program's. TPROXY delivers the flow's next
datagrams to that socket, and answers leave from it, so the program sees its peer's address as on a
VM. A flow idle for a minute is closed; a sandbox has at most ``max_flows`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prefect_opencomputer.local.sandbox import netns

IP_TRANSPARENT = 19  # linux/in.h
IP_RECVORIGDSTADDR = 20  # also the type of the control message it adds (IP_ORIGDSTADDR)
# The relay's own sockets inside the namespace carry this mark, so their packets are never taken
# back to the relay; the sandbox's root cannot set marks (no CAP_NET_ADMIN there).
RELAY_MARK = 0x2
FLOW_IDLE_SECONDS = 60.0
_SWEEP_SECONDS = 5.0
_MAX_DATAGRAM = 65535
# Datagrams read per readiness callback: a sandbox sending without pause cannot hold the event loop
# (the reader is called again on the next turn while more are queued).
_BURST = 64

Address = tuple[str, int]


class _Log(Protocol):
    def warning(self, message: str) -> None: ...


@dataclass
class _Flow:
    upstream: socket.socket  # on the host, connected to the destination
    inside: socket.socket  # in the namespace, the destination's address, connected to the program
    last_active: float


class DatagramRelay:
    """The UDP flows of one sandbox with networking enabled."""

    def __init__(
        self,
        netns_fd: int,
        *,
        allowed: Callable[[str, int], bool],
        max_flows: int,
        log: _Log,
    ) -> None:
        self._log = log
        self._allowed = allowed
        # The open flows by (program, destination), at most max_flows at once.
        self._flows: dict[tuple[Address, Address], _Flow] = {}
        self._max_flows = max_flows
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # Each flow's inside socket is made later, in the namespace: keep a handle on it.
        self._netns = os.dup(netns_fd)
        try:
            self._listener = netns.socket_in(self._netns, socket.SOCK_DGRAM)
            try:
                _make_transparent(self._listener)
                self._listener.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
                self._listener.bind(("127.0.0.1", 0))
            except BaseException:
                self._listener.close()
                raise
        except BaseException:
            os.close(self._netns)
            raise

    @property
    def port(self) -> int:
        """The listener's port inside the namespace, where TPROXY sends the marked datagrams."""
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def flows(self) -> int:
        return len(self._flows)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._listener.fileno(), self._receive_first)
        self._sweeper = asyncio.create_task(self._sweep())

    async def close(self) -> None:
        """Close every flow and the listener (idempotent)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for key in list(self._flows):
            self._close_flow(key)
        if self._listener.fileno() >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            os.close(self._netns)

    def _receive_first(self) -> None:
        """Datagrams of flows not yet open (a burst at a time)."""
        for _ in range(_BURST):
            try:
                data, ancillary, _, source = self._listener.recvmsg(_MAX_DATAGRAM, socket.CMSG_SPACE(16))
            except BlockingIOError:
                return
            except OSError as error:
                self._log.warning(f"receiving a datagram failed: {error.strerror or error}")
                return
            destination = _original_destination(ancillary)
            if destination is None:
                continue
            key = (source, destination)
            flow = self._flows.get(key) or self._open(source, destination)
            if flow is not None:
                self._send(flow, flow.upstream, data)

    def _open(self, source: Address, destination: Address) -> _Flow | None:
        address, port = destination
        if not self._allowed(address, port):
            self._log.warning(f"datagram to {address}:{port} refused")
            return None
        if len(self._flows) >= self._max_flows:
            self._log.warning(f"datagram dropped: {self._max_flows} UDP flows already open")
            return None
        assert self._loop is not None
        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        inside: socket.socket | None = None
        try:
            upstream.setblocking(False)
            upstream.connect(destination)
            inside = netns.socket_in(self._netns, socket.SOCK_DGRAM)
            _make_transparent(inside)
            inside.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # one per program socket
            inside.bind(destination)
            inside.connect(source)
        except OSError as error:
            upstream.close()
            if inside is not None:
                inside.close()
            self._log.warning(f"opening a UDP flow to {address}:{port} failed: {error.strerror or error}")
            return None
        flow = _Flow(upstream, inside, time.monotonic())
        key = (source, destination)
        self._flows[key] = flow
        self._loop.add_reader(upstream.fileno(), self._copy, key, upstream, inside)
        self._loop.add_reader(inside.fileno(), self._copy, key, inside, upstream)
        return flow

    def _copy(self, key: tuple[Address, Address], source: socket.socket, sink: socket.socket) -> None:
        flow = self._flows.get(key)
        if flow is None:
            return
        for _ in range(_BURST):
            try:
                data = source.recv(_MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:  # an ICMP error for an earlier datagram (ECONNREFUSED, ...): as on a VM
                return
            self._send(flow, sink, data)

    def _send(self, flow: _Flow, sink: socket.socket, data: bytes) -> None:
        flow.last_active = time.monotonic()
        with contextlib.suppress(OSError):  # a full buffer or an ICMP error: UDP may drop, as here
            sink.send(data)

    def _close_flow(self, key: tuple[Address, Address]) -> None:
        flow = self._flows.pop(key)
        for sock in (flow.upstream, flow.inside):
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            idle_since = time.monotonic() - FLOW_IDLE_SECONDS
            for key in [key for key, flow in self._flows.items() if flow.last_active < idle_since]:
                self._close_flow(key)


def _make_transparent(sock: socket.socket) -> None:
    """Let ``sock`` take TPROXY's datagrams and use a foreign address; mark what it sends."""
    sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, RELAY_MARK)


def _original_destination(ancillary: list[tuple[int, int, bytes]]) -> Address | None:
    """The ``sockaddr_in`` of an ``IP_ORIGDSTADDR`` control message."""
    for level, kind, raw in ancillary:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(raw) >= 8:
            (port,) = struct.unpack_from("!H", raw, 2)
            return socket.inet_ntoa(raw[4:8]), port
    return None
