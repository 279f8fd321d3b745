"""Cleanup layers: context managers, transaction rollback, flow hooks, and retries that never duplicate."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import flow
from prefect.context import get_run_context
from prefect.transactions import transaction

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import OpenComputerClient
from prefect_opencomputer.tasks import (
    TAG_FLOW_RUN,
    TAG_TASK_RUN,
    akill_flow_run_sandboxes,
    cleanup_hooks,
    create_checkpoint,
    create_sandbox,
    fork_checkpoint,
    kill_flow_run_sandboxes,
    open_fork,
    open_sandbox,
    run_command,
)


async def test_open_sandbox_kills_on_error_inside_the_block(
    credentials: OpenComputerCredentials, control: Any
) -> None:
    @flow
    async def fails_inside() -> None:
        async with (
            open_sandbox(credentials=credentials) as sandbox,
            open_fork(
                await create_checkpoint(sandbox, "cp", credentials=credentials), credentials=credentials
            ),
        ):
            assert await control.live_sandboxes() == 2
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fails_inside()
    assert await control.live_sandboxes() == 0


async def test_transaction_rollback_kills_the_sandboxes_it_created(
    credentials: OpenComputerCredentials, control: Any
) -> None:
    @flow
    async def chain() -> None:
        with transaction():
            sandbox = await create_sandbox(credentials=credentials)
            checkpoint = await create_checkpoint(sandbox, "cp", credentials=credentials)
            await fork_checkpoint(checkpoint, credentials=credentials)
            assert await control.live_sandboxes() == 2
            await run_command(sandbox, "exit 5", credentials=credentials)

    state = await chain(return_state=True)
    assert state.is_failed()
    assert await control.live_sandboxes() == 0


async def test_committed_transaction_keeps_its_sandboxes(
    credentials: OpenComputerCredentials, control: Any, oc: OpenComputerClient
) -> None:
    @flow
    async def chain() -> str:
        with transaction():
            sandbox = await create_sandbox(credentials=credentials)
        return sandbox.sandbox_id

    sandbox_id = await chain()
    assert await control.live_sandboxes() == 1
    await oc.sandboxes.kill(sandbox_id)


async def test_failure_hook_kills_every_sandbox_of_the_flow_run(
    credentials: OpenComputerCredentials, control: Any, oc: OpenComputerClient
) -> None:
    unrelated = await oc.sandboxes.create(timeout=60)

    @flow(**cleanup_hooks())
    async def leaks_then_fails() -> None:
        sandbox = await create_sandbox(credentials=credentials)
        checkpoint = await create_checkpoint(sandbox, "cp", credentials=credentials)
        await fork_checkpoint(checkpoint, credentials=credentials)
        raise RuntimeError("the flow failed before cleaning up")

    state = await leaks_then_fails(return_state=True)
    assert state.is_failed()
    remaining = [sb.sandbox_id for sb in await oc.sandboxes.list()]
    assert remaining == [unrelated.sandbox_id]
    await oc.sandboxes.kill(unrelated.sandbox_id)


async def test_kill_flow_run_sandboxes_finds_them_by_tag_from_another_process_view(
    credentials: OpenComputerCredentials, control: Any, oc: OpenComputerClient
) -> None:
    @flow
    async def leaves_one() -> str:
        await create_sandbox(credentials=credentials)
        return str(get_run_context().flow_run.id)  # type: ignore[union-attr]

    flow_run_id = await leaves_one()
    # A fresh process knows nothing of the run but its id: the tags are enough.
    from prefect_opencomputer.tasks import run_registry

    run_registry.forget(flow_run_id)
    assert len(await akill_flow_run_sandboxes(credentials, flow_run_id)) == 1
    assert await akill_flow_run_sandboxes(credentials, flow_run_id) == []
    assert await control.live_sandboxes() == 0


def test_kill_flow_run_sandboxes_from_def_code_kills_what_a_def_flow_left(
    credentials: OpenComputerCredentials,
) -> None:
    @flow
    def leaves_one() -> str:
        create_sandbox(credentials=credentials)
        return str(get_run_context().flow_run.id)  # type: ignore[union-attr]

    flow_run_id = leaves_one()
    killed = kill_flow_run_sandboxes(credentials, flow_run_id)
    assert len(killed) == 1
    with credentials.get_sync_client() as client:
        assert killed[0] not in [sandbox.sandbox_id for sandbox in client.sandboxes.list()]


async def test_a_refused_create_is_retried_by_the_task_and_makes_one_sandbox(
    credentials: OpenComputerCredentials, control: Any, oc: OpenComputerClient
) -> None:
    # Four refusals exhaust the client's own attempts, so the task itself must retry.
    await control.fault("POST", "/api/sandboxes", status=503, retryAfter=0, times=4)

    @flow
    async def create_one() -> Any:
        return await create_sandbox(credentials=credentials)

    sandbox = await create_one()
    stats = await control.stats()
    assert stats["liveSandboxes"] == 1 and stats["peakSandboxes"] == 1
    assert sandbox.tags[TAG_TASK_RUN]
    await oc.sandboxes.kill(sandbox.sandbox_id)


@pytest.mark.parametrize(
    "fault",
    [{"drop": True, "when": "after"}, {"status": 500, "when": "after"}],
    ids=["connection-dropped", "server-error"],
)
async def test_a_create_whose_answer_is_lost_adopts_the_sandbox_it_made(
    credentials: OpenComputerCredentials, control: Any, oc: OpenComputerClient, fault: dict[str, Any]
) -> None:
    await control.fault("POST", "/api/sandboxes", times=1, **fault)

    @flow
    async def create_one() -> tuple[Any, str]:
        sandbox = await create_sandbox(credentials=credentials)
        return sandbox, str(get_run_context().flow_run.id)  # type: ignore[union-attr]

    sandbox, flow_run_id = await create_one()
    stats = await control.stats()
    assert stats["liveSandboxes"] == 1 and stats["peakSandboxes"] == 1
    assert (await oc.sandboxes.get(sandbox.sandbox_id)).tags[TAG_FLOW_RUN] == flow_run_id
    await oc.sandboxes.kill(sandbox.sandbox_id)


async def test_a_fork_whose_answer_is_lost_adopts_the_fork_it_made(
    credentials: OpenComputerCredentials, control: Any
) -> None:
    @flow
    async def fork_once() -> int:
        async with open_sandbox(credentials=credentials) as sandbox:
            checkpoint = await create_checkpoint(sandbox, "cp", credentials=credentials)
            await control.fault("POST", "/api/sandboxes/from-checkpoint/*", drop=True, when="after", times=1)
            async with open_fork(checkpoint, credentials=credentials):
                return int((await control.stats())["peakSandboxes"])

    assert await fork_once() == 2
    assert await control.live_sandboxes() == 0
