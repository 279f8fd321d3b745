"""The nftables ruleset that fences a sandbox's namespace, loaded with the host's libnftables.

Host-owned, so the sandbox's root cannot change it: TCP to the refused IPv4 ranges and this host's
addresses is reset before it is redirected, UDP to them is dropped (``EPERM`` at the sender); other
TCP goes to the server's forwarder, DNS to its relay, other UDP (marked) to its datagram relay;
everything else that does not leave through ``lo`` is dropped, so nothing reaches a device.

The ruleset is loaded by the host's libnftables (the library of ``nft``), called by the server's
thread while it is inside the sandbox's network namespace: about 1 ms, where starting ``nsenter nft``
took 6 to 9 ms of every create. Without the library the ``nft`` program loads it, as before.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from prefect_opencomputer.local.sandbox import netns
from prefect_opencomputer.local.sandbox.egress import (
    DNS_ADDRESS,
    GATEWAY_ADDRESS,
    REFUSED_IPV4,
    REGISTRY_PORTS,
    EgressPolicy,
    IPNetwork,
)
from prefect_opencomputer.local.sandbox.netns import NetworkSetupError
from prefect_opencomputer.local.sandbox.rtnetlink import DATAGRAM_MARK

__all__ = ["ListenerPorts", "load_ruleset", "ruleset"]


@dataclass(frozen=True)
class ListenerPorts:
    """The server's listeners inside a sandbox's namespace (127.0.0.1), where the rules send traffic."""

    forward: int  # TCP
    dns_stream: int  # DNS over TCP
    dns_datagram: int  # DNS over UDP
    datagram: int  # other UDP, through TPROXY


def ruleset(
    ports: ListenerPorts,
    policy: EgressPolicy,
    *,
    host: Collection[ipaddress.IPv4Address] = (),
    replace: bool = False,
) -> str:
    """The nftables ruleset for ``nft -f -``, applied atomically.

    By default it only creates (and fails with "File exists" if the table is there): anything that
    removes makes nft fetch the kernel's whole state first, 10 ms more here. ``replace`` declares,
    flushes and refills the table instead, for attaching again to a namespace.
    """
    also_public_v4 = [network for network in policy.also_public if network.version == 4]
    registries_v4 = [network for network in policy.registries if network.version == 4]
    registry_ports = ", ".join(str(port) for port in sorted(REGISTRY_PORTS))
    # Only these ports of GATEWAY_ADDRESS, and only TCP: the server maps them to the host's loopback.
    open_ports = ", ".join(str(port) for port in sorted(policy.host_ports))
    host_port_rule = (
        f"ip daddr {GATEWAY_ADDRESS} tcp dport {{ {open_ports} }} accept"
        if policy.host_ports
        else "# no host port is open to the sandbox"
    )
    start = _NFT_REPLACE if replace else "create table inet prefect_sandbox\n"
    return f"""\
{start}table inet prefect_sandbox {{
{_nft_set("host", host)}
{_nft_set("also_public", also_public_v4)}
{_nft_set("registries", registries_v4)}
{_nft_set("refused", REFUSED_IPV4)}
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
        ip daddr @also_public meta mark set {DATAGRAM_MARK:#x} return
        ip daddr @refused return
        meta nfproto ipv4 meta mark set {DATAGRAM_MARK:#x}
    }}
    chain datagrams_to_relay {{
        type filter hook prerouting priority mangle; policy accept;
        iif lo meta mark {DATAGRAM_MARK:#x} meta l4proto udp tproxy ip to 127.0.0.1:{ports.datagram}
    }}
    chain loopback_only {{
        type filter hook output priority filter; policy drop;
        oif lo accept
        # Redirected or marked above: now bound for lo, though oif still names the device routed to first.
        ct status dnat accept
        meta mark {DATAGRAM_MARK:#x} accept
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


async def load_ruleset(
    netns_fd: int,
    ports: ListenerPorts,
    policy: EgressPolicy,
    *,
    host: Collection[ipaddress.IPv4Address],
) -> None:
    """Load the `ruleset` inside ``netns_fd``; a namespace attached before gets it replaced."""
    rules = functools.partial(ruleset, ports, policy, host=host)
    try:
        await _load(netns_fd, rules())
    except NetworkSetupError as error:
        if "File exists" not in str(error):
            raise
        await _load(netns_fd, rules(replace=True))


async def _load(netns_fd: int, script: str) -> None:
    library = _libnftables()
    if library is None:
        await _run_nft_in(netns_fd, script)
        return
    # On the event loop's own thread: nothing else runs while it is inside the namespace.
    complaint = netns.call_in(netns_fd, functools.partial(_run_with_library, library, script))
    if complaint is not None:
        raise NetworkSetupError(f"nft in the sandbox's network namespace failed: {complaint}")


@functools.cache
def _libnftables() -> ctypes.CDLL | None:
    try:
        library = ctypes.CDLL("libnftables.so.1", use_errno=True)
    except OSError:
        return None
    library.nft_ctx_new.restype = ctypes.c_void_p
    library.nft_ctx_new.argtypes = [ctypes.c_uint32]
    library.nft_ctx_free.argtypes = [ctypes.c_void_p]
    library.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    library.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    library.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    library.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return library


def _run_with_library(library: ctypes.CDLL, script: str) -> str | None:
    """Run ``script`` as ``nft -f -`` would, in this thread's network namespace; what failed, or None.

    A context per call: its netlink socket is opened in the namespace the thread is in when it is made.
    """
    context = library.nft_ctx_new(0)
    if not context:
        return "libnftables could not make a context"
    try:
        library.nft_ctx_buffer_error(context)
        if library.nft_run_cmd_from_buffer(context, script.encode()) == 0:
            return None
        errors: bytes = library.nft_ctx_get_error_buffer(context) or b"unknown error"
        return "; ".join(line for line in errors.decode(errors="replace").splitlines() if line.strip())
    finally:
        library.nft_ctx_free(context)


async def _run_nft_in(netns_fd: int, script: str) -> None:
    # nsenter enters only the network namespace, through the descriptor it inherits; the binary is
    # the host's, looked up in the host's mount namespace.
    process = await asyncio.create_subprocess_exec(
        "nsenter",
        f"--net=/proc/self/fd/{netns_fd}",
        "--",
        "nft",
        "-f",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        pass_fds=(netns_fd,),
    )
    _, stderr = await process.communicate(script.encode())
    complaints = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    if process.returncode != 0:
        raise NetworkSetupError(f"nft in the sandbox's network namespace failed: {'; '.join(complaints)}")
