"""Sockets inside a sandbox's network namespace, created from the server's own thread.

A socket belongs to the network namespace it was created in, so entering the sandbox's namespace
just long enough to call ``socket()`` lets the server reach ``127.0.0.1:port`` inside it, without
bridges, veth pairs or published ports. ``setns`` affects only the calling thread.
"""

from __future__ import annotations

import ctypes
import os
import socket

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in(netns_fd: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
    """A non-blocking IPv4 TCP (or, with ``SOCK_DGRAM``, UDP) socket created inside ``netns_fd``."""
    protocol = socket.IPPROTO_UDP if kind == socket.SOCK_DGRAM else socket.IPPROTO_TCP
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(netns_fd)
        try:
            # IPPROTO_TCP spelled out, so asyncio turns Nagle off on it and on what it accepts.
            sock = socket.socket(socket.AF_INET, kind, protocol)
        finally:
            # Never leave this thread in the sandbox's namespace.
            _setns(own)
    finally:
        os.close(own)
    sock.setblocking(False)
    return sock
