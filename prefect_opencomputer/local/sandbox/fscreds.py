"""Act on a sandbox's files as its root: the only host identity its filesystem can record.

A sandbox's overlay is mounted inside its user namespace, so the kernel refuses (EOVERFLOW) to
create a file there for an owner the namespace cannot name, host root included. The files API
therefore switches the calling thread's filesystem ids to the sandbox's root for each operation,
keeping host root's file capabilities, so it can still read and write whatever the sandbox's own
root could. Filesystem ids and capabilities are per thread in Linux: nothing else is affected.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_CAPGET, _SYS_CAPSET = 125, 126  # x86_64
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _raise_effective_to_permitted() -> None:
    """Changing fsuid away from 0 drops the file capabilities; they are still permitted: take them back."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if _libc.syscall(_SYS_CAPGET, ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for half in data:
        half.effective = half.permitted
    if _libc.syscall(_SYS_CAPSET, ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


@contextmanager
def as_sandbox_root(owner: tuple[int, int]) -> Iterator[None]:
    """Within the block, files this thread creates belong to the sandbox's root (host ``owner``)."""
    if os.geteuid() != 0:
        yield
        return
    uid, gid = owner
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    try:
        _raise_effective_to_permitted()
        yield
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)
