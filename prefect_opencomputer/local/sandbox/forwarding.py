"""The server's forwarders for one sandbox: its TCP connections and DNS queries, relayed from the host.

nftables (`nftables`) turns every outgoing TCP connection of the sandbox into a connection to the
server's own listener inside the namespace. The server reads the original destination
(``SO_ORIGINAL_DST``), asks the sandbox's `egress.EgressPolicy`, and if allowed connects
from the host and pipes bytes both ways. DNS sent to DNS_ADDRESS is relayed to the host's resolver
the same way, and other UDP to public addresses goes through the server's datagram relay
(`datagrams`). Programs need no proxy settings: node's ``fetch``, plain sockets, ``curl`` and
``getent hosts`` all work.

Bounds: at most ``max_connections`` forwarded connections per sandbox at once (past it new ones are
reset, so the server's descriptors stay bounded: two per connection), and ``max_udp_flows`` UDP
flows (two descriptors each, closed after a minute idle); DNS with a timeout, a rate and a bound on
queries in flight.

What is not offered: ICMP (``ping``) and IPv6 egress (there is no IPv6 route, so IPv6 connects fail
at once and programs fall back to IPv4). With networking disabled the namespace keeps only ``lo``:
do not attach at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from prefect_opencomputer.local.config import HOST_ALIAS
from prefect_opencomputer.local.sandbox import netns
from prefect_opencomputer.local.sandbox.datagrams import DatagramRelay
from prefect_opencomputer.local.sandbox.egress import (
    GATEWAY_ADDRESS,
    EgressPolicy,
    IPNetwork,
    host_addresses,
    host_resolver,
)
from prefect_opencomputer.local.sandbox.nftables import ListenerPorts, load_ruleset
from prefect_opencomputer.local.sandbox.rtnetlink import add_eth0, route_marked_datagrams_to_lo

__all__ = ["SandboxNetwork", "answer_host_alias", "configure", "copy_stream"]

DEFAULT_MAX_CONNECTIONS = 128
# UDP flows hold two descriptors each, as connections do: fewer of them, so that 50 sandboxes at both
# caps stay well within a server's usual 20,000 descriptors.
DEFAULT_MAX_UDP_FLOWS = 32

_CONNECT_TIMEOUT = 10.0
_DNS_TIMEOUT = 5.0
_DNS_STREAM_IDLE = 30.0
_DNS_IN_FLIGHT = 64
# DNS queries a sandbox may send the host's resolver: a steady rate with room for a burst (a build
# resolving its dependencies), so no sandbox floods the resolver every sandbox shares.
DNS_QUERIES_PER_SECOND = 50.0
DNS_QUERY_BURST = 200
_DNS_MAX_MESSAGE = 65535
_LISTEN_BACKLOG = 128
_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
_LOG_INTERVAL = 60.0

logger = logging.getLogger(__name__)


class _QuietLog:
    """One warning per sandbox a minute at most; the rest are counted and told with the next one."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._quiet_until = 0.0
        self._suppressed = 0

    def warning(self, message: str) -> None:
        now = time.monotonic()
        if now < self._quiet_until:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        logger.warning("network of %s: %s%s", self._name, message, more)
        self._suppressed = 0
        self._quiet_until = now + _LOG_INTERVAL


@dataclass(frozen=True)
class _Listeners:
    """The server's sockets inside one sandbox's namespace (127.0.0.1), where the rules send traffic."""

    forward: socket.socket  # TCP
    dns_stream: socket.socket  # DNS over TCP
    dns_datagrams: socket.socket  # DNS over UDP
    datagrams: DatagramRelay  # other UDP

    def ports(self) -> ListenerPorts:
        return ListenerPorts(
            forward=self.forward.getsockname()[1],
            dns_stream=self.dns_stream.getsockname()[1],
            dns_datagram=self.dns_datagrams.getsockname()[1],
            datagram=self.datagrams.port,
        )


class SandboxNetwork:
    """The forwarders and rules of one running sandbox with networking enabled."""

    def __init__(
        self,
        listeners: _Listeners,
        policy: EgressPolicy,
        *,
        max_connections: int,
        resolver: tuple[str, int],
        log: _QuietLog,
    ) -> None:
        self._log = log
        self._policy = policy
        self._listeners = listeners
        listeners.datagrams.start()
        # TCP: the forwarded connections (DNS over TCP included), at most max_connections at once.
        self._connections: set[asyncio.Task[None]] = set()
        self._max_connections = max_connections
        # DNS: queries relayed to the resolver, bounded in flight and in rate.
        self._resolver = resolver
        self._queries: set[asyncio.Task[None]] = set()
        self._dns_budget = _TokenBucket(DNS_QUERIES_PER_SECOND, DNS_QUERY_BURST)
        self.dns_queries_dropped = 0  # over the rate: never sent to the resolver
        self._loops = [
            asyncio.create_task(self._accept(listeners.forward, self._forward)),
            asyncio.create_task(self._accept(listeners.dns_stream, self._relay_dns_stream)),
            asyncio.create_task(self._receive_dns(listeners.dns_datagrams)),
        ]

    @classmethod
    async def attach(
        cls,
        netns_fd: int,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_udp_flows: int = DEFAULT_MAX_UDP_FLOWS,
        name: str = "sandbox",
        resolver: tuple[str, int] | None = None,
        also_public: Collection[IPNetwork] = (),
        registries: Collection[IPNetwork] = (),
        host_ports: Collection[int] = (),
    ) -> SandboxNetwork:
        """Configure the namespace ``netns_fd`` (``lo`` already up or not) and start forwarding for it.

        Call before the sandbox's own programs start, so its first connection already goes through.
        ``netns_fd`` is only used during the call; the caller keeps and closes it. ``resolver``
        defaults to the host's first nameserver; ``also_public``, ``registries`` and ``host_ports``
        make the sandbox's `EgressPolicy`.
        """
        if max_connections < 1 or max_udp_flows < 1:
            raise ValueError("max_connections and max_udp_flows must be at least 1")
        netns.refuse_own_namespace(netns_fd)
        netns.require_host_owned(netns_fd)
        resolver = resolver or host_resolver()
        policy = EgressPolicy(tuple(also_public), tuple(registries), frozenset(host_ports))
        log = _QuietLog(name)
        opened: list[socket.socket] = []
        datagrams: DatagramRelay | None = None
        try:
            dns_datagrams = netns.socket_in(netns_fd, socket.SOCK_DGRAM)
            opened.append(dns_datagrams)
            # Before binding: a socket bound to 127.0.0.1 while lo is down answers from the wrong
            # address, and the relayed DNS replies would not match the queries.
            netns.bring_up_loopback(dns_datagrams)
            dns_datagrams.bind(("127.0.0.1", 0))
            netns.allow_low_ports(netns_fd)
            forward_listener = _listener(netns.socket_in(netns_fd), opened)
            dns_listener = _listener(netns.socket_in(netns_fd), opened)
            datagrams = DatagramRelay(
                netns_fd, allowed=policy.allows_datagram, max_flows=max_udp_flows, log=log
            )
            listeners = _Listeners(forward_listener, dns_listener, dns_datagrams, datagrams)
            await configure(netns_fd, listeners.ports(), policy)
        except BaseException:
            for sock in opened:
                sock.close()
            if datagrams is not None:
                await datagrams.close()
            raise
        return cls(listeners, policy, max_connections=max_connections, resolver=resolver, log=log)

    @property
    def active_connections(self) -> int:
        """Forwarded TCP connections (including DNS over TCP) open right now."""
        return len(self._connections)

    @property
    def udp_flows(self) -> int:
        """UDP flows (other than DNS) open right now."""
        return self._listeners.datagrams.flows

    async def close(self) -> None:
        """Stop listening and drop every forwarded connection, UDP flow and DNS query in flight."""
        tasks = [*self._loops, *self._connections, *self._queries]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._listeners.datagrams.close()
        for sock in (self._listeners.forward, self._listeners.dns_stream, self._listeners.dns_datagrams):
            sock.close()

    async def _accept(
        self, listener: socket.socket, handle: Callable[[socket.socket], Awaitable[None]]
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(listener)
            except OSError as error:  # EMFILE and the like: back off instead of spinning
                self._log.warning(f"accept failed: {error.strerror or error}")
                await asyncio.sleep(0.1)
                continue
            if len(self._connections) >= self._max_connections:
                self._log.warning(f"connection refused: {self._max_connections} already open")
                _reset(client)
                continue
            task = asyncio.create_task(self._serve(client, handle))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
            # A task cancelled before its first step (close() right after an accept) never runs
            # _serve's own cleanup: reset here as well, or the sandbox's end would wait for ever.
            task.add_done_callback(functools.partial(_reset_when_done, client))

    async def _serve(self, client: socket.socket, handle: Callable[[socket.socket], Awaitable[None]]) -> None:
        try:
            await handle(client)
        except (OSError, TimeoutError) as error:
            self._log.warning(f"forwarding failed: {_describe(error)}")
        except Exception as error:  # a bug here must not become a traceback per connection
            self._log.warning(f"forwarding failed unexpectedly: {type(error).__name__}: {error}")
        finally:
            _reset(client)

    async def _forward(self, client: socket.socket) -> None:
        address, port = _original_destination(client)
        if self._policy.reaches_host_port(address, port):
            await _pipe_to(client, "127.0.0.1", port)
            return
        if not self._policy.allows_connection(address, port):
            self._log.warning(f"connection to {address}:{port} refused")
            return
        await _pipe_to(client, address, port)

    async def _relay_dns_stream(self, client: socket.socket) -> None:
        """DNS over TCP, each length-prefixed query relayed over UDP: only DNS reaches the resolver."""
        reader, writer = await asyncio.open_connection(sock=client)
        try:
            while True:
                async with asyncio.timeout(_DNS_STREAM_IDLE):
                    try:
                        size = int.from_bytes(await reader.readexactly(2), "big")
                        query = await reader.readexactly(size)
                    except asyncio.IncompleteReadError:
                        break
                answer = await self._ask_resolver(query)
                writer.write(len(answer).to_bytes(2, "big") + answer)
                await writer.drain()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        finally:
            writer.transport.abort()

    async def _receive_dns(self, datagrams: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            query, client = await loop.sock_recvfrom(datagrams, _DNS_MAX_MESSAGE)
            if len(self._queries) >= _DNS_IN_FLIGHT:
                self._log.warning(f"DNS query dropped: {_DNS_IN_FLIGHT} already in flight")
                continue
            task = asyncio.create_task(self._relay_dns_datagram(datagrams, query, client))
            self._queries.add(task)
            task.add_done_callback(self._queries.discard)

    async def _relay_dns_datagram(
        self, datagrams: socket.socket, query: bytes, client: tuple[str, int]
    ) -> None:
        try:
            answer = await self._ask_resolver(query)
            await asyncio.get_running_loop().sock_sendto(datagrams, answer, client)
        except (OSError, TimeoutError) as error:
            self._log.warning(f"DNS relay failed: {_describe(error)}")

    async def _ask_resolver(self, query: bytes) -> bytes:
        """The host resolver's answer to one DNS message, over UDP from a fresh port."""
        if not self._dns_budget.take():
            self.dns_queries_dropped += 1
            raise OSError(0, f"DNS query dropped: over {DNS_QUERIES_PER_SECOND:g} queries a second")
        if len(query) < 12:  # shorter than a DNS header
            raise OSError(0, "not a DNS message")
        if self._policy.host_ports and (answer := answer_host_alias(query)) is not None:
            return answer
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self._resolver[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as upstream:
            upstream.setblocking(False)
            # Connected, so the kernel drops datagrams from anyone but the resolver.
            await loop.sock_connect(upstream, self._resolver)
            await loop.sock_sendall(upstream, query)
            async with asyncio.timeout(_DNS_TIMEOUT):
                answer = await loop.sock_recv(upstream, _DNS_MAX_MESSAGE)
                while answer[:2] != query[:2]:  # not the answer to this query's id
                    answer = await loop.sock_recv(upstream, _DNS_MAX_MESSAGE)
        return answer


def answer_host_alias(query: bytes) -> bytes | None:
    """The answer to a query for HOST_ALIAS (A: GATEWAY_ADDRESS; other types: none); None for other names."""
    offset, labels = 12, []
    try:
        if int.from_bytes(query[4:6], "big") != 1:
            return None
        while (length := query[offset]) != 0:
            if length > 63:  # a compression pointer: never in a question of one name
                return None
            labels.append(query[offset + 1 : offset + 1 + length].decode("ascii").lower())
            offset += 1 + length
        question_end = offset + 5  # the zero byte, QTYPE and QCLASS
        qtype = int.from_bytes(query[offset + 1 : offset + 3], "big")
        if question_end > len(query):
            return None
    except (IndexError, UnicodeDecodeError):
        return None
    if ".".join(labels) != HOST_ALIAS:
        return None
    # QR, the query's opcode and RD, AA, RA; no error.
    flags = 0x8000 | (query[2] & 0x79) << 8 | 0x0400 | 0x0080
    is_a = qtype == 1
    header = (
        query[:2]
        + flags.to_bytes(2, "big")
        + (1).to_bytes(2, "big")
        + int(is_a).to_bytes(2, "big")
        + bytes(4)
    )
    answer = b""
    if is_a:
        answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(GATEWAY_ADDRESS)
    return header + query[12:question_end] + answer


class _TokenBucket:
    """``rate`` events a second on average, ``burst`` at once: `take` says whether one may happen now."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def _listener(sock: socket.socket, opened: list[socket.socket]) -> socket.socket:
    opened.append(sock)
    # A port the kernel picks from the ephemeral range: programs that bind fixed ports rarely use it.
    sock.bind(("127.0.0.1", 0))
    sock.listen(_LISTEN_BACKLOG)
    return sock


def _original_destination(client: socket.socket) -> tuple[str, int]:
    """Where the sandbox meant to connect before nftables redirected it (a ``sockaddr_in``)."""
    raw = client.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
    (port,) = struct.unpack_from("!H", raw, 2)
    return socket.inet_ntoa(raw[4:8]), port


async def _pipe_to(client: socket.socket, address: str, port: int) -> None:
    """Connect from the host to ``address:port`` and copy both ways until both sides have finished."""
    async with asyncio.timeout(_CONNECT_TIMEOUT):
        up_reader, up_writer = await asyncio.open_connection(address, port)
    writers = [up_writer]
    try:
        reader, writer = await asyncio.open_connection(sock=client)
        writers.append(writer)
        await asyncio.gather(copy_stream(reader, up_writer), copy_stream(up_reader, writer))
        for each in writers:
            each.close()
        for each in writers:
            with contextlib.suppress(OSError):
                await each.wait_closed()
    finally:
        # Cancelled (close()) or failed: drop at once what is still buffered. No-op once closed.
        for each in writers:
            each.transport.abort()


async def copy_stream(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until ``source`` ends, then half-close ``sink``; if either breaks, abort ``sink``."""
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except OSError:
        # One side broke: tear both down, as a router's reset would.
        sink.transport.abort()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (no lingering FIN_WAIT state), safe on an already closed socket."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _reset_when_done(sock: socket.socket, _task: asyncio.Task[None]) -> None:
    _reset(sock)


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


async def configure(netns_fd: int, ports: ListenerPorts, policy: EgressPolicy) -> None:
    """Add ``eth0`` and the route for relayed datagrams, and load the nftables ruleset (the host's
    ``nft``) inside ``netns_fd``."""
    netns.refuse_own_namespace(netns_fd)
    host = sorted(address for address in host_addresses() if isinstance(address, ipaddress.IPv4Address))
    add_eth0(netns_fd)
    route_marked_datagrams_to_lo(netns_fd)
    await load_ruleset(netns_fd, ports, policy, host=host)
