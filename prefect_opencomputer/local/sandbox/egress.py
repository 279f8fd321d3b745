"""What a sandbox may reach: the egress policy, which needs no root and no namespace to be read or tested.

A sandbox sees an ordinary network, as in a VM: it is SANDBOX_ADDRESS, its gateway GATEWAY_ADDRESS
and its DNS server DNS_ADDRESS. Everything it sends goes through the server (`forwarding`,
`datagrams`), which asks the sandbox's `EgressPolicy` (the default policy, `destination_allowed`, with
the operator's exceptions); the namespace's nftables rules (`nftables`) refuse the same ranges before
the server sees them.

- Only global unicast destinations (``ipaddress.is_global`` plus an explicit list of special ranges
  that Python 3.11 misses, or networks the operator declares public), never an address of this
  host's interfaces nor loopback, link-local or multicast, port 1-65535.
- The package registries' addresses (`registry_exceptions`), where this host's egress maps them into
  a special range, on the ports package clients use only.
- DNS only to the host's resolver (`host_resolver`), relayed by the server.
- One exception, off unless the operator asks for it: the host's loopback ports named in
  ``host_ports`` (``local serve --allow-host-port``, a local Prefect API) are reachable at
  GATEWAY_ADDRESS, which the DNS relay gives as the address of ``HOST_ALIAS``; nothing else of the
  host is.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from prefect_opencomputer.local.sandbox.netns import NetworkSetupError

__all__ = [
    "DNS_ADDRESS",
    "GATEWAY_ADDRESS",
    "REFUSED_IPV4",
    "REGISTRY_HOSTS",
    "REGISTRY_PORTS",
    "RESOLV_CONF",
    "SANDBOX_ADDRESS",
    "EgressPolicy",
    "IPAddress",
    "IPNetwork",
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

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

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
REFUSED_IPV4 = tuple(network for network in _REFUSED_NETWORKS if network.version == 4)


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


@dataclass(frozen=True)
class EgressPolicy:
    """One sandbox's exceptions to the default policy, as the operator set them (none by default)."""

    also_public: tuple[IPNetwork, ...] = ()
    registries: tuple[IPNetwork, ...] = ()
    host_ports: frozenset[int] = frozenset()

    def allows_connection(self, address: str, port: int) -> bool:
        """TCP: the declared public networks, and the registries' addresses on the registry ports."""
        return destination_allowed(address, port, also_public=self.also_public, registries=self.registries)

    def allows_datagram(self, address: str, port: int) -> bool:
        """UDP: the declared public networks; never the registries' addresses (their clients use TCP)."""
        return destination_allowed(address, port, also_public=self.also_public)

    def reaches_host_port(self, address: str, port: int) -> bool:
        """The operator's one exception: this port of the host's loopback, at GATEWAY_ADDRESS."""
        return address == GATEWAY_ADDRESS and port in self.host_ports


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
