"""The rolling idle timeout: a running sandbox nobody uses for ``timeout`` seconds hibernates.

Every data-plane operation touches its sandbox; while an operation is in flight (a command
running, a client attached to an exec session) the sandbox counts as busy and never expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from prefect_opencomputer.local.backend.startup import cancel_and_wait

logger = logging.getLogger(__name__)

# How often expiry is checked: well under the 1-2 s timeouts tests use.
TICK_SECONDS = 0.2


@dataclass
class _Watch:
    timeout: float
    last_activity: float


class IdleTracker:
    """Watches running sandboxes and calls ``on_expiry`` for each one left idle too long."""

    def __init__(self, on_expiry: Callable[[str], Awaitable[None]]) -> None:
        self._on_expiry = on_expiry
        self._watches: dict[str, _Watch] = {}
        self._busy_counts: dict[str, int] = {}
        self._expiring: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    # -- what the service tells us ------------------------------------------------------------

    def watch(self, sandbox_id: str, timeout: int) -> None:
        """Start (or restart) the timer of a running sandbox; ``0`` never expires."""
        watch = self._watches.get(sandbox_id)
        if watch is None:
            self._watches[sandbox_id] = _Watch(float(timeout), time.monotonic())
        else:
            watch.timeout = float(timeout)
            watch.last_activity = time.monotonic()

    def forget(self, sandbox_id: str) -> None:
        self._watches.pop(sandbox_id, None)

    def touch(self, sandbox_id: str) -> None:
        watch = self._watches.get(sandbox_id)
        if watch is not None:
            watch.last_activity = time.monotonic()

    @contextlib.contextmanager
    def busy(self, sandbox_id: str) -> Iterator[None]:
        """Hold the sandbox awake for the duration; the timer restarts when it ends.

        The count lives outside the watch so an operation that wakes the sandbox (and so
        creates the watch) is counted from its first moment.
        """
        self._busy_counts[sandbox_id] = self._busy_counts.get(sandbox_id, 0) + 1
        try:
            yield
        finally:
            remaining = self._busy_counts[sandbox_id] - 1
            if remaining:
                self._busy_counts[sandbox_id] = remaining
            else:
                del self._busy_counts[sandbox_id]
            self.touch(sandbox_id)

    def expired(self, sandbox_id: str) -> bool:
        """Whether the sandbox has been idle past its timeout right now."""
        watch = self._watches.get(sandbox_id)
        if watch is None or watch.timeout <= 0 or self._busy_counts.get(sandbox_id):
            return False
        return time.monotonic() - watch.last_activity >= watch.timeout

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="idle-timeout")

    async def stop(self) -> None:
        """Stop the loop and wait for hibernations it already started."""
        task, self._loop_task = self._loop_task, None
        await cancel_and_wait(task)
        if self._expiring:
            await asyncio.gather(*self._expiring.values(), return_exceptions=True)

    def clear(self) -> None:
        self._watches.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            for sandbox_id in [sid for sid in self._watches if self.expired(sid)]:
                if sandbox_id not in self._expiring:
                    self._expiring[sandbox_id] = asyncio.create_task(
                        self._expire(sandbox_id), name=f"idle-expire-{sandbox_id}"
                    )

    async def _expire(self, sandbox_id: str) -> None:
        try:
            await self._on_expiry(sandbox_id)
        except Exception:
            logger.exception("idle hibernation of %s failed", sandbox_id)
        finally:
            self._expiring.pop(sandbox_id, None)
