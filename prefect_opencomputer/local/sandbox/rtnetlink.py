"""The namespace's ``eth0`` and routes, set over rtnetlink from a socket made inside it.

What ``ip link``, ``ip addr``, ``ip route`` and ``ip rule`` would do, without a spawn (4 ms here):
the sandbox's root has no ``CAP_NET_ADMIN`` over its namespace, so only the server can change these.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from prefect_opencomputer.local.sandbox import netns
from prefect_opencomputer.local.sandbox.egress import GATEWAY_ADDRESS, SANDBOX_ADDRESS
from prefect_opencomputer.local.sandbox.netns import NetworkSetupError

__all__ = ["DATAGRAM_MARK", "add_eth0", "route_marked_datagrams_to_lo"]

_IFF_UP = 0x1  # linux/if.h
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
DATAGRAM_MARK = 0x1
_DATAGRAM_TABLE = 100
_LOOPBACK_IFINDEX = 1  # lo's index in every network namespace


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
        rule += _rtattr(_FRA_FWMARK, struct.pack("=I", DATAGRAM_MARK))
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
