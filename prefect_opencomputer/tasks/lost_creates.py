"""Creates and forks whose answer was lost: find the sandbox the request made instead of leaking it.

The service has no idempotency keys, so a create that may have reached it cannot be replayed. When its
answer is lost (connection dropped, or a 5xx that may have come after the work), the sandbox it made is
the one untagged sandbox that started since the request and that no task in this process has claimed.
If there is not exactly one such sandbox, or another create of this process was in flight meanwhile (its
sandbox could be the one found), nothing is adopted and the error stands.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from prefect_opencomputer.client import (
    OpenComputerClient,
    OpenComputerError,
    Sandbox,
    ServerError,
    TransportError,
)
from prefect_opencomputer.tasks.run_logger import run_logger

# Allowance for the service's clock running behind ours.
CLOCK_SKEW = timedelta(seconds=30)


class _CreateLedger:
    """The sandboxes this process's tasks created, and how many creates are in flight right now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claimed: set[str] = set()
        self._in_flight = 0

    def claim(self, sandbox_id: str) -> None:
        with self._lock:
            self._claimed.add(sandbox_id)

    def is_claimed(self, sandbox_id: str) -> bool:
        with self._lock:
            return sandbox_id in self._claimed

    def started(self) -> int:
        """Count a create in; returns how many others were in flight."""
        with self._lock:
            self._in_flight += 1
            return self._in_flight - 1

    def others_in_flight(self) -> int:
        with self._lock:
            return self._in_flight - 1

    def ended(self) -> None:
        with self._lock:
            self._in_flight -= 1


_ledger = _CreateLedger()


def may_have_created(error: BaseException) -> bool:
    """The request may have made a sandbox even though it failed."""
    if isinstance(error, TransportError):
        return error.ambiguous
    return isinstance(error, ServerError) and not error.retryable


async def find_lost_sandbox(client: OpenComputerClient, asked_at: datetime) -> Sandbox | None:
    """The only running, untagged, unclaimed sandbox started since `asked_at`, if there is exactly one."""
    earliest = asked_at - CLOCK_SKEW
    candidates = [
        sandbox
        for sandbox in await client.sandboxes.list()
        if sandbox.is_running
        and not sandbox.tags
        and sandbox.started_at is not None
        and sandbox.started_at >= earliest
        and not _ledger.is_claimed(sandbox.sandbox_id)
    ]
    return candidates[0] if len(candidates) == 1 else None


async def create_or_find(client: OpenComputerClient, create: Callable[[], Awaitable[Sandbox]]) -> Sandbox:
    """Run `create`; if its answer is lost, adopt the sandbox it made (or re-raise); claim the result."""
    asked_at = datetime.now(UTC)
    overlapped = _ledger.started() > 0
    try:
        try:
            sandbox = await create()
        except OpenComputerError as error:
            overlapped = overlapped or _ledger.others_in_flight() > 0
            if not may_have_created(error) or overlapped:
                raise
            found = await find_lost_sandbox(client, asked_at)
            if found is None:
                raise
            run_logger().warning(
                "Lost the answer to a sandbox create (%s); adopting %s, the sandbox it made",
                error,
                found.sandbox_id,
            )
            sandbox = found
        # Claimed before this create stops counting as in flight: no other recovery can take it.
        _ledger.claim(sandbox.sandbox_id)
        return sandbox
    finally:
        _ledger.ended()
