"""Retry rules under injected faults: replay only what cannot duplicate work, reconcile the rest."""

from __future__ import annotations

import pytest

from prefect_opencomputer.client import OpenComputerClient, ServerError, TransportError

from .conftest import Faults


async def test_get_is_retried_after_a_retryable_503(
    fast_oc: OpenComputerClient, sandbox: str, faults: Faults
) -> None:
    await faults.add("GET", f"/api/sandboxes/{sandbox}", status=503, retryAfter=1, times=2)

    fetched = await fast_oc.sandboxes.get(sandbox)

    assert fetched.sandbox_id == sandbox
    assert await faults.pending() == []


async def test_retries_give_up_after_the_attempt_budget(
    fast_oc: OpenComputerClient, sandbox: str, faults: Faults
) -> None:
    await faults.add("GET", f"/api/sandboxes/{sandbox}", status=503, retryAfter=1, times=10)

    with pytest.raises(ServerError) as caught:
        await fast_oc.sandboxes.get(sandbox)

    assert caught.value.status_code == 503 and caught.value.retryable
    assert [fault["remaining"] for fault in await faults.pending()] == [10 - 4]  # 4 attempts, then stop


async def test_server_error_on_a_command_is_not_retried(
    fast_oc: OpenComputerClient, sandbox: str, faults: Faults
) -> None:
    # A 500 is not marked retryable, and a command run is never replayed on a guess.
    await faults.add("POST", f"/api/sandboxes/{sandbox}/exec/run", status=500, times=2)

    with pytest.raises(ServerError):
        await fast_oc.exec.run(sandbox, "true")

    assert [fault["remaining"] for fault in await faults.pending()] == [1]


async def test_create_refused_with_retryable_503_is_retried(
    fast_oc: OpenComputerClient, faults: Faults
) -> None:
    # The service refused the request before doing anything, and said so: replaying is safe.
    await faults.add("POST", "/api/sandboxes", status=503, retryAfter=1, times=1)

    sandbox = await fast_oc.sandboxes.create(timeout=60)
    await fast_oc.sandboxes.kill(sandbox.sandbox_id)

    assert await faults.pending() == []


async def test_dropped_command_run_is_not_replayed(
    fast_oc: OpenComputerClient, sandbox: str, faults: Faults
) -> None:
    await faults.add("POST", f"/api/sandboxes/{sandbox}/exec/run", drop=True, when="after", times=1)

    with pytest.raises(TransportError) as caught:
        await fast_oc.exec.run(sandbox, "echo ran >> /home/sandbox/runs")

    assert caught.value.ambiguous
    assert await fast_oc.files.read_text(sandbox, "/home/sandbox/runs") == "ran\n"


async def test_checkpoint_create_is_reconciled_after_a_dropped_commit(
    fast_oc: OpenComputerClient, sandbox: str, faults: Faults
) -> None:
    await faults.add("POST", f"/api/sandboxes/{sandbox}/checkpoints", drop=True, when="after", times=1)

    checkpoint = await fast_oc.checkpoints.create(sandbox, "reconciled")

    assert await faults.pending() == []
    assert checkpoint.name == "reconciled"
    assert [cp.id for cp in await fast_oc.checkpoints.list(sandbox)] == [checkpoint.id]


async def test_checkpoint_create_dropped_before_commit_is_created_once(
    fast_oc: OpenComputerClient, sandbox: str, faults: Faults
) -> None:
    await faults.add("POST", f"/api/sandboxes/{sandbox}/checkpoints", drop=True, when="before", times=1)

    checkpoint = await fast_oc.checkpoints.create(sandbox, "second-try")

    assert await faults.pending() == []
    assert checkpoint.name == "second-try"
    assert [cp.name for cp in await fast_oc.checkpoints.list(sandbox)] == ["second-try"]


async def test_dropped_sandbox_create_is_not_replayed(fast_oc: OpenComputerClient, faults: Faults) -> None:
    before = {s.sandbox_id for s in await fast_oc.sandboxes.list()}
    await faults.add("POST", "/api/sandboxes", drop=True, when="after", times=1)

    with pytest.raises(TransportError) as caught:
        await fast_oc.sandboxes.create(timeout=60)

    created = {s.sandbox_id for s in await fast_oc.sandboxes.list()} - before
    for orphan in created:
        await fast_oc.sandboxes.kill(orphan)
    assert caught.value.ambiguous and "may exist" in str(caught.value)
    assert len(created) == 1  # exactly the one the dropped request made, no replay


async def test_dropped_preview_create_is_replayed_safely(
    fast_oc: OpenComputerClient, sandbox: str, faults: Faults
) -> None:
    await faults.add("POST", f"/api/sandboxes/{sandbox}/preview", drop=True, when="after", times=1)

    preview = await fast_oc.previews.create(sandbox, 8080)

    assert await faults.pending() == []
    assert [p.id for p in await fast_oc.previews.list(sandbox)] == [preview.id]
