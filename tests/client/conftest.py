"""Client test fixtures: a client with fast retries, fault injection, and a ready checkpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from prefect_opencomputer.client import Checkpoint, OpenComputerClient, RetryPolicy

FAST_RETRY = RetryPolicy(max_attempts=4, backoff_initial=0.01, backoff_max=0.05, retry_after_max=0.05)


class Faults:
    """The local server's fault injection (`/_test/faults`), seen from a test."""

    def __init__(self, control: httpx.AsyncClient) -> None:
        self._control = control

    async def add(self, method: str, path: str, **fault: object) -> None:
        """Arm a fault; keywords are the route's JSON fields (status, retryAfter, drop, when, times)."""
        response = await self._control.post("/_test/faults", json={"method": method, "path": path, **fault})
        response.raise_for_status()

    async def pending(self) -> list[dict[str, Any]]:
        """Faults not yet used up: empty once every armed fault has hit its requests."""
        response = await self._control.get("/_test/faults")
        response.raise_for_status()
        pending: list[dict[str, Any]] = response.json()
        return pending


@pytest.fixture
async def fast_oc(local_server: Any) -> AsyncIterator[OpenComputerClient]:
    """Our client with retries that wait milliseconds instead of seconds."""
    async with OpenComputerClient(
        api_key=local_server.api_key, api_url=local_server.url, retry=FAST_RETRY
    ) as client:
        yield client


@pytest.fixture
async def faults(local_server: Any) -> AsyncIterator[Faults]:
    """Fault injection on the local server; every fault is cleared after the test."""
    async with httpx.AsyncClient(
        base_url=local_server.url, headers={"X-API-Key": local_server.api_key}, timeout=30
    ) as control:
        try:
            yield Faults(control)
        finally:
            await control.delete("/_test/faults")


@pytest.fixture
async def ready_checkpoint(oc: OpenComputerClient, sandbox: str) -> Checkpoint:
    """A ready checkpoint of `sandbox`, taken after writing /home/sandbox/base.txt."""
    await oc.files.write(sandbox, "/home/sandbox/base.txt", "from the checkpoint\n")
    checkpoint = await oc.checkpoints.create(sandbox, "base")
    return await oc.checkpoints.wait_ready(sandbox, checkpoint.id, timeout=120)
