"""File operations on a sandbox's root that cannot escape it.

The server reaches a running sandbox's files through ``/proc/<pid>/root``. Plain path resolution
there would follow an absolute symlink (or a ``/proc`` magic link) back onto the host, so every
lookup goes through ``openat2`` with ``RESOLVE_IN_ROOT`` (symlinks resolve as inside the sandbox),
``RESOLVE_NO_MAGICLINKS`` and ``RESOLVE_NO_XDEV`` (no ``/proc``, ``/dev`` or other mounts).
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from prefect_opencomputer.local.sandbox.fscreds import as_sandbox_root

_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_RESOLVE = _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV
_O_PATH = getattr(os, "O_PATH", 0o10000000)
_libc = ctypes.CDLL(None, use_errno=True)


class PathEscapeError(ValueError):
    """The path leaves the sandbox root (``..`` above ``/``, a magic link or another mount)."""


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


def _openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE)
    fd = int(
        _libc.syscall(
            _SYS_OPENAT2,
            ctypes.c_int(dir_fd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        if err in (errno.ELOOP, errno.EXDEV):
            raise PathEscapeError(f"path escapes the sandbox root: {path}")
        raise OSError(err, os.strerror(err), path)
    return fd


@dataclass(frozen=True)
class DirEntry:
    name: str
    path: str
    is_dir: bool
    size: int


class RootedFiles:
    """Reads and writes below ``root`` as a process chrooted there would see them."""

    def __init__(self, root: Path, *, home: str, owner: tuple[int, int]) -> None:
        self.root = root
        self.home = home
        self.owner = owner

    def resolve(self, path: str) -> str:
        """Absolute, normalised form of ``path``; relative paths start at the sandbox's home."""
        if not path.startswith("/"):
            path = f"{self.home}/{path}"
        parts: list[str] = []
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise PathEscapeError(f"path escapes the sandbox root: {path}")
                parts.pop()
            else:
                parts.append(part)
        return "/" + "/".join(parts)

    # -- reading ---------------------------------------------------------------------------

    def open_read(self, path: str) -> BinaryIO:
        """Open a regular file for reading."""
        fd = self._open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", self.resolve(path))
            if not stat.S_ISREG(mode):
                raise PathEscapeError(f"not a regular file: {self.resolve(path)}")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def list(self, path: str) -> list[DirEntry]:
        """The entries of a directory, sorted by name."""
        resolved = self.resolve(path)
        fd = self._open(resolved, os.O_RDONLY | os.O_DIRECTORY)
        try:
            entries = []
            with os.scandir(fd) as it:
                for entry in it:
                    info = entry.stat(follow_symlinks=False)
                    is_dir = stat.S_ISDIR(info.st_mode)
                    entries.append(
                        DirEntry(
                            name=entry.name,
                            path=posixpath.join(resolved, entry.name),
                            is_dir=is_dir,
                            size=0 if is_dir else info.st_size,
                        )
                    )
        finally:
            os.close(fd)
        return sorted(entries, key=lambda e: e.name)

    def exists(self, path: str) -> bool:
        try:
            os.close(self._open(path, _O_PATH))
        except FileNotFoundError:
            return False
        return True

    # -- writing ---------------------------------------------------------------------------

    def open_write(self, path: str) -> BinaryIO:
        """Create or truncate a file (mode 0644), making its parent directories as needed."""
        resolved = self.resolve(path)
        if resolved == "/":
            raise IsADirectoryError(errno.EISDIR, "is a directory", resolved)
        self.mkdir(posixpath.dirname(resolved))
        fd = self._open(resolved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", resolved)
            if self._owned_by_sandbox(resolved):
                os.fchown(fd, *self.owner)
            return os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise

    def mkdir(self, path: str) -> None:
        """``mkdir -p`` (mode 0755), one component at a time so no lookup leaves the root."""
        resolved = self.resolve(path)
        parts = [p for p in resolved.split("/") if p]
        for depth in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:depth])
            try:
                os.close(self._open(prefix, _O_PATH | os.O_DIRECTORY))
                continue
            except FileNotFoundError:
                pass
            parent_fd = self._open(posixpath.dirname(prefix), _O_PATH | os.O_DIRECTORY)
            try:
                try:
                    with as_sandbox_root():
                        os.mkdir(parts[depth - 1], 0o755, dir_fd=parent_fd)
                except FileExistsError:
                    # A file (or a dangling link) is in the way.
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", prefix) from None
                if self._owned_by_sandbox(prefix):
                    os.chown(parts[depth - 1], *self.owner, dir_fd=parent_fd, follow_symlinks=False)
            finally:
                os.close(parent_fd)

    def remove(self, path: str) -> None:
        """``rm -rf``: a missing path is not an error."""
        resolved = self.resolve(path)
        if resolved == "/":
            raise PathEscapeError("refusing to delete the sandbox root")
        try:
            parent_fd = self._open(posixpath.dirname(resolved), _O_PATH | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return
        name = posixpath.basename(resolved)
        try:
            info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(name, dir_fd=parent_fd)
            else:
                os.unlink(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(parent_fd)

    # -- internals -------------------------------------------------------------------------

    def _open(self, path: str, flags: int, mode: int = 0) -> int:
        resolved = self.resolve(path)
        root_fd = os.open(self.root, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with as_sandbox_root():
                return _openat2(root_fd, resolved.lstrip("/") or ".", flags, mode)
        except PathEscapeError:
            raise PathEscapeError(f"path escapes the sandbox root: {resolved}") from None
        except OSError as error:
            raise OSError(error.errno, error.strerror, resolved) from None
        finally:
            os.close(root_fd)

    def _owned_by_sandbox(self, resolved: str) -> bool:
        # The files API writes as the sandbox's agent; inside the home it hands files to the user.
        return resolved == self.home or resolved.startswith(self.home + "/")
