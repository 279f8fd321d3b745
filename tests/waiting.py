"""Waiting for what the server does on its own time: a fixed sleep is a guess that load breaks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def until(check: Callable[[], Awaitable[bool]], *, what: str, timeout: float = 20) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout:.0f}s")
        await asyncio.sleep(0.05)
