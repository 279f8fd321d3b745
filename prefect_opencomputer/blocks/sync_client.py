"""`SyncOpenComputerClient`: the async client, usable from plain `def` code.

The client has no sync twin, so this facade owns a private event loop on a thread of its own and runs each
call there: the connection pool stays bound to one loop however many threads call it, and nothing here
depends on Prefect's own loops. `client.sandboxes.list()` returns what `await oc.sandboxes.list()` would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from prefect_opencomputer.client import OpenComputerClient

T = TypeVar("T")


class EventLoopThread:
    """An event loop running forever on a daemon thread, until `stop()`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="opencomputer-sync", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class _SyncNamespace:
    """One resource namespace (`sandboxes`, `exec`, ...) whose coroutine methods block instead."""

    def __init__(self, namespace: object, loop: EventLoopThread) -> None:
        self._namespace = namespace
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._namespace, name)
        if not callable(attribute):
            return attribute
        method: Callable[..., Any] = attribute
        if not asyncio.iscoroutinefunction(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            awaitable: Awaitable[Any] = method(*args, **kwargs)
            return self._loop.run(_as_coroutine(awaitable))

        call.__doc__ = method.__doc__
        return call


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


class SyncOpenComputerClient:
    """`with credentials.get_sync_client() as client: client.sandboxes.list()`: the async client's calls,
    blocking. Streaming calls (exec attach, build logs) are for the async client."""

    def __init__(self, make_client: Callable[[], OpenComputerClient]) -> None:
        self._loop = EventLoopThread()
        self._client = self._loop.run(_build(make_client))
        self._closed = False

    def __getattr__(self, name: str) -> _SyncNamespace:
        return _SyncNamespace(getattr(self._client, name), self._loop)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.run(self._client.aclose())
        self._loop.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


async def _build(make_client: Callable[[], OpenComputerClient]) -> OpenComputerClient:
    # Made on the private loop: the client's pool belongs to the loop that uses it.
    return make_client()
