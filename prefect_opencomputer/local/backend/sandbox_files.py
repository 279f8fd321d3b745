"""The files API of a sandbox: streamed reads and writes that cannot leave its root.

File operations block, so they run in worker threads; errors a client caused become 4xx
`WireError`s naming the path (a missing file is 404 here, where the service answers 500).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, BinaryIO

import anyio.to_thread

from prefect_opencomputer.local.backend.fileops import DirEntry, PathEscapeError
from prefect_opencomputer.local.errors import WireError

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.service import LocalBackend

CHUNK_BYTES = 256 * 1024
# Writes are gathered into blocks this size before a thread hop.
WRITE_BLOCK_BYTES = 1024 * 1024


class Download:
    """An open file of a sandbox, read in chunks while the sandbox is held awake."""

    def __init__(self, backend: LocalBackend, sandbox_id: str, handle: BinaryIO, size: int) -> None:
        self._backend = backend
        self._sandbox_id = sandbox_id
        self._handle = handle
        self.size = size

    async def chunks(self) -> AsyncIterator[bytes]:
        remaining = self.size
        try:
            with self._backend.idle.busy(self._sandbox_id):
                while remaining > 0:
                    chunk = await anyio.to_thread.run_sync(self._handle.read, min(CHUNK_BYTES, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    yield chunk
        finally:
            self._handle.close()


class SandboxFiles:
    """File behaviour of a `LocalBackend`."""

    def __init__(self, backend: LocalBackend) -> None:
        self._backend = backend

    async def open_download(self, sandbox_id: str, path: str) -> Download:
        async with self._backend.data_plane(sandbox_id):
            files = self._backend.runtime.files(sandbox_id)
            with _file_errors("open", path):
                handle = await anyio.to_thread.run_sync(files.open_read, path)
            size = _size(handle)
            return Download(self._backend, sandbox_id, handle, size)

    async def upload(
        self, sandbox_id: str, path: str, body: AsyncIterator[bytes], declared_length: int | None
    ) -> None:
        """Stream ``body`` into the file, refusing more than the configured maximum (413)."""
        limit = self._backend.config.max_file_bytes
        if declared_length is not None and declared_length > limit:
            raise _too_large(limit)
        async with self._backend.data_plane(sandbox_id):
            files = self._backend.runtime.files(sandbox_id)
            with _file_errors("open", path):
                handle = await anyio.to_thread.run_sync(files.open_write, path)
            written = 0
            block = bytearray()
            try:
                with _file_errors("write", path):
                    async for chunk in body:
                        written += len(chunk)
                        if written > limit:
                            raise _too_large(limit)
                        block += chunk
                        if len(block) >= WRITE_BLOCK_BYTES:
                            await anyio.to_thread.run_sync(handle.write, bytes(block))
                            block.clear()
                            self._backend.touch(sandbox_id)
                    if block:
                        await anyio.to_thread.run_sync(handle.write, bytes(block))
            except BaseException:
                await anyio.to_thread.run_sync(handle.close)
                with contextlib.suppress(OSError, ValueError):
                    await anyio.to_thread.run_sync(files.remove, path)
                raise
            with _file_errors("write", path):
                await anyio.to_thread.run_sync(handle.close)

    async def list_dir(self, sandbox_id: str, path: str) -> list[DirEntry]:
        async with self._backend.data_plane(sandbox_id):
            files = self._backend.runtime.files(sandbox_id)
            with _file_errors("open", path):
                return await anyio.to_thread.run_sync(files.list, path)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        async with self._backend.data_plane(sandbox_id):
            files = self._backend.runtime.files(sandbox_id)
            with _file_errors("mkdir", path):
                await anyio.to_thread.run_sync(files.mkdir, path)

    async def remove(self, sandbox_id: str, path: str) -> None:
        async with self._backend.data_plane(sandbox_id):
            files = self._backend.runtime.files(sandbox_id)
            with _file_errors("remove", path):
                await anyio.to_thread.run_sync(files.remove, path)


def _size(handle: BinaryIO) -> int:
    return os.fstat(handle.fileno()).st_size


def _too_large(limit: int) -> WireError:
    return WireError(413, f"file exceeds the maximum size of {limit} bytes")


@contextlib.contextmanager
def _file_errors(operation: str, path: str) -> Iterator[None]:
    """Translate what the file system says about a client's path into its HTTP answer."""
    try:
        yield
    except PathEscapeError as error:
        raise WireError(400, str(error)) from None
    except FileNotFoundError:
        raise WireError(404, f"{operation} {path}: no such file or directory") from None
    except IsADirectoryError:
        raise WireError(400, f"{operation} {path}: is a directory") from None
    except NotADirectoryError:
        raise WireError(400, f"{operation} {path}: not a directory") from None
    except PermissionError:
        raise WireError(403, f"{operation} {path}: permission denied") from None
    except ValueError:  # e.g. a NUL byte in the path
        raise WireError(400, f"{operation} {path}: invalid path") from None
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            raise WireError(400, f"{operation} {path}: file name too long") from None
        if error.errno == errno.ENOSPC:
            raise WireError(507, f"{operation} {path}: no space left on device") from None
        raise WireError(500, f"{operation} {path}: {error.strerror or error}") from None
