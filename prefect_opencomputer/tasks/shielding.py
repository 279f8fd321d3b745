"""Finishing cleanup while the caller is being cancelled (task timeout, flow cancellation, loop teardown)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def finish_despite_cancellation(awaitable: Awaitable[T], *, timeout: float) -> T:
    """Await `awaitable` to the end even if this task is cancelled meanwhile, then re-raise the cancellation.

    An anyio shield covers Prefect's timeouts (anyio cancel scopes); a separate asyncio task covers native
    cancellation (`Task.cancel()`, as `asyncio.run` does when a flow process is terminated), which pierces
    anyio shields. Raises `TimeoutError` if the work takes longer than `timeout` seconds.
    """
    work = asyncio.ensure_future(awaitable)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    interrupted = timed_out = False
    with anyio.CancelScope(shield=True):
        while not work.done():
            remaining = deadline - loop.time()
            if remaining <= 0 and not timed_out:
                work.cancel()
                timed_out = True
            try:
                await asyncio.wait({work}, timeout=None if timed_out else remaining)
            except asyncio.CancelledError:
                interrupted = True
    if interrupted:
        raise asyncio.CancelledError
    if timed_out:
        raise TimeoutError(f"gave up after {timeout:g} s")
    return work.result()
