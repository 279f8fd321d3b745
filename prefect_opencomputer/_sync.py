"""The one bridge from `def` code to this package's async implementation.

Every sync spelling (the sync tasks, `with open_sandbox(...)`, `publish_run_report`,
`kill_flow_run_sandboxes`, `SyncOpenComputerClient`) runs its coroutine here: on one private event loop,
on a daemon thread of its own, shared by the whole process. One loop means a client's connection pool
stays bound to the loop that made it however many threads call in, and nothing depends on Prefect's own
loops. The caller's context variables (the task run, its logger, its transaction) go with the coroutine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

R = TypeVar("R")

# How long a caller waits at a time: an exception raised into its thread (a task timeout) lands between two
# waits, and `interrupted` is asked again.
_WAIT_SLICE = 0.2
# How long an interrupted coroutine is given to clean up (kill a remote command, tag a new sandbox).
_CLEANUP_TIMEOUT = 30.0

_loop: asyncio.AbstractEventLoop | None = None
_loop_thread: threading.Thread | None = None
_loop_lock = threading.Lock()


def _shared_loop() -> asyncio.AbstractEventLoop:
    """The process's bridge loop, started on first use; it runs until the process exits."""
    global _loop, _loop_thread
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            _loop_thread = threading.Thread(target=_loop.run_forever, name="opencomputer-sync", daemon=True)
            _loop_thread.start()
        return _loop


def run_sync(
    coroutine: Coroutine[Any, Any, R],
    *,
    interrupted: Callable[[], BaseException | None] | None = None,
) -> R:
    """Run `coroutine` on the bridge loop and block until it ends; its result or its exception.

    `interrupted`, asked between waits, returns the exception to stop with (the flow run is stopping) or
    None. Whatever interrupts the wait (that exception, a task timeout raised into this thread, Ctrl-C),
    the coroutine is cancelled and given time to clean up before the interruption goes on.
    """
    loop = _shared_loop()
    if threading.current_thread() is _loop_thread:
        coroutine.close()
        raise RuntimeError(
            "a sync OpenComputer call was made from async code running on the integration's own loop: "
            "await the `a`-prefixed function (or the async client) instead"
        )
    finished = threading.Event()

    async def supervised() -> R:
        try:
            return await coroutine
        finally:
            finished.set()

    future = asyncio.run_coroutine_threadsafe(supervised(), loop)
    try:
        while not future.done():
            concurrent.futures.wait([future], timeout=_WAIT_SLICE)
            stop = interrupted() if interrupted is not None and not future.done() else None
            if stop is not None:
                raise stop
        return future.result()
    except BaseException:
        future.cancel()
        finished.wait(_CLEANUP_TIMEOUT)
        raise
