"""Everyday mistakes and combinations: each either works or says what to write instead."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prefect import flow
from prefect.client.schemas.objects import FlowRun, State
from prefect.flows import Flow

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.tasks import (
    CommandFailedError,
    CommandTimedOutError,
    cleanup_hooks,
    create_sandbox,
    open_sandbox,
    run_command,
)


async def test_a_users_own_failure_hook_composes_with_the_cleanup_hooks(control: Any) -> None:
    seen: list[str] = []

    def notify(flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]) -> None:
        seen.append(state.name)

    @flow(**cleanup_hooks(on_failure=[notify]))
    async def fails_with_a_sandbox() -> None:
        await create_sandbox()
        raise RuntimeError("boom")

    state = await fails_with_a_sandbox(return_state=True)

    assert state.is_failed()
    assert seen == ["Failed"]
    assert await control.live_sandboxes() == 0  # the cleanup hook ran too


async def test_sync_with_open_sandbox_in_an_async_flow_says_to_use_async_with(control: Any) -> None:
    @flow
    async def uses_sync_with() -> None:
        with open_sandbox() as sandbox:
            await run_command(sandbox, "true")

    state = await uses_sync_with(return_state=True)

    assert state.is_failed()
    with pytest.raises(TypeError, match=r"async with open_sandbox\(\.\.\.\) as sandbox"):
        await state.aresult()
    assert await control.live_sandboxes() == 0


async def test_a_block_passed_positionally_is_told_to_go_in_credentials(
    credentials: OpenComputerCredentials, control: Any
) -> None:
    @flow
    def positional_block() -> None:
        create_sandbox(credentials)  # type: ignore[arg-type]

    state = await asyncio.to_thread(positional_block, return_state=True)

    assert state.is_failed()
    with pytest.raises(TypeError, match=r"pass it as credentials="):
        await state.aresult()
    assert await control.live_sandboxes() == 0


def test_command_errors_are_importable_beside_each_other() -> None:
    import prefect_opencomputer.client as client

    assert CommandTimedOutError is client.CommandTimedOutError
    assert issubclass(CommandFailedError, client.OpenComputerError)
