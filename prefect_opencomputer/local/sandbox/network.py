"""Networking like a VM for a sandbox, fenced where the sandbox's root cannot reach the fence.

A sandbox runs in a network namespace owned by the host's user namespace, so its root has no
``CAP_NET_ADMIN`` there: it cannot change the routes or firewall rules the server puts in. The
server gives that namespace an inert ``eth0`` (10.0.2.15/24, default route via 10.0.2.2) so that
programs see an ordinary network, and nftables rules that turn every outgoing TCP connection into a
connection to the server's own listener inside the namespace. The server reads the original
destination (``SO_ORIGINAL_DST``), refuses it unless it is a public address that is not this host's,
and otherwise connects from the host and pipes bytes both ways. DNS sent to 10.0.2.3 is relayed to
the host's resolver the same way, and other UDP to public addresses goes through the server's
datagram relay (`datagrams`). Programs need no proxy settings: node's ``fetch``, plain sockets,
``curl`` and ``getent hosts`` all work.

What is enforced, and where:

- In the server: only global unicast destinations (``ipaddress.is_global`` plus an explicit list
  of special ranges that Python 3.11 misses, or networks the operator declares public), never an
  address of this host's interfaces nor loopback, link-local or multicast, port 1-65535; at most
  ``max_connections`` forwarded connections per sandbox at once (past it new ones are reset, so the
  server's descriptors stay bounded: two per connection), and ``max_udp_flows`` UDP flows (two
  descriptors each, closed after a minute idle); DNS only to the host's resolver, with a timeout
  and a bound on queries in flight.
- In the namespace (nftables, host-owned): TCP to the refused IPv4 ranges and this host's
  addresses is reset before it is redirected, UDP to them is dropped (``EPERM`` at the sender);
  everything else that does not leave through ``lo`` is dropped, so nothing reaches a device.

One exception, off unless the operator asks for it: the host's loopback ports named in ``host_ports``
(``local serve --allow-host-port``, a local Prefect API) are reachable at GATEWAY_ADDRESS, which the
DNS relay gives as the address of ``HOST_ALIAS``; nothing else of the host is.

What is not offered: ICMP (``ping``) and IPv6 egress (there is no IPv6 route, so IPv6 connects fail
at once and programs fall back to IPv4). With networking disabled the namespace keeps only ``lo``:
do not attach at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from prefect_opencomputer.local.config import HOST_ALIAS
from prefect_opencomputer.local.sandbox import netns
from prefect_opencomputer.local.sandbox.datagrams import DatagramRelay

__all__ = [
    "DNS_ADDRESS",
    "GATEWAY_ADDRESS",
    "HOST_ALIAS",
    "RESOLV_CONF",
    "SANDBOX_ADDRESS",
    "IPNetwork",
    "NetworkSetupError",
    "SandboxNetwork",
    "allow_low_ports",
    "copy_stream",
    "destination_allowed",
    "host_addresses",
    "host_resolver",
    "registry_exceptions",
]

SANDBOX_ADDRESS = "10.0.2.15"
GATEWAY_ADDRESS = "10.0.2.2"
DNS_ADDRESS = "10.0.2.3"
# The root filesystems write this as /etc/resolv.conf: the server answers DNS at DNS_ADDRESS.
RESOLV_CONF = f"nameserver {DNS_ADDRESS}\n"
DEFAULT_MAX_CONNECTIONS = 128
# UDP flows hold two descriptors each, as connections do: fewer of them, so that 50 sandboxes at both
# caps stay well within a server's usual 20,000 descriptors.
DEFAULT_MAX_UDP_FLOWS = 32

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

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
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1  # linux/sockios.h, linux/if.h
_NS_GET_USERNS = 0xB701  # linux/nsfs.h: a descriptor of the namespace's owning user namespace
_SIOCGIFINDEX = 0x8933
# rtnetlink (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h)
_NLMSG_ERROR = 2
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_REPLACE, _NLM_F_EXCL, _NLM_F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
_RTM_NEWLINK, _RTM_NEWADDR, _RTM_NEWROUTE, _RTM_NEWRULE = 16, 20, 24, 32
_IFLA_IFNAME, _IFLA_LINKINFO, _IFLA_INFO_KIND = 3, 18, 1
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTA_OIF, _RTA_GATEWAY = 4, 5
_RT_TABLE_MAIN, _RTPROT_BOOT, _RTN_UNICAST, _RTN_LOCAL, _RT_SCOPE_HOST = 254, 3, 1, 2, 254
_FRA_PRIORITY, _FRA_FWMARK, _FRA_TABLE, _FR_ACT_TO_TBL = 6, 10, 15, 1  # linux/fib_rules.h
# Datagrams nftables marks for the relay, and the routing table that takes them back in through lo.
_DATAGRAM_MARK = 0x1
_DATAGRAM_TABLE = 100
_LOOPBACK_IFINDEX = 1  # lo's index in every network namespace
_LOG_INTERVAL = 60.0
_HOST_ADDRESSES_TTL = 5.0

# Special-purpose ranges (IANA registries), refused whatever ``is_global`` says: Python 3.11.7 calls
# 192.0.0.0/24, 192.88.99.0/24, 64:ff9b::/96, 2002::/16, fec0::/10 and 5f00::/16 global.
_REFUSED_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/127",
        "::ffff:0:0/96",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "2002::/16",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_REFUSED_IPV4 = tuple(network for network in _REFUSED_NETWORKS if network.version == 4)

logger = logging.getLogger(__name__)


# The package registries sandboxes install from: public by definition, whatever range they resolve to.
REGISTRY_HOSTS = ("pypi.org", "files.pythonhosted.org", "deb.debian.org", "registry.npmjs.org")
# What package clients use of them: HTTPS, and HTTP (apt): TCP only.
REGISTRY_PORTS = frozenset({80, 443})
# Never made reachable by an exception: this host's own networks in every usual sense.
_NEVER_PUBLIC = tuple(
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def registry_exceptions(hosts: Iterable[str] = REGISTRY_HOSTS) -> frozenset[IPNetwork]:
    """The registries' addresses, as this host resolves them, that the policy would refuse.

    Where this host's egress maps the registries into a documentation range (a TLS-inspecting
    gateway, as on some CI machines), sandboxes need those exact addresses: each one as a /32 or
    /128, never a loopback, link-local, multicast, private or host address.
    """
    found: set[IPNetwork] = set()
    for host in hosts:
        try:
            infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
        except OSError:
            continue
        for info in infos:
            ip = ipaddress.ip_address(info[4][0])
            if destination_allowed(str(ip), 443) or ip in host_addresses():
                continue
            if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
                continue
            if any(ip in network for network in _NEVER_PUBLIC):
                continue
            found.add(ipaddress.ip_network(ip))
    return frozenset(found)


class NetworkSetupError(RuntimeError):
    """Configuring a sandbox's network namespace failed; the message carries the tool's complaint."""


def destination_allowed(
    address: str,
    port: int,
    *,
    also_public: Collection[IPNetwork] = (),
    registries: Collection[IPNetwork] = (),
) -> bool:
    """Whether a sandbox may open a connection to ``address:port`` (through the server).

    ``also_public`` names networks the operator declares public although they are in a special
    range (a lab whose "internet" lives in documentation ranges, say); ``registries`` are the
    package registries' addresses (`registry_exceptions`), open on the ports package clients use
    only (`REGISTRY_PORTS`). Neither ever reaches loopback, link-local or multicast addresses, nor
    this host's own addresses.
    """
    if not 0 < port < 65536:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return False
    if ip in host_addresses():
        return False
    if any(ip in network for network in also_public):
        return True
    if any(ip in network for network in registries):
        return port in REGISTRY_PORTS
    return ip.is_global and not any(ip in network for network in _REFUSED_NETWORKS)


def host_addresses() -> frozenset[IPAddress]:
    """Every address of this host's interfaces (re-read from /proc at most every few seconds)."""
    return _host_addresses(int(time.monotonic() // _HOST_ADDRESSES_TTL))


@functools.lru_cache(maxsize=1)
def _host_addresses(_period: int) -> frozenset[IPAddress]:
    # /proc/thread-self/net is this thread's namespace: the host's, since nothing here lingers in a
    # sandbox's. Reading two small files is far cheaper than spawning ``ip``.
    net = Path("/proc/thread-self/net")
    found: set[IPAddress] = set()
    candidate = ""
    for line in _read_lines(net / "fib_trie"):
        text = line.strip()
        if text.startswith("|-- "):
            candidate = text[4:]
        elif text == "/32 host LOCAL" and candidate:
            found.add(ipaddress.IPv4Address(candidate))
    for line in _read_lines(net / "if_inet6"):
        fields = line.split()
        if fields:
            found.add(ipaddress.IPv6Address(int(fields[0], 16)))
    return frozenset(found)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:  # no IPv6 in this kernel, say
        return []


def host_resolver(resolv_conf: Path = Path("/etc/resolv.conf")) -> tuple[str, int]:
    """The host's first ``nameserver``: the only non-global destination, and only for relayed DNS."""
    for line in resolv_conf.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            return str(ipaddress.ip_address(fields[1].split("%")[0])), 53
    raise NetworkSetupError(f"no nameserver in {resolv_conf}")


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


class SandboxNetwork:
    """The forwarders and rules of one running sandbox with networking enabled."""

    def __init__(
        self,
        *,
        name: str,
        max_connections: int,
        resolver: tuple[str, int],
        also_public: Collection[IPNetwork],
        registries: Collection[IPNetwork],
        host_ports: Collection[int],
        forward_listener: socket.socket,
        dns_listener: socket.socket,
        dns_datagrams: socket.socket,
        datagrams: DatagramRelay,
        log: _QuietLog,
    ) -> None:
        self._log = log
        self._max_connections = max_connections
        self._resolver = resolver
        self._also_public = tuple(also_public)
        self._registries = tuple(registries)
        self._host_ports = frozenset(host_ports)
        self._sockets = (forward_listener, dns_listener, dns_datagrams)
        self._datagrams = datagrams
        datagrams.start()
        self._connections: set[asyncio.Task[None]] = set()
        self._queries: set[asyncio.Task[None]] = set()
        self._dns_budget = _TokenBucket(DNS_QUERIES_PER_SECOND, DNS_QUERY_BURST)
        self.dns_queries_dropped = 0  # over the rate: never sent to the resolver
        self._loops = [
            asyncio.create_task(self._accept(forward_listener, self._forward)),
            asyncio.create_task(self._accept(dns_listener, self._relay_dns_stream)),
            asyncio.create_task(self._receive_dns(dns_datagrams)),
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
        defaults to the host's first nameserver; ``also_public`` and ``registries`` (TCP only, to
        the datagram relay neither) are as in ``destination_allowed``;
        ``host_ports`` are the host's loopback ports reachable at GATEWAY_ADDRESS (``HOST_ALIAS``).
        """
        if max_connections < 1 or max_udp_flows < 1:
            raise ValueError("max_connections and max_udp_flows must be at least 1")
        _refuse_own_namespace(netns_fd)
        _require_host_owned(netns_fd)
        resolver = resolver or host_resolver()
        log = _QuietLog(name)
        opened: list[socket.socket] = []
        datagrams: DatagramRelay | None = None
        try:
            dns_datagrams = netns.socket_in(netns_fd, socket.SOCK_DGRAM)
            opened.append(dns_datagrams)
            # Before binding: a socket bound to 127.0.0.1 while lo is down answers from the wrong
            # address, and the relayed DNS replies would not match the queries.
            _bring_up_loopback(dns_datagrams)
            dns_datagrams.bind(("127.0.0.1", 0))
            allow_low_ports(netns_fd)
            forward_listener = _listener(netns.socket_in(netns_fd), opened)
            dns_listener = _listener(netns.socket_in(netns_fd), opened)
            datagrams = DatagramRelay(
                netns_fd,
                allowed=functools.partial(destination_allowed, also_public=tuple(also_public)),
                max_flows=max_udp_flows,
                log=log,
            )
            await configure(
                netns_fd,
                ListenerPorts(
                    forward=forward_listener.getsockname()[1],
                    dns_stream=dns_listener.getsockname()[1],
                    dns_datagram=dns_datagrams.getsockname()[1],
                    datagram=datagrams.port,
                ),
                also_public=also_public,
                registries=registries,
                host_ports=host_ports,
            )
        except BaseException:
            for sock in opened:
                sock.close()
            if datagrams is not None:
                await datagrams.close()
            raise
        return cls(
            name=name,
            max_connections=max_connections,
            resolver=resolver,
            also_public=also_public,
            registries=registries,
            host_ports=host_ports,
            forward_listener=forward_listener,
            dns_listener=dns_listener,
            dns_datagrams=dns_datagrams,
            datagrams=datagrams,
            log=log,
        )

    @property
    def active_connections(self) -> int:
        """Forwarded TCP connections (including DNS over TCP) open right now."""
        return len(self._connections)

    @property
    def udp_flows(self) -> int:
        """UDP flows (other than DNS) open right now."""
        return self._datagrams.flows

    async def close(self) -> None:
        """Stop listening and drop every forwarded connection, UDP flow and DNS query in flight."""
        tasks = [*self._loops, *self._connections, *self._queries]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._datagrams.close()
        for sock in self._sockets:
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
        if address == GATEWAY_ADDRESS and port in self._host_ports:
            # The operator's one exception: this port of the host's loopback, nothing else of the host.
            await _pipe_to(client, "127.0.0.1", port)
            return
        if not destination_allowed(address, port, also_public=self._also_public, registries=self._registries):
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
        if self._host_ports and (answer := answer_host_alias(query)) is not None:
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


def allow_low_ports(netns_fd: int) -> None:
    """Let the sandbox's root bind ports below 1024 (a web server on port 80), as in a VM.

    The namespace belongs to the host's user namespace, so without this the sandbox's root lacks
    ``CAP_NET_BIND_SERVICE`` there. ``attach`` does it; call it yourself for sandboxes without network.
    """
    netns.set_sysctl(netns_fd, "net.ipv4.ip_unprivileged_port_start", "0")


def _refuse_own_namespace(netns_fd: int) -> None:
    """A wrong descriptor must never turn into rules or routes in the host's own namespace."""
    if os.fstat(netns_fd).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
        raise NetworkSetupError("refusing to configure the server's own network namespace")


def _require_host_owned(netns_fd: int) -> None:
    """The fence holds only if the sandbox's root lacks CAP_NET_ADMIN over the namespace."""
    owner = fcntl.ioctl(netns_fd, _NS_GET_USERNS)
    try:
        owned_by_us = os.fstat(owner).st_ino == os.stat("/proc/self/ns/user").st_ino
    finally:
        os.close(owner)
    if not owned_by_us:
        raise NetworkSetupError("the sandbox's network namespace must belong to the server's user namespace")


def _bring_up_loopback(sock: socket.socket) -> None:
    """Set ``lo`` up in the namespace ``sock`` belongs to, with two ioctls instead of a spawn."""
    name = b"lo"
    request = struct.pack("16sH22x", name, 0)
    (flags,) = struct.unpack_from("H", fcntl.ioctl(sock, _SIOCGIFFLAGS, request), 16)
    if not flags & _IFF_UP:
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", name, flags | _IFF_UP))


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


# --- the namespace's configuration ---------------------------------------------------------------


def add_eth0(netns_fd: int) -> None:
    """Give the namespace an inert, up ``eth0`` at SANDBOX_ADDRESS/24, default route via GATEWAY_ADDRESS.

    What ``ip link add eth0 up type ifb; ip addr replace 10.0.2.15/24 dev eth0; ip route replace
    default via 10.0.2.2 dev eth0`` does, over rtnetlink instead of a spawn (4 ms here). ifb: an
    inert device built into this kernel (dummy is not); nothing sent to it goes anywhere.
    """
    with netns.rtnetlink_in(netns_fd) as rtnl, netns.socket_in(netns_fd, socket.SOCK_DGRAM) as probe:
        kind = _rtattr(_IFLA_INFO_KIND, b"ifb\0")
        link = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, _IFF_UP, _IFF_UP)
        link += _rtattr(_IFLA_IFNAME, b"eth0\0") + _rtattr(_IFLA_LINKINFO, kind)
        _rtnl_request(rtnl, _RTM_NEWLINK, _NLM_F_EXCL, link, tolerate=errno.EEXIST)
        request = fcntl.ioctl(probe, _SIOCGIFINDEX, struct.pack("16si20x", b"eth0", 0))
        (index,) = struct.unpack_from("i", request, 16)
        address = socket.inet_aton(SANDBOX_ADDRESS)
        message = struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, index)
        message += _rtattr(_IFA_LOCAL, address) + _rtattr(_IFA_ADDRESS, address)
        _rtnl_request(rtnl, _RTM_NEWADDR, _NLM_F_REPLACE, message)
        # rtmsg: family, destination and source prefix lengths (0: default), tos, table, protocol,
        # scope (universe), type, flags.
        route = struct.pack("=8BI", socket.AF_INET, 0, 0, 0, _RT_TABLE_MAIN, _RTPROT_BOOT, 0, _RTN_UNICAST, 0)
        route += _rtattr(_RTA_GATEWAY, socket.inet_aton(GATEWAY_ADDRESS))
        route += _rtattr(_RTA_OIF, struct.pack("=i", index))
        _rtnl_request(rtnl, _RTM_NEWROUTE, _NLM_F_REPLACE, route)


def route_marked_datagrams_to_lo(netns_fd: int) -> None:
    """What ``ip rule add fwmark 0x1 lookup 100; ip route replace local 0.0.0.0/0 dev lo table 100``
    does: datagrams nftables marked for the relay come back in through ``lo`` (for TPROXY)."""
    with netns.rtnetlink_in(netns_fd) as rtnl:
        # fib_rule_hdr: family, dst_len, src_len, tos, table, two reserved bytes, action, flags.
        rule = struct.pack("=8BI", socket.AF_INET, 0, 0, 0, _DATAGRAM_TABLE, 0, 0, _FR_ACT_TO_TBL, 0)
        rule += _rtattr(_FRA_PRIORITY, struct.pack("=I", 100))
        rule += _rtattr(_FRA_FWMARK, struct.pack("=I", _DATAGRAM_MARK))
        rule += _rtattr(_FRA_TABLE, struct.pack("=I", _DATAGRAM_TABLE))
        _rtnl_request(rtnl, _RTM_NEWRULE, _NLM_F_EXCL, rule, tolerate=errno.EEXIST)
        route = struct.pack(
            "=8BI", socket.AF_INET, 0, 0, 0, _DATAGRAM_TABLE, _RTPROT_BOOT, _RT_SCOPE_HOST, _RTN_LOCAL, 0
        )
        route += _rtattr(_RTA_OIF, struct.pack("=i", _LOOPBACK_IFINDEX))
        _rtnl_request(rtnl, _RTM_NEWROUTE, _NLM_F_REPLACE, route)


def _rtattr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _rtnl_request(rtnl: socket.socket, kind: int, flags: int, body: bytes, *, tolerate: int = 0) -> None:
    """Send one creating request and wait for its acknowledgement; a kernel error is raised."""
    flags |= _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE
    rtnl.send(struct.pack("=LHHLL", 16 + len(body), kind, flags, 1, 0) + body)
    answer = rtnl.recv(65536)
    _, answer_kind, _, _, _ = struct.unpack_from("=LHHLL", answer)
    (error,) = struct.unpack_from("=i", answer, 16) if answer_kind == _NLMSG_ERROR else (-errno.EPROTO,)
    if error and -error != tolerate:
        raise NetworkSetupError(f"rtnetlink request {kind} in the sandbox's namespace: {os.strerror(-error)}")


@dataclass(frozen=True)
class ListenerPorts:
    """The server's listeners inside a sandbox's namespace (127.0.0.1), where the rules send traffic."""

    forward: int  # TCP
    dns_stream: int  # DNS over TCP
    dns_datagram: int  # DNS over UDP
    datagram: int  # other UDP, through TPROXY


def ruleset(
    ports: ListenerPorts,
    *,
    host: Collection[ipaddress.IPv4Address] = (),
    also_public: Collection[IPNetwork] = (),
    registries: Collection[IPNetwork] = (),
    host_ports: Collection[int] = (),
    replace: bool = False,
) -> str:
    """The nftables ruleset for ``nft -f -``, applied atomically.

    By default it only creates (and fails with "File exists" if the table is there): anything that
    removes makes nft fetch the kernel's whole state first, 10 ms more here. ``replace`` declares,
    flushes and refills the table instead, for attaching again to a namespace.
    """
    also_public_v4 = [network for network in also_public if network.version == 4]
    registries_v4 = [network for network in registries if network.version == 4]
    registry_ports = ", ".join(str(port) for port in sorted(REGISTRY_PORTS))
    # Only these ports of GATEWAY_ADDRESS, and only TCP: the server maps them to the host's loopback.
    open_ports = ", ".join(str(port) for port in sorted(host_ports))
    host_port_rule = (
        f"ip daddr {GATEWAY_ADDRESS} tcp dport {{ {open_ports} }} accept"
        if host_ports
        else "# no host port is open to the sandbox"
    )
    start = _NFT_REPLACE if replace else "create table inet prefect_sandbox\n"
    return f"""\
{start}table inet prefect_sandbox {{
{_nft_set("host", host)}
{_nft_set("also_public", also_public_v4)}
{_nft_set("registries", registries_v4)}
{_nft_set("refused", _REFUSED_IPV4)}
    chain refuse_fenced {{
        type filter hook output priority mangle; policy accept;
        oif lo accept
        ip daddr {DNS_ADDRESS} meta l4proto {{ tcp, udp }} th dport 53 accept
        ip daddr @host meta l4proto tcp reject with tcp reset
        {host_port_rule}
        ip daddr @also_public accept
        ip daddr @registries tcp dport {{ {registry_ports} }} accept
        ip daddr @refused meta l4proto tcp reject with tcp reset
    }}
    chain to_forwarders {{
        type nat hook output priority -100; policy accept;
        oif lo return
        ip daddr {DNS_ADDRESS} udp dport 53 redirect to :{ports.dns_datagram}
        ip daddr {DNS_ADDRESS} tcp dport 53 redirect to :{ports.dns_stream}
        meta nfproto ipv4 meta l4proto tcp redirect to :{ports.forward}
    }}
    chain mark_datagrams {{
        type route hook output priority mangle - 5; policy accept;
        meta l4proto != udp return
        # The relay's own sockets (marked) and what stays on lo are left as they are.
        meta mark != 0 return
        oif lo return
        ip daddr {DNS_ADDRESS} udp dport 53 return
        ip daddr @host return
        ip daddr @also_public meta mark set {_DATAGRAM_MARK:#x} return
        ip daddr @refused return
        meta nfproto ipv4 meta mark set {_DATAGRAM_MARK:#x}
    }}
    chain datagrams_to_relay {{
        type filter hook prerouting priority mangle; policy accept;
        iif lo meta mark {_DATAGRAM_MARK:#x} meta l4proto udp tproxy ip to 127.0.0.1:{ports.datagram}
    }}
    chain loopback_only {{
        type filter hook output priority filter; policy drop;
        oif lo accept
        # Redirected or marked above: now bound for lo, though oif still names the device routed to first.
        ct status dnat accept
        meta mark {_DATAGRAM_MARK:#x} accept
    }}
}}
"""


_NFT_REPLACE = """\
table inet prefect_sandbox {
    set host { type ipv4_addr; flags interval; }
    set also_public { type ipv4_addr; flags interval; }
    set registries { type ipv4_addr; flags interval; }
    set refused { type ipv4_addr; flags interval; }
    chain refuse_fenced { type filter hook output priority mangle; policy accept; }
    chain to_forwarders { type nat hook output priority -100; policy accept; }
    chain mark_datagrams { type route hook output priority mangle - 5; policy accept; }
    chain datagrams_to_relay { type filter hook prerouting priority mangle; policy accept; }
    chain loopback_only { type filter hook output priority filter; policy drop; }
}
flush table inet prefect_sandbox
flush set inet prefect_sandbox host
flush set inet prefect_sandbox also_public
flush set inet prefect_sandbox registries
flush set inet prefect_sandbox refused
"""


def _nft_set(name: str, members: Iterable[ipaddress.IPv4Address | IPNetwork]) -> str:
    elements = ", ".join(dict.fromkeys(str(member) for member in members))
    lines = [f"    set {name} {{", "        type ipv4_addr", "        flags interval", "        auto-merge"]
    if elements:  # nft refuses an empty element list
        lines.append(f"        elements = {{ {elements} }}")
    return "\n".join([*lines, "    }"])


async def configure(
    netns_fd: int,
    ports: ListenerPorts,
    *,
    also_public: Collection[IPNetwork] = (),
    registries: Collection[IPNetwork] = (),
    host_ports: Collection[int] = (),
) -> None:
    """Add ``eth0`` and the route for relayed datagrams, and load the nftables ruleset (the host's
    ``nft``) inside ``netns_fd``."""
    _refuse_own_namespace(netns_fd)
    host = sorted(address for address in host_addresses() if isinstance(address, ipaddress.IPv4Address))
    rules = functools.partial(
        ruleset, ports, host=host, also_public=also_public, registries=registries, host_ports=host_ports
    )

    async def load_rules() -> None:
        try:
            await _run_in(netns_fd, ["nft", "-f", "-"], rules())
        except NetworkSetupError as error:
            if "File exists" not in str(error):
                raise
            await _run_in(netns_fd, ["nft", "-f", "-"], rules(replace=True))

    add_eth0(netns_fd)
    route_marked_datagrams_to_lo(netns_fd)
    await load_rules()


async def _run_in(netns_fd: int, argv: list[str], script: str) -> None:
    # nsenter enters only the network namespace, through the descriptor it inherits; the binaries are
    # the host's, looked up in the host's mount namespace.
    process = await asyncio.create_subprocess_exec(
        "nsenter",
        f"--net=/proc/self/fd/{netns_fd}",
        "--",
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        pass_fds=(netns_fd,),
    )
    _, stderr = await process.communicate(script.encode())
    complaints = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    if process.returncode != 0:
        raise NetworkSetupError(
            f"{argv[0]} in the sandbox's network namespace failed: {'; '.join(complaints)}"
        )
