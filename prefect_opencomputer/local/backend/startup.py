"""What every part of the backend shares about the server's own start and stop."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TypeVar

Opened = TypeVar("Opened")


def started(value: Opened | None) -> Opened:
    """``value``, which the server's start opens (None before it): a call before the start is a bug."""
    if value is None:
        raise RuntimeError("the backend is not started")
    return value


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Stop a background loop: cancel it and wait until it is gone."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
