"""The running-sandbox quota as a Prefect global concurrency limit: a slot per sandbox, create to kill."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import NotFoundError
from prefect_opencomputer.flows.fan_out import FanOutParameters, checkpoint_fan_out
from prefect_opencomputer.tasks import (
    cleanup_hooks,
    create_sandbox,
    hibernate_sandbox,
    kill_sandbox,
    open_sandbox,
    run_command,
    wake_sandbox,
)
from prefect_opencomputer.tasks.errors import ConcurrencyLimitMissingError
from tests.waiting import until


async def _active_slots(name: str) -> int:
    async with get_client() as prefect:
        return (await prefect.read_global_concurrency_limit_by_name(name)).active_slots


async def _slots_become(name: str, count: int) -> None:
    """Slots are given back from a background thread, a moment after the kill or hibernate."""

    async def reached() -> bool:
        return await _active_slots(name) == count

    await until(reached, what=f"{count} active slot(s) of {name}")


@pytest.fixture
async def limit_of_5() -> AsyncIterator[str]:
    name = f"opencomputer-sandboxes-{uuid.uuid4().hex[:8]}"
    async with get_client() as prefect:
        await prefect.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=5))
        yield name
        await prefect.delete_global_concurrency_limit_by_name(name)


async def test_two_fan_outs_share_a_limit_of_5_and_all_20_forks_complete(
    control: Any, limit_of_5: str
) -> None:
    parameters = FanOutParameters(forks=10, max_concurrency=10, concurrency_limit=limit_of_5)

    first, second = await asyncio.gather(checkpoint_fan_out(parameters), checkpoint_fan_out(parameters))

    assert [o.ok for o in first.outcomes + second.outcomes] == [True] * 20
    assert len({o.sandbox_id for o in first.outcomes + second.outcomes}) == 20
    # The server never ran more than the limit at once (both base sandboxes count too).
    assert (await control.stats())["peakSandboxes"] <= 5
    await _slots_become(limit_of_5, 0)
    assert await control.live_sandboxes() == 0


async def test_a_slot_is_given_back_on_hibernate_taken_on_wake_and_given_back_on_kill(
    credentials: OpenComputerCredentials, control: Any, limit_of_5: str
) -> None:
    @flow
    async def life() -> None:
        sandbox = await create_sandbox(credentials=credentials, concurrency_limit=limit_of_5)
        assert await _active_slots(limit_of_5) == 1
        await hibernate_sandbox(sandbox, credentials=credentials)
        await _slots_become(limit_of_5, 0)
        await wake_sandbox(sandbox, credentials=credentials)
        assert await _active_slots(limit_of_5) == 1
        await kill_sandbox(sandbox, credentials=credentials)
        await _slots_become(limit_of_5, 0)

    await life()


async def test_a_failed_create_and_a_failed_flow_give_their_slots_back(
    credentials: OpenComputerCredentials, control: Any, limit_of_5: str
) -> None:
    @flow
    async def failed_create() -> None:
        await create_sandbox("no-such-template", credentials=credentials, concurrency_limit=limit_of_5)

    with pytest.raises(NotFoundError):
        await failed_create()
    await _slots_become(limit_of_5, 0)

    @flow(**cleanup_hooks())
    async def fails_holding_a_sandbox() -> None:
        await create_sandbox(credentials=credentials, concurrency_limit=limit_of_5)
        assert await _active_slots(limit_of_5) == 1
        raise RuntimeError("the flow fails with its sandbox alive")

    with pytest.raises(RuntimeError, match="alive"):
        await fails_holding_a_sandbox()
    await _slots_become(limit_of_5, 0)
    assert await control.live_sandboxes() == 0


async def test_a_missing_limit_is_skipped_unless_strict(
    credentials: OpenComputerCredentials, control: Any
) -> None:
    missing = f"no-such-limit-{uuid.uuid4().hex[:8]}"

    @flow
    async def lenient() -> str:
        async with open_sandbox(credentials=credentials, concurrency_limit=missing) as sandbox:
            return sandbox.status

    @flow
    async def strict() -> None:
        await create_sandbox(credentials=credentials, concurrency_limit=missing, concurrency_strict=True)

    assert await lenient() == "running"
    with pytest.raises(ConcurrencyLimitMissingError, match=f"prefect gcl create {missing} --limit 50"):
        await strict()
    assert await control.live_sandboxes() == 0


async def test_with_a_limit_above_the_service_cap_the_429s_are_waited_out_and_all_forks_complete(
    control: Any, limit_of_5: str
) -> None:
    # The service's cap below the limit: as when other tools use the organisation's quota too.
    # Room for the base sandbox and one fork; each fork holds its place for 3 s, longer than a create's
    # own two retries (1 s, 4 s) would wait for the last of them.
    (await control.http.put("/_test/limits", json={"maxRunningSandboxes": 2})).raise_for_status()
    try:
        parameters = FanOutParameters(
            forks=4, max_concurrency=4, command="sleep 3", concurrency_limit=limit_of_5
        )
        report = await checkpoint_fan_out(parameters)
    finally:
        await control.reset()

    assert [o.ok for o in report.outcomes] == [True] * 4


def test_a_def_flow_holds_its_slot_from_create_to_kill(control: Any, limit_of_5: str) -> None:
    def active() -> int:
        with get_client(sync_client=True) as prefect:
            return prefect.read_global_concurrency_limit_by_name(limit_of_5).active_slots

    @flow
    def life() -> int:
        with open_sandbox(concurrency_limit=limit_of_5) as sandbox:
            run_command(sandbox, "true")  # another task: the slot outlives the create task
            return active()

    assert life() == 1
    deadline = time.monotonic() + 20
    while active() != 0:
        assert time.monotonic() < deadline, "the slot was not given back after the kill"
        time.sleep(0.05)
