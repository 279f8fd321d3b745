"""The example flows: happy paths, and a failure at each step of `sandbox_lifecycle` leaves nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.variables import Variable

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import OpenComputerClient
from prefect_opencomputer.flows import (
    FanOutParameters,
    GoldenCheckpointParameters,
    LifecycleParameters,
    ReaperParameters,
    checkpoint_fan_out,
    reap_orphaned_sandboxes,
    rebuild_golden_checkpoint,
    sandbox_lifecycle,
)
from prefect_opencomputer.tasks import (
    CREATED_BY,
    TAG_CREATED_BY,
    TAG_FLOW_RUN,
    TAG_RETAIN,
    create_checkpoint_patch,
    create_sandbox,
    hibernate_sandbox,
    open_sandbox,
)


async def test_lifecycle_fork_sees_setup_and_patch_and_nothing_is_left(control: Any, records: Any) -> None:
    state = await sandbox_lifecycle(return_state=True)
    assert state.is_completed(), state.message
    report = await state.aresult()
    assert report.fork_output == "prepared before the checkpoint\napplied by the checkpoint patch\n"
    assert report.fork_id != report.sandbox_id and report.sandboxes_left == 0
    assert await control.live_sandboxes() == 0
    assert (await control.stats())["peakSandboxes"] == 2

    artifacts = await records.artifacts(state.state_details.flow_run_id)
    table = next(artifact for artifact in artifacts if artifact.key == "sandbox-lifecycle")
    for expected in (report.sandbox_id, report.fork_id, "checkpoint", "command", "kill"):
        assert expected in str(table.data)


FAILURES = {
    "failing-setup-command": (
        {"parameters": LifecycleParameters(setup_commands=["echo about to fail >&2; exit 7"])},
        None,
        "exited with code 7",
    ),
    "failing-patch-script": (
        {"parameters": LifecycleParameters(patch_script="echo cannot patch >&2; exit 3")},
        None,
        "patches of checkpoint",
    ),
    "failing-fork-command": (
        {"parameters": LifecycleParameters(fork_command="cat /no/such/file")},
        None,
        "exited with code 1",
    ),
    "server-error-on-patch-create": ({}, ("POST", "/api/sandboxes/checkpoints/*/patches", 500), "HTTP 500"),
    "server-error-on-checkpoint": ({}, ("POST", "/api/sandboxes/sb-*/checkpoints", 500), "HTTP 500"),
    "server-error-on-fork": ({}, ("POST", "/api/sandboxes/from-checkpoint/*", 500), "HTTP 500"),
    "server-error-on-command": ({}, ("POST", "/api/sandboxes/*/exec", 500), "HTTP 500"),
    "bad-request-on-tags": ({}, ("PUT", "/api/sandboxes/*/tags", 400), "HTTP 400"),
}


@pytest.mark.parametrize("case", FAILURES, ids=list(FAILURES))
async def test_lifecycle_failure_at_any_step_fails_clearly_and_leaves_zero_sandboxes(
    control: Any, oc: OpenComputerClient, case: str
) -> None:
    arguments, fault, message = FAILURES[case]
    if fault is not None:
        method, path, status = fault
        await control.fault(method, path, status=status, times=0)
    state = await sandbox_lifecycle(return_state=True, **arguments)
    assert state.is_failed()
    assert message in (state.message or ""), state.message
    await control.clear_faults()
    assert await control.live_sandboxes() == 0
    assert await oc.sandboxes.list() == []


async def test_fan_out_runs_the_command_in_every_fork_within_the_concurrency_cap(
    control: Any, records: Any
) -> None:
    parameters = FanOutParameters(forks=5, max_concurrency=2)
    state = await checkpoint_fan_out(parameters, return_state=True)
    assert state.is_completed(), state.message
    report = await state.aresult()
    assert [outcome.index for outcome in report.outcomes] == [0, 1, 2, 3, 4]
    for outcome in report.outcomes:
        assert outcome.ok and outcome.output.startswith(f"fork {outcome.index} of 5 ran in sb-")
    assert len({outcome.sandbox_id for outcome in report.outcomes}) == 5
    # The base sandbox plus at most `max_concurrency` forks were ever alive at once.
    assert (await control.stats())["peakSandboxes"] <= 3
    assert report.sandboxes_left == 0 and await control.live_sandboxes() == 0

    artifacts = {
        artifact.key: artifact for artifact in await records.artifacts(state.state_details.flow_run_id)
    }
    assert artifacts["checkpoint-fan-out-progress"].data == 100.0
    assert "fork 4 of 5" in str(artifacts["checkpoint-fan-out-results"].data)


async def test_fan_out_fails_when_a_fork_fails_and_still_leaves_nothing(control: Any) -> None:
    parameters = FanOutParameters(forks=3, max_concurrency=3, command='test "$FORK_INDEX" != 1')
    state = await checkpoint_fan_out(parameters, return_state=True)
    assert state.is_failed() and "1 of 3 forks failed: fork 1: exit 1" in (state.message or "")
    assert await control.live_sandboxes() == 0


async def test_reaper_kills_sandboxes_of_finished_or_unknown_runs_and_spares_live_ones(
    credentials: OpenComputerCredentials, control: Any, oc: OpenComputerClient
) -> None:
    @flow
    async def finishes_and_leaks() -> str:
        return (await create_sandbox(credentials=credentials)).sandbox_id

    finished = await finishes_and_leaks()
    unknown_run = await oc.sandboxes.create(timeout=60)
    await oc.sandboxes.set_tags(
        unknown_run.sandbox_id, {TAG_CREATED_BY: CREATED_BY, TAG_FLOW_RUN: str(uuid.uuid4())}
    )
    not_ours = await oc.sandboxes.create(timeout=60)

    @flow
    async def live_run_reaps(dry_run: bool) -> tuple[Any, str]:
        async with open_sandbox(credentials=credentials) as mine:
            report = await reap_orphaned_sandboxes(ReaperParameters(dry_run=dry_run))
            assert (await oc.sandboxes.get(mine.sandbox_id)).status == "running"
            return report, mine.sandbox_id

    dry, _ = await live_run_reaps(True)
    assert dry.dry_run and dry.killed == []
    assert {orphan.sandbox_id for orphan in dry.orphans} == {finished, unknown_run.sandbox_id}
    assert await control.live_sandboxes() == 3

    report, _ = await live_run_reaps(False)
    assert sorted(report.killed) == sorted([finished, unknown_run.sandbox_id])
    reasons = {orphan.sandbox_id: orphan.reason for orphan in report.orphans}
    assert reasons == {finished: "flow run Completed", unknown_run.sandbox_id: "flow run not found"}
    assert report.kept == 1  # the live run's own sandbox, and why
    assert "its flow run is not over" in report.kept_sandboxes[0].reason
    assert "renewed its lease" in report.kept_sandboxes[0].reason
    assert [sb.sandbox_id for sb in await oc.sandboxes.list()] == [not_ours.sandbox_id]
    await oc.sandboxes.kill(not_ours.sandbox_id)


async def test_reaper_finds_an_orphan_that_hibernated_after_its_flow_ended(
    credentials: OpenComputerCredentials, control: Any, oc: OpenComputerClient, records: Any
) -> None:
    @flow
    async def leaks_and_sleeps() -> str:
        sandbox = await create_sandbox(credentials=credentials)
        await hibernate_sandbox(sandbox, credentials=credentials)
        return sandbox.sandbox_id

    hibernated = await leaks_and_sleeps()
    # The list shows running sandboxes only.
    assert hibernated not in {sb.sandbox_id for sb in await oc.sandboxes.list()}
    await records.events(f"opencomputer.sandbox.{hibernated}")  # its creation is on record in Prefect

    report = await reap_orphaned_sandboxes(ReaperParameters())

    assert report.killed == [hibernated]
    assert (await oc.sandboxes.get(hibernated)).status == "stopped"


async def test_golden_checkpoint_rebuild_carries_its_patches_and_retires_the_previous_one(
    credentials: OpenComputerCredentials, control: Any, oc: OpenComputerClient
) -> None:
    parameters = GoldenCheckpointParameters(variable_name=f"golden-{uuid.uuid4().hex[:8]}")
    first = await rebuild_golden_checkpoint(parameters)
    assert first.patch_ids == []

    @flow
    async def add_patch() -> None:
        await create_checkpoint_patch(
            first.checkpoint_id, "echo patched > /home/sandbox/golden/p", credentials=credentials
        )

    await add_patch()
    second = await rebuild_golden_checkpoint(parameters)
    assert len(second.patch_ids) == 1 and second.checkpoint_id != first.checkpoint_id
    published = await Variable.aget(parameters.variable_name)
    assert isinstance(published, dict) and published["checkpoint_id"] == second.checkpoint_id
    # The retired builder is gone; the current one is kept (hibernated) and marked to be left alone.
    assert (await oc.sandboxes.get(first.sandbox_id)).status == "stopped"
    current = await oc.sandboxes.get(second.sandbox_id)
    assert current.status == "hibernated" and TAG_RETAIN in current.tags
    fork = await oc.checkpoints.fork(second.checkpoint_id)
    try:
        assert (await oc.exec.run(fork.sandbox_id, "cat /home/sandbox/golden/p")).stdout == "patched\n"
    finally:
        await oc.sandboxes.kill(fork.sandbox_id)
        await oc.sandboxes.kill(second.sandbox_id)
    async with get_client() as prefect:
        await prefect.delete_variable_by_name(parameters.variable_name)
