"""The files API of a sandbox: streamed reads and writes that cannot leave its root.

File operations block, so they run in a few worker threads of their own (`FileWorkers`), each
bounded by a timeout that answers a retryable 503: whatever a sandbox does to its files, it cannot
hold every server thread or a request for ever, and a stuck thread never delays the server's exit.
Errors a client caused become 4xx `BackendError`s naming the path (a missing file is 404 here, where
the service answers 500), except reading a directory and listing a file, which answer the service's
own 500 and message: a program that reads one or lists the other sees what it would see there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

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

CHUNK_BYTES = 256 * 1024
# Writes are gathered into blocks this size before a thread hop.
WRITE_BLOCK_BYTES = 1024 * 1024

_T = TypeVar("_T")
_Job = tuple["concurrent.futures.Future[Any]", Callable[[], Any]]


class FileWorkers:
    """A bounded set of daemon threads for blocking file I/O, each call bounded by a timeout.

    Daemon threads, never joined: one stuck in a system call cannot keep the process alive at
    exit. A call that times out answers 503 (retryable); if it still finishes later, a file it
    opened is closed rather than leaked.
    """

    def __init__(self, count: int, timeout: float) -> None:
        self.count = count
        self.timeout = timeout
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()

    async def run(self, function: Callable[..., _T], *args: object) -> _T:
        self._start()
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._jobs.put((future, functools.partial(function, *args)))
        try:
            # On timeout the wrapper is cancelled, which cancels the job if it is still queued.
            async with asyncio.timeout(self.timeout):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            if not future.cancelled():  # already running: tidy up whenever it ends
                future.add_done_callback(_close_abandoned)
            raise RetryLater(
                "the file operation did not finish in time, retry",
                headers={"Retry-After": "1"},
                retryable=True,
            ) from None

    def _start(self) -> None:
        if len(self._threads) >= self.count:
            return
        with self._start_lock:
            while len(self._threads) < self.count:
                thread = threading.Thread(
                    target=self._work, name=f"sandbox-files-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while True:
            future, call = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as error:  # handed to the awaiting request
                future.set_exception(error)
            else:
                future.set_result(result)


def _close_abandoned(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is None:
        close = getattr(future.result(), "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()


@dataclass(frozen=True)
class Download:
    """An open file of a sandbox: its size, and its bytes, read in chunks while the sandbox is held awake."""

    size: int
    chunks: AsyncIterator[bytes]


class SandboxFiles:
    """File behaviour over the sandboxes core."""

    def __init__(self, backend: SandboxCore) -> None:
        self._backend = backend
        config = backend.config
        self.workers = FileWorkers(config.file_workers, config.file_operation_timeout)
        # No sandbox holds more than half the workers: another's calls always find one free.
        self._per_sandbox = max(1, config.file_workers // 2)
        # Per sandbox with calls in flight or waiting: its turns, and how many calls hold or want one.
        self._turns: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @contextlib.asynccontextmanager
    async def _turn(self, sandbox_id: str) -> AsyncIterator[None]:
        """One of the sandbox's own turns at the workers; 503 when none comes within the timeout."""
        turns, users = self._turns.get(sandbox_id, (asyncio.Semaphore(self._per_sandbox), 0))
        self._turns[sandbox_id] = (turns, users + 1)
        try:
            try:
                async with asyncio.timeout(self.workers.timeout):
                    await turns.acquire()
            except TimeoutError:
                raise RetryLater(
                    "the sandbox's earlier file operations are still running, retry",
                    headers={"Retry-After": "1"},
                    retryable=True,
                ) from None
            try:
                yield
            finally:
                turns.release()
        finally:
            _, users = self._turns[sandbox_id]
            if users == 1:
                del self._turns[sandbox_id]
            else:
                self._turns[sandbox_id] = (turns, users - 1)

    async def open_download(self, sandbox_id: str, path: str) -> Download:
        async with self._backend.data_plane(sandbox_id), self._turn(sandbox_id):
            files = self._backend.files(sandbox_id)
            with _file_errors("open", path):
                try:
                    handle = await self.workers.run(files.open_read, path)
                except IsADirectoryError as error:
                    # As the agent: it opens a directory, then fails its first read.
                    raise Failed(
                        f"recv first chunk: {AGENT_ERROR}read {error.filename}: read {error.filename}: "
                        "is a directory"
                    ) from None
            size = _size(handle)
            return Download(size, self._chunks(sandbox_id, handle, size))

    async def _chunks(self, sandbox_id: str, handle: BinaryIO, size: int) -> AsyncIterator[bytes]:
        remaining = size
        try:
            with self._backend.idle.busy(sandbox_id):
                while remaining > 0:
                    chunk = await self.workers.run(handle.read, min(CHUNK_BYTES, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    yield chunk
        finally:
            handle.close()

    async def upload(
        self, sandbox_id: str, path: str, body: AsyncIterator[bytes], declared_length: int | None
    ) -> None:
        """Stream ``body`` into the file, refusing more than the configured maximum (413)."""
        limit = self._backend.config.max_file_bytes
        if declared_length is not None and declared_length > limit:
            raise _too_large(limit)
        async with self._backend.data_plane(sandbox_id), self._turn(sandbox_id):
            files = self._backend.files(sandbox_id)
            with _file_errors("open", path):
                handle = await self.workers.run(files.open_write, path)
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
                            await self.workers.run(handle.write, bytes(block))
                            block.clear()
                            self._backend.touch(sandbox_id)
                    if block:
                        await self.workers.run(handle.write, bytes(block))
            except BaseException:
                with contextlib.suppress(OSError, ValueError, BackendError):
                    await self.workers.run(handle.close)
                    await self.workers.run(files.remove, path)
                raise
            with _file_errors("write", path):
                await self.workers.run(handle.close)

    async def list_dir(self, sandbox_id: str, path: str) -> list[DirEntry]:
        async with self._backend.data_plane(sandbox_id), self._turn(sandbox_id):
            files = self._backend.files(sandbox_id)
            with _file_errors("open", path):
                try:
                    return await self.workers.run(files.list, path)
                except NotADirectoryError as error:
                    raise Failed(
                        f"{AGENT_ERROR}readdir {error.filename}: open {error.filename}: not a directory"
                    ) from None

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        async with self._backend.data_plane(sandbox_id), self._turn(sandbox_id):
            files = self._backend.files(sandbox_id)
            with _file_errors("mkdir", path):
                await self.workers.run(files.mkdir, path)

    async def remove(self, sandbox_id: str, path: str) -> None:
        async with self._backend.data_plane(sandbox_id), self._turn(sandbox_id):
            files = self._backend.files(sandbox_id)
            with _file_errors("remove", path):
                await self.workers.run(files.remove, path)


def _size(handle: BinaryIO) -> int:
    return os.fstat(handle.fileno()).st_size


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
