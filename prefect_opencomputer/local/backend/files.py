"""The files API of a sandbox: streamed reads and writes that cannot leave its root.

The work is done inside the sandbox, as its root, by its own file agents (`sandbox.fileagents`),
so a path a sandbox races can only lead where its root could go anyway, and one sandbox's slow
calls wait for its own agents, never another's. Every step is bounded by a timeout that answers a
retryable 503 before any byte of the answer is sent; the agent of a step that timed out is killed,
so its work stops. Errors a client caused become 4xx `BackendError`s naming the path (a missing
file is 404 here, where the service answers 500), except reading a directory and listing a file,
which answer the service's own 500 and message: a program that reads one or lists the other sees
what it would see there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from prefect_opencomputer.local.errors import (
    AGENT_ERROR,
    BackendError,
    Failed,
    Forbidden,
    Invalid,
    NoSpace,
    NotFound,
    RetryLater,
    TooLarge,
)
from prefect_opencomputer.local.sandbox.fileops import (
    DirEntry,
    NotRegularFileError,
    PathEscapeError,
    TooManyEntries,
)

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.core import SandboxCore
    from prefect_opencomputer.local.sandbox.fileagents import FileOps, FileWriter

_T = TypeVar("_T")
# Writes are gathered into blocks this size before they go to the agent.
WRITE_BLOCK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Download:
    """An open file of a sandbox: its size, and its bytes, read in chunks while the sandbox is held awake."""

    size: int
    chunks: AsyncIterator[bytes]


class SandboxFiles:
    """File behaviour over the sandboxes core."""

    def __init__(self, backend: SandboxCore) -> None:
        self._backend = backend
        self.timeout = backend.config.file_operation_timeout

    @contextlib.asynccontextmanager
    async def _bounded(self) -> AsyncIterator[None]:
        """One step of a file call, answered 503 (retryable) when it does not end in time.

        A step that waits for one of the sandbox's busy agents times out the same way; a step
        cut short kills its agent, which stops the work.
        """
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except TimeoutError:
            raise RetryLater(
                "the file operation did not finish in time, retry",
                headers={"Retry-After": "1"},
                retryable=True,
            ) from None

    async def open_download(self, sandbox_id: str, path: str) -> Download:
        opened = await self._step(
            sandbox_id, "open", path, lambda files, path: _as_hosted(files.open_read(path), IsADirectoryError)
        )
        return Download(opened.size, self._paced(sandbox_id, opened.chunks))

    async def _paced(self, sandbox_id: str, source: AsyncGenerator[_T, None]) -> AsyncIterator[_T]:
        """``source``'s items for a response under way, each within the timeout, the sandbox held awake."""
        try:
            with self._backend.idle.busy(sandbox_id):
                while True:
                    # Past the headers a 503 cannot be sent: a stalled step ends the body early.
                    async with asyncio.timeout(self.timeout):
                        item = await anext(source, None)
                    if item is None:
                        break
                    yield item
        finally:
            await source.aclose()

    async def upload(
        self, sandbox_id: str, path: str, body: AsyncIterator[bytes], declared_length: int | None
    ) -> None:
        """Stream ``body`` into the file, refusing more than the configured maximum (413)."""
        limit = self._backend.config.max_file_bytes
        if declared_length is not None and declared_length > limit:
            raise _too_large(limit)
        async with self._backend.data_plane(sandbox_id):
            files = self._backend.file_ops(sandbox_id)
            with _file_errors("open", path):
                async with self._bounded():
                    writer = await files.open_write(path)
            try:
                with _file_errors("write", path):
                    await self._stream(sandbox_id, writer, body, limit)
                    async with self._bounded():
                        await writer.close()
            except BaseException:
                writer.abort()
                with contextlib.suppress(OSError, ValueError, BackendError):
                    async with self._bounded():
                        await files.remove(path)
                raise

    async def _stream(
        self, sandbox_id: str, writer: FileWriter, body: AsyncIterator[bytes], limit: int
    ) -> None:
        written = 0
        block = bytearray()
        async for chunk in body:
            written += len(chunk)
            if written > limit:
                raise _too_large(limit)
            block += chunk
            if len(block) >= WRITE_BLOCK_BYTES:
                async with self._bounded():
                    await writer.write(bytes(block))
                block.clear()
                self._backend.touch(sandbox_id)
        if block:
            async with self._bounded():
                await writer.write(bytes(block))

    async def list_dir(self, sandbox_id: str, path: str) -> AsyncIterator[list[DirEntry]]:
        """The directory's entries in name order, in batches: refused (413) past `LIST_LIMIT` before
        any is sent, and streamed, so the server holds one batch of a listing at a time."""
        listing = await self._step(
            sandbox_id, "open", path, lambda files, path: _as_hosted(files.list(path), NotADirectoryError)
        )
        return self._paced(sandbox_id, listing.batches)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        await self._step(sandbox_id, "mkdir", path, lambda files, path: files.mkdir(path))

    async def remove(self, sandbox_id: str, path: str) -> None:
        await self._step(sandbox_id, "remove", path, lambda files, path: files.remove(path))

    async def _step(
        self, sandbox_id: str, operation: str, path: str, step: Callable[[FileOps, str], Awaitable[_T]]
    ) -> _T:
        """One agent step on ``path``: the sandbox awake, the step within the timeout, its errors as HTTP."""
        async with self._backend.data_plane(sandbox_id):
            with _file_errors(operation, path):
                async with self._bounded():
                    return await step(self._backend.file_ops(sandbox_id), path)


# Reading a directory and listing a file answer the service's own 500 and message (its agent
# opens a directory, then fails its first read), so a program sees what it would see there.
_HOSTED_FAILURES: dict[type[OSError], str] = {
    IsADirectoryError: "recv first chunk: {agent}read {name}: read {name}: is a directory",
    NotADirectoryError: "{agent}readdir {name}: open {name}: not a directory",
}


async def _as_hosted(step: Awaitable[_T], failure: type[OSError]) -> _T:
    try:
        return await step
    except failure as error:
        raise Failed(_HOSTED_FAILURES[failure].format(agent=AGENT_ERROR, name=error.filename)) from None


def _too_large(limit: int) -> BackendError:
    return TooLarge(f"file exceeds the maximum size of {limit} bytes")


@contextlib.contextmanager
def _file_errors(operation: str, path: str) -> Iterator[None]:
    """Translate what the file system says about a client's path into its HTTP answer."""
    try:
        yield
    except (PathEscapeError, NotRegularFileError) as error:
        raise Invalid(str(error)) from None
    except TooManyEntries as error:
        raise TooLarge(str(error)) from None
    except FileNotFoundError:
        raise NotFound(f"{operation} {path}: no such file or directory") from None
    except IsADirectoryError:
        raise Invalid(f"{operation} {path}: is a directory") from None
    except NotADirectoryError:
        raise Invalid(f"{operation} {path}: not a directory") from None
    except PermissionError:
        raise Forbidden(f"{operation} {path}: permission denied") from None
    except ValueError:  # e.g. a NUL byte in the path
        raise Invalid(f"{operation} {path}: invalid path") from None
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            raise Invalid(f"{operation} {path}: file name too long") from None
        if error.errno == errno.ENOSPC:
            raise NoSpace(f"{operation} {path}: no space left on device") from None
        raise Failed(f"{operation} {path}: {error.strerror or error}") from None
