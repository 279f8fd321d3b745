"""Sockets and settings inside a sandbox's network namespace, from the server's own thread.

A socket belongs to the network namespace it was created in, so entering the sandbox's namespace
just long enough to call ``socket()`` lets the server reach ``127.0.0.1:port`` inside it, without
bridges, veth pairs or published ports. ``setns`` affects only the calling thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Callable, Iterator
from typing import TypeVar

_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1  # linux/sockios.h, linux/if.h
_NS_GET_USERNS = 0xB701  # linux/nsfs.h: a descriptor of the namespace's owning user namespace
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def _inside(netns_fd: int) -> Iterator[None]:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(netns_fd)
        try:
            yield
        finally:
            # Never leave this thread in the sandbox's namespace.
            _setns(own)
    finally:
        os.close(own)


def call_in(netns_fd: int, work: Callable[[], T]) -> T:
    """``work()`` run by this thread while it is inside ``netns_fd`` (and never left there)."""
    with _inside(netns_fd):
        return work()


def socket_in(netns_fd: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
    """A non-blocking IPv4 TCP (or, with ``SOCK_DGRAM``, UDP) socket created inside ``netns_fd``."""
    # IPPROTO_TCP spelled out, so asyncio turns Nagle off on it and on what it accepts.
    protocol = socket.IPPROTO_UDP if kind == socket.SOCK_DGRAM else socket.IPPROTO_TCP
    with _inside(netns_fd):
        sock = socket.socket(socket.AF_INET, kind, protocol)
    sock.setblocking(False)
    return sock


def set_sysctl(netns_fd: int, key: str, value: str) -> None:
    """Set a per-namespace ``net.*`` sysctl of ``netns_fd`` (``/proc/sys/net`` follows the thread)."""
    if not key.startswith("net.") or "/" in key:
        raise ValueError(f"not a network namespace sysctl: {key}")
    path = "/proc/sys/" + key.replace(".", "/")
    with _inside(netns_fd):
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def rtnetlink_in(netns_fd: int) -> socket.socket:
    """A blocking rtnetlink socket of ``netns_fd``: what it adds (links, addresses, routes) lands there."""
    with _inside(netns_fd):
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)


class NetworkSetupError(RuntimeError):
    """Configuring a sandbox's network namespace failed; the message carries the tool's complaint."""


def allow_low_ports(netns_fd: int) -> None:
    """Let the sandbox's root bind ports below 1024 (a web server on port 80), as in a VM.

    The namespace belongs to the host's user namespace, so without this the sandbox's root lacks
    ``CAP_NET_BIND_SERVICE`` there. ``SandboxNetwork.attach`` does it; call it yourself for sandboxes
    without network.
    """
    set_sysctl(netns_fd, "net.ipv4.ip_unprivileged_port_start", "0")


def refuse_own_namespace(netns_fd: int) -> None:
    """A wrong descriptor must never turn into rules or routes in the host's own namespace."""
    if os.fstat(netns_fd).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
        raise NetworkSetupError("refusing to configure the server's own network namespace")


def require_host_owned(netns_fd: int) -> None:
    """The fence holds only if the sandbox's root lacks CAP_NET_ADMIN over the namespace."""
    owner = fcntl.ioctl(netns_fd, _NS_GET_USERNS)
    try:
        owned_by_us = os.fstat(owner).st_ino == os.stat("/proc/self/ns/user").st_ino
    finally:
        os.close(owner)
    if not owned_by_us:
        raise NetworkSetupError("the sandbox's network namespace must belong to the server's user namespace")


def bring_up_loopback(sock: socket.socket) -> None:
    """Set ``lo`` up in the namespace ``sock`` belongs to, with two ioctls instead of a spawn."""
    name = b"lo"
    request = struct.pack("16sH22x", name, 0)
    (flags,) = struct.unpack_from("H", fcntl.ioctl(sock, _SIOCGIFFLAGS, request), 16)
    if not flags & _IFF_UP:
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", name, flags | _IFF_UP))
