"""The disk store: where sandbox disks and checkpoints live, on a filesystem that clones a file in place.

A checkpoint is a clone of the sandbox's disk image taken while its filesystem is frozen; a fork or
a restore is a clone of the checkpoint. On XFS (``reflink=1``) or btrfs a clone shares every block
until one side writes it, so both take milliseconds whatever the disk holds, and twenty forks of a
1 GB checkpoint cost the host what they write, not 20 GB. Host root handles the image files only,
never a sandbox's own files inside them.

When the data dir's own filesystem cannot clone (ext4), the server keeps an XFS image,
``disks.xfs``, in the data dir and mounts it detached: no mount table holds it, the server reaches it
through one descriptor, and it goes when the server does, even on SIGKILL. Where neither works
(no ``mkfs.xfs``), images are copied whole, sparse: slower, and `local serve` says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from prefect_opencomputer.local.sandbox import disk

logger = logging.getLogger(__name__)

FICLONE = 0x40049409
FITRIM = 0xC0185879
TRIM_DELAY_SECONDS = 5.0
StoreKind = Literal["native", "xfs", "copy"]
_DIRECTORIES = ("sandboxes", "checkpoints", "spares")
_COPY_CHUNK = 64 * 1024 * 1024
STILL_HELD_WAIT_SECONDS = 15.0


class StoreUnavailable(RuntimeError):
    """The disk store could not be opened (its image could not be made or mounted)."""


class DiskStore:
    """Image files under one directory, cloned in constant time where the filesystem allows.

    ``directory`` is where images live when the data dir's filesystem clones files itself; the XFS
    store image sits beside it (``<directory>.xfs``) otherwise. ``helper`` gives the sandbox helper's
    path, which mounts that image. Paths handed out (`path`) stay valid while the store is open.
    """

    def __init__(self, directory: Path, *, helper: Callable[[], str]) -> None:
        self.directory = directory
        self._helper = helper
        self._lock = threading.Lock()
        self._root_fd: int | None = None
        self.kind: StoreKind | None = None
        self._trim: threading.Timer | None = None

    @property
    def image(self) -> Path:
        """The XFS store image, used when the data dir's filesystem cannot clone."""
        return self.directory.with_name(f"{self.directory.name}.xfs")

    def open(self) -> None:
        """Find or make the store (idempotent, thread-safe); raises `StoreUnavailable`."""
        with self._lock:
            if self._root_fd is not None:
                return
            kind = self.planned_kind()
            if kind == "xfs":
                root_fd = self._open_xfs()
            else:
                root_fd = os.open(self.directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            self.kind, self._root_fd = kind, root_fd
            for name in _DIRECTORIES:
                self.path(name).mkdir(mode=0o700, exist_ok=True)
            if kind == "copy":
                logger.warning("sandbox disk store: %s", self.describe())

    def planned_kind(self) -> StoreKind:
        """The kind of store `open` finds or makes here (it makes the directory)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.image.exists():
            return "xfs"
        if _clones_files(self.directory):
            return "native"
        return "xfs" if _mkfs_xfs() is not None else "copy"

    def _open_xfs(self) -> int:
        if not self.image.exists():
            _make_xfs_image(self.image, _host_size_bytes(self.directory.parent))
        # The sandboxes of a server killed a moment ago may still hold the store while they die
        # (XFS refuses a second mount of it): wait for them, then say who holds it.
        deadline = time.monotonic() + STILL_HELD_WAIT_SECONDS
        while disk.is_attached(self.image):
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    f"the sandbox disk store {self.image} is still in use (by another local server on "
                    "this data dir, or its sandboxes): stop that server first"
                )
            time.sleep(0.05)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with parent, child:
            result = subprocess.run(
                [self._helper(), "store", "--image", str(self.image), "--send-fd", str(child.fileno())],
                pass_fds=(child.fileno(),),
                capture_output=True,
                check=False,
            )
            if result.returncode != 0:
                reason = result.stderr.decode(errors="replace").strip()
                raise StoreUnavailable(f"mounting the sandbox disk store {self.image.name} failed: {reason}")
            parent.setblocking(False)
            _, fds, _, _ = socket.recv_fds(parent, 1, 1)
        if len(fds) != 1:
            raise StoreUnavailable("the sandbox helper did not hand over the disk store")
        return fds[0]

    def close(self) -> None:
        """Let go of the store: a detached mount goes once no sandbox disk holds a file in it."""
        with self._lock:
            if self._trim is not None:
                self._trim.cancel()
                self._trim = None
            if self._root_fd is not None:
                os.close(self._root_fd)
                self._root_fd = None

    def path(self, relative: str) -> Path:
        """A path in the store that this process and its children can open while the store is open."""
        if self._root_fd is None:
            self.open()
        assert self._root_fd is not None
        return Path(f"/proc/{os.getpid()}/fd/{self._root_fd}") / relative

    def describe(self) -> str:
        """One line for the server's start-up output."""
        kind = self.kind or self.planned_kind()
        if kind == "native":
            return "checkpoints and forks clone disk images in place (the data dir's filesystem has reflinks)"
        if kind == "xfs":
            return f"checkpoints and forks clone disk images in place (an XFS store, {self.image.name})"
        return (
            "checkpoints and forks COPY whole disk images: this host has no filesystem with reflinks "
            "and no mkfs.xfs (apt-get install -y xfsprogs)"
        )

    def clone(self, source: Path, target: Path) -> None:
        """``target`` becomes a copy of ``source``: all of it or nothing under that name.

        A reflink where the store has them; a sparse copy of the image file otherwise. Either way
        this reads one file as data, never the tree inside it.
        """
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            with source.open("rb") as src, partial.open("xb") as dst:
                if self.kind == "copy":
                    _sparse_copy(src.fileno(), dst.fileno())
                else:
                    fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            os.chmod(partial, 0o600)
            os.rename(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def import_file(self, source: Path, target: Path) -> None:
        """Bring an image from outside the store in (a data dir from before the store): a copy."""
        partial = target.with_name(f".{target.name}.partial")
        with source.open("rb") as src, partial.open("wb") as dst:
            _sparse_copy(src.fileno(), dst.fileno())
        os.chmod(partial, 0o600)
        os.rename(partial, target)

    def sweep_partials(self) -> list[str]:
        """Remove clones a killed server left half-made; returns their names."""
        removed = []
        for name in _DIRECTORIES:
            with contextlib.suppress(OSError):
                for entry in self.path(name).iterdir():
                    if entry.name.endswith(".partial"):
                        entry.unlink(missing_ok=True)
                        removed.append(entry.name)
        return removed

    def trim_soon(self) -> None:
        """Give what deleted images held back to the host's disk, in one batch a few seconds on.

        The XFS store is a sparse file: freed blocks stay allocated on the host until trimmed.
        One FITRIM for many deletes costs far less than a discard per freed extent.
        """
        with self._lock:
            if self.kind != "xfs" or self._trim is not None:
                return
            self._trim = threading.Timer(TRIM_DELAY_SECONDS, self._trim_now)
            self._trim.daemon = True
            self._trim.start()

    def _trim_now(self) -> None:
        with self._lock:
            self._trim = None
            if self._root_fd is None:
                return
            fd = os.open(f"/proc/self/fd/{self._root_fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, FITRIM, struct.pack("QQQ", 0, 2**64 - 1, 0))
        except OSError as error:
            logger.warning("trimming the sandbox disk store failed: %s", error)
        finally:
            os.close(fd)


def allocated_bytes(path: Path) -> int:
    """What an image holds on the store (its written blocks), not its apparent size."""
    return os.stat(path).st_blocks * 512


def _clones_files(directory: Path) -> bool:
    """Whether the filesystem of ``directory`` can reflink one file onto another."""
    probe = directory / f".clone-probe-{uuid.uuid4().hex[:8]}"
    try:
        with probe.open("w+b") as source:
            source.write(b"probe")
            source.flush()
            with probe.with_suffix(".copy").open("wb") as target:
                fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
        return True
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV, errno.ENOSYS):
            raise
        return False
    finally:
        probe.unlink(missing_ok=True)
        probe.with_suffix(".copy").unlink(missing_ok=True)


@functools.cache
def _mkfs_xfs() -> str | None:
    return shutil.which("mkfs.xfs", path="/usr/sbin:/usr/bin:/sbin:/bin")


def _host_size_bytes(directory: Path) -> int:
    """As large as the host filesystem under it: the host's free space stays the only limit."""
    stats = os.statvfs(directory)
    return stats.f_blocks * stats.f_frsize


def _make_xfs_image(path: Path, size_bytes: int) -> None:
    """A sparse XFS image with reflinks, made aside and renamed once whole."""
    mkfs = _mkfs_xfs()
    assert mkfs is not None
    try:
        disk.format_sparse(path, size_bytes, [mkfs, "-q", "-m", "reflink=1"], "the sandbox disk store")
    except OSError as error:
        raise StoreUnavailable(str(error)) from None
    os.chmod(path, 0o600)


def _sparse_copy(source: int, target: int) -> None:
    """Copy the data extents of ``source`` only: holes stay holes, a 20 GB empty disk stays small."""
    size = os.fstat(source).st_size
    os.ftruncate(target, size)
    offset = 0
    while offset < size:
        try:
            start = os.lseek(source, offset, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:
                return  # nothing but a hole to the end
            raise
        end = os.lseek(source, start, os.SEEK_HOLE)
        _copy_range(source, target, start, end)
        offset = end


def _copy_range(source: int, target: int, start: int, end: int) -> None:
    """Bytes ``start:end`` of one file to the same place in another: in the kernel on one filesystem."""
    position = start
    while position < end:
        count = min(_COPY_CHUNK, end - position)
        try:
            copied = os.copy_file_range(source, target, count, position, position)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            copied = os.pwrite(target, os.pread(source, min(count, 1 << 20), position), position)
        if copied == 0:
            return
        position += copied
