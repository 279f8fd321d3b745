"""File operations on a sandbox's root that cannot escape it.

The file agent (`fileagent`) runs these as the sandbox's root inside its namespaces, on ``/``; the
server's command start-up checks look up paths with them on ``/proc/<pid>/root``. Plain path
resolution would follow an absolute symlink (or a ``/proc`` magic link) out of the root, so every
lookup goes through ``openat2`` with ``RESOLVE_IN_ROOT`` (symlinks resolve as inside the sandbox),
``RESOLVE_NO_MAGICLINKS`` and ``RESOLVE_NO_XDEV`` (no ``/proc``, ``/dev`` or other mounts).

Only regular files are read or written: every open is ``O_NONBLOCK | O_NOCTTY`` and checked with
``fstat`` before a byte moves, so a FIFO, socket or device the sandbox planted answers at once.
What a call creates belongs to whoever runs it (the agent: the sandbox's root); modes change only
on what a call created, and only through its own file descriptor. Plain standard library only: the
agent imports this module before it enters a sandbox, and nothing after.
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

_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_RESOLVE = _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV
_O_PATH = getattr(os, "O_PATH", 0o10000000)
_libc = ctypes.CDLL(None, use_errno=True)


class PathEscapeError(ValueError):
    """The path leaves the sandbox root (``..`` above ``/``, a magic link or another mount)."""


class NotRegularFileError(ValueError):
    """The path names a FIFO, socket or device: the files API reads and writes regular files only."""


class TooManyEntries(ValueError):
    """A directory holds more entries than one listing answers (`LIST_LIMIT`)."""


# The most entries one listing answers: a sandbox's directory of millions of entries would
# otherwise cost the server the memory and the event loop the time of a body of hundreds of MB.
LIST_LIMIT = 10_000


# The longest message a file agent and the server send each other (`fileagent`).
AGENT_MESSAGE_BYTES = 64 * 1024

FILE_MODE = 0o644
DIR_MODE = 0o755


def _umask() -> int:
    """The process's umask, read without setting it (``os.umask`` would race other threads)."""
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"Umask:"):
                return int(line.split()[1], 8)
    return 0o022


_MAX_LINK_HOPS = 40  # as the kernel's own limit


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


def _openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    if "\0" in path:
        raise ValueError("embedded null byte in path")
    if not flags & _O_PATH:  # openat2 refuses any other flag beside O_PATH
        flags |= os.O_NOCTTY
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
        if err == errno.ENXIO:  # a socket, or a FIFO opened for writing with no reader
            raise NotRegularFileError(f"not a regular file: /{path.lstrip('/')}")
        raise OSError(err, os.strerror(err), path)
    return fd


@dataclass(frozen=True)
class DirEntry:
    name: str
    path: str
    is_dir: bool
    size: int


class RootedFiles:
    """Reads and writes below ``root`` as a process chrooted there would see them.

    Files and directories it *creates* belong to the calling process's ids (0644 files, 0755
    directories). The hosted agent writes as root, and so does ours: the user's commands need sudo
    to change what the API wrote, as there.
    """

    def __init__(self, root: Path, *, home: str, umask: int | None = None) -> None:
        self.root = root
        self.home = home
        # The caller's umask when it is known and fixed (the agent's), else read at each mkdir.
        self.umask = umask

    def resolve(self, path: str) -> str:
        """Absolute, normalised form of ``path``; relative paths start at the sandbox's home."""
        if "\0" in path:  # the C side would cut the name short at the NUL
            raise ValueError("embedded null byte in path")
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
            _require_regular(fd, self.resolve(path))
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def list(self, path: str) -> list[DirEntry]:
        """The entries of a directory, sorted by name; `TooManyEntries` past `LIST_LIMIT`."""
        resolved = self.resolve(path)
        fd = self._open(resolved, os.O_RDONLY | os.O_DIRECTORY)
        try:
            entries: list[DirEntry] = []
            with os.scandir(fd) as it:
                for entry in it:
                    if len(entries) == LIST_LIMIT:
                        raise TooManyEntries(
                            f"{resolved} holds more than {LIST_LIMIT} entries, more than one listing "
                            "answers: list it in parts with a command (ls | head) instead"
                        )
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

    def stat(self, path: str) -> os.stat_result:
        """What ``path`` names, a final symlink followed inside the root."""
        fd = self._open(path, _O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        try:
            os.close(self._open(path, _O_PATH))
        except FileNotFoundError:
            return False
        return True

    # -- writing ---------------------------------------------------------------------------

    def open_write(self, path: str) -> BinaryIO:
        """Create or truncate a regular file, making its parent directories as needed.

        As the hosted agent (``O_CREAT | O_TRUNC``, mode 0644, as root): a new file is given mode
        0644 through its descriptor; an existing file is truncated and keeps its owner and mode. A
        final symlink is followed, resolved inside the root, and its target keeps its mode too:
        ``O_CREAT | O_EXCL`` never follows a link, so only a file this call made is ever chmodded.
        Anything but a regular file (FIFO, socket, device) is refused before a byte is written.
        """
        resolved = self.resolve(path)
        if resolved == "/":
            raise IsADirectoryError(errno.EISDIR, "is a directory", resolved)
        self.mkdir(posixpath.dirname(resolved))
        for _ in range(_MAX_LINK_HOPS):
            try:
                fd = self._open(resolved, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NONBLOCK, 0)
            except FileExistsError:
                try:
                    fd = self._open(resolved, os.O_WRONLY | os.O_NONBLOCK)
                except FileNotFoundError:
                    # A dangling link: create its target, as a write that follows it would.
                    resolved = self._link_target(resolved)
                    continue
                return _writable(fd, resolved, created=False)
            return _writable(fd, resolved, created=True)
        raise PathEscapeError(f"too many levels of symbolic links: {self.resolve(path)}")

    def mkdir(self, path: str) -> None:
        """``mkdir -p``, one component at a time so no lookup leaves the root.

        Each directory is born with the caller's ids and mode 0755 (under umask 022, as the agent
        runs): no step after the ``mkdir`` has to reach it again by name, which a sandbox could race.
        Directories that already exist are left as they are.
        """
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
                os.mkdir(parts[depth - 1], DIR_MODE, dir_fd=parent_fd)
                if (self.umask if self.umask is not None else _umask()) & DIR_MODE:
                    self._widen_to_dir_mode(parts[depth - 1], parent_fd, prefix)
            except FileExistsError:
                # A file (or a dangling link) is in the way.
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", prefix) from None
            finally:
                os.close(parent_fd)

    def _widen_to_dir_mode(self, name: str, parent_fd: int, prefix: str) -> None:
        """Undo a umask stricter than 022 on a directory just made.

        The sandbox may have moved a mount onto the new name meanwhile: only the directory just
        made (on the parent's filesystem, owned by the caller) is touched.
        """
        made = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            info, parent = os.fstat(made), os.fstat(parent_fd)
            if info.st_dev != parent.st_dev or info.st_uid != os.geteuid():
                raise OSError(errno.EBUSY, "the directory was replaced while it was being made", prefix)
            os.fchmod(made, DIR_MODE)
        finally:
            os.close(made)

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

    def _link_target(self, resolved: str) -> str:
        """Where the symlink at ``resolved`` points, as an absolute path inside the root."""
        parent_fd = self._open(posixpath.dirname(resolved), _O_PATH | os.O_DIRECTORY)
        try:
            target = os.readlink(posixpath.basename(resolved), dir_fd=parent_fd)
        except OSError:  # no longer a link: it went while we looked
            raise FileNotFoundError(errno.ENOENT, "no such file or directory", resolved) from None
        finally:
            os.close(parent_fd)
        return self.resolve(posixpath.join(posixpath.dirname(resolved), target))

    def _open(self, path: str, flags: int, mode: int = 0) -> int:
        resolved = self.resolve(path)
        root_fd = os.open(self.root, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return _openat2(root_fd, resolved.lstrip("/") or ".", flags, mode)
        except PathEscapeError:
            raise PathEscapeError(f"path escapes the sandbox root: {resolved}") from None
        except OSError as error:
            raise OSError(error.errno, error.strerror, resolved) from None
        finally:
            os.close(root_fd)


def _writable(fd: int, resolved: str, *, created: bool) -> BinaryIO:
    """A write handle on ``fd``: a file just ``created`` gets mode 0644 whatever the umask."""
    try:
        if created:
            os.fchmod(fd, FILE_MODE)
        else:
            _require_regular(fd, resolved)
            os.ftruncate(fd, 0)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def _require_regular(fd: int, resolved: str) -> None:
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", resolved)
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(f"not a regular file: {resolved}")
