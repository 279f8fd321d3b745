"""Sockets and settings inside a sandbox's network namespace, from the server's own thread.

A socket belongs to the network namespace it was created in, so entering the sandbox's namespace
just long enough to call ``socket()`` lets the server reach ``127.0.0.1:port`` inside it, without
bridges, veth pairs or published ports. ``setns`` affects only the calling thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from collections.abc import Iterator

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


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
