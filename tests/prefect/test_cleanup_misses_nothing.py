"""Cleanup misses nothing and touches nothing foreign: retries, failed runs' checkpoints, lost answers."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import flow

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import OpenComputerClient, OpenComputerError
from prefect_opencomputer.flows import LifecycleParameters, reap_orphaned_sandboxes, sandbox_lifecycle
from prefect_opencomputer.tasks import (
    TAG_FLOW_RUN,
    acreate_checkpoint,
    acreate_sandbox,
    adelete_checkpoint,
    cleanup_hooks,
    create_sandbox,
    open_sandbox,
)


async def checkpoint_ids(oc: OpenComputerClient, sandbox_id: str) -> list[str]:
    return [checkpoint.id for checkpoint in await oc.checkpoints.list(sandbox_id)]


@pytest.mark.parametrize(
    "fault",
    [{"status": 500, "when": "before"}, {"drop": True, "when": "before"}],
    ids=["server-error-before", "dropped-before"],
)
async def test_a_failed_create_never_adopts_a_bystander(
    control: Any, oc: OpenComputerClient, fault: dict[str, Any]
) -> None:
    # Someone else's sandbox, untagged, started a moment before our create fails without taking effect.
    bystander = await oc.sandboxes.create(timeout=120)
    await control.fault("POST", "/api/sandboxes", times=1, **fault)

    @flow
    async def create_one() -> None:
        await acreate_sandbox()

    state = await create_one(return_state=True)

    assert state.is_failed()
    after = await oc.sandboxes.get(bystander.sandbox_id)
    assert after.status == "running" and after.tags == {}
    assert [sb.sandbox_id for sb in await oc.sandboxes.list()] == [bystander.sandbox_id]
    await oc.sandboxes.kill(bystander.sandbox_id)


async def test_a_lost_create_adopts_its_own_sandbox_beside_a_bystander(
    control: Any, oc: OpenComputerClient
) -> None:
    bystander = await oc.sandboxes.create(timeout=120)
    await control.fault("POST", "/api/sandboxes", times=1, status=502, when="after")

    @flow
    async def create_one() -> str:
        return (await acreate_sandbox()).sandbox_id

    mine = await create_one()

    assert mine != bystander.sandbox_id
    assert (await oc.sandboxes.get(bystander.sandbox_id)).tags == {}
    assert (await oc.sandboxes.get(mine)).tags[TAG_FLOW_RUN]
    for sandbox_id in (mine, bystander.sandbox_id):
        await oc.sandboxes.kill(sandbox_id)


async def test_a_flow_retry_starts_with_nothing_of_the_failed_attempt_alive(control: Any) -> None:
    seen: list[int] = []

    @flow(retries=1, retry_delay_seconds=0, **cleanup_hooks())
    async def flaky() -> int:
        seen.append(await control.live_sandboxes())
        await acreate_sandbox()  # not in a `with`: the failed attempt leaves it behind
        if len(seen) == 1:
            raise RuntimeError("first attempt fails")
        return len(seen)

    assert await flaky() == 2
    assert seen == [0, 0]
    # The second attempt's sandbox stays (the run completed and did not kill it): that one is the reaper's.
    assert await control.live_sandboxes() == 1


async def test_a_failed_lifecycle_leaves_no_checkpoint_and_no_sandbox(
    control: Any, oc: OpenComputerClient
) -> None:
    parameters = LifecycleParameters(fork_command="exit 3")

    state = await sandbox_lifecycle(parameters, return_state=True)

    assert state.is_failed()
    assert await control.live_sandboxes() == 0
    flow_run_id = str(state.state_details.flow_run_id)
    made = [sb for sb in await oc.sandboxes.list() if sb.tags.get(TAG_FLOW_RUN) == flow_run_id]
    assert made == []
    report = await _report_rows(flow_run_id)
    checkpointed = {row["sandbox"] for row in report if row["kind"] == "checkpoint"}
    assert checkpointed and all([await checkpoint_ids(oc, sandbox_id) == [] for sandbox_id in checkpointed])


async def _report_rows(flow_run_id: str) -> list[dict[str, str]]:
    from prefect_opencomputer.tasks import run_registry

    return [entry.row() for entry in run_registry.entries(flow_run_id)]


async def test_a_failed_run_with_hooks_deletes_the_checkpoints_it_made(
    credentials: OpenComputerCredentials, control: Any, oc: OpenComputerClient
) -> None:
    @flow(**cleanup_hooks())
    async def leaks() -> None:
        sandbox = await acreate_sandbox(credentials=credentials)
        await acreate_checkpoint(sandbox, "left", credentials=credentials)
        raise RuntimeError(sandbox.sandbox_id)

    state = await leaks(return_state=True)

    assert state.is_failed()
    sandbox_id = str(state.message).rsplit(": ", 1)[-1].strip("')\"")
    assert await checkpoint_ids(oc, sandbox_id) == []
    assert await control.live_sandboxes() == 0


async def test_a_checkpoint_answered_502_after_it_was_made_is_found_not_leaked(
    control: Any, oc: OpenComputerClient
) -> None:
    @flow
    async def checkpoint_once() -> tuple[str, list[str], list[str]]:
        async with open_sandbox() as sandbox:
            await control.fault("POST", "/api/sandboxes/*/checkpoints", times=1, status=502, when="after")
            checkpoint = await acreate_checkpoint(sandbox, "reconciled")
            made = await checkpoint_ids(oc, sandbox.sandbox_id)
            await adelete_checkpoint(checkpoint)
            return checkpoint.id, made, await checkpoint_ids(oc, sandbox.sandbox_id)

    checkpoint_id, made, left = await checkpoint_once()

    assert made == [checkpoint_id]
    assert left == []
    assert await control.live_sandboxes() == 0


async def test_a_checkpoint_refused_with_502_before_it_was_made_fails_cleanly(
    control: Any, oc: OpenComputerClient
) -> None:
    @flow
    async def checkpoint_once() -> list[str]:
        async with open_sandbox() as sandbox:
            await control.fault("POST", "/api/sandboxes/*/checkpoints", times=1, status=502, when="before")
            with pytest.raises(OpenComputerError):
                await acreate_checkpoint(sandbox, "never")
            return await checkpoint_ids(oc, sandbox.sandbox_id)

    assert await checkpoint_once() == []
    assert await control.live_sandboxes() == 0


async def test_the_reaper_deletes_checkpoints_of_a_run_that_died(
    credentials: OpenComputerCredentials, control: Any, oc: OpenComputerClient, records: Any
) -> None:
    from prefect_opencomputer.tasks import events, run_registry

    @flow
    async def dies() -> None:
        # No hooks and no `with`: as if the process were killed right after the checkpoint.
        sandbox = await acreate_sandbox(credentials=credentials)
        await acreate_checkpoint(sandbox, "orphan", credentials=credentials)
        raise RuntimeError("gone")

    state = await dies(return_state=True)
    flow_run_id = str(state.state_details.flow_run_id)
    run_registry.forget(flow_run_id)
    (sandbox,) = [sb for sb in await oc.sandboxes.list() if sb.tags.get(TAG_FLOW_RUN) == flow_run_id]
    assert len(await checkpoint_ids(oc, sandbox.sandbox_id)) == 1
    # The reaper finds checkpoints through their events, which Prefect persists a moment later: a
    # scheduled reaper runs long after; this one waits until the API has them (created + checkpoint).
    await records.events(events.sandbox_resource_id(sandbox.sandbox_id), wait_for=2)

    report = await reap_orphaned_sandboxes(credentials=credentials)

    assert report.killed == [sandbox.sandbox_id]
    assert [cp.sandbox_id for cp in report.checkpoints] == [sandbox.sandbox_id]
    assert report.deleted_checkpoints and await checkpoint_ids(oc, sandbox.sandbox_id) == []
    assert await control.live_sandboxes() == 0


def test_a_def_flow_retry_kills_the_failed_attempts_sandbox(control: Any, sync_live_sandboxes: Any) -> None:
    seen: list[int] = []

    @flow(retries=1, retry_delay_seconds=0, **cleanup_hooks())
    def flaky() -> str:
        seen.append(sync_live_sandboxes())
        sandbox = create_sandbox()
        if len(seen) == 1:
            raise RuntimeError("first attempt fails")
        return sandbox.sandbox_id

    sandbox_id = flaky()

    assert seen == [0, 0]
    with OpenComputerCredentials().get_sync_client() as client:
        assert [sb.sandbox_id for sb in client.sandboxes.list()] == [sandbox_id]
        client.sandboxes.kill(sandbox_id)
