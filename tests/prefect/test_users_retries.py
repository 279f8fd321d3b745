"""A user's own `retries=` covers the service's "not now" answers: the sandbox quota (429) and 503."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from prefect_opencomputer.client import RateLimitedError
from prefect_opencomputer.tasks import create_sandbox, kill_sandbox


async def _has_waited_to_retry(task_run_id: Any) -> bool:
    async with get_client() as prefect:
        states = await prefect.read_task_run_states(task_run_id)
    return any(state.name == "AwaitingRetry" for state in states)


async def test_a_users_retries_wait_for_a_free_slot_under_the_sandbox_quota(control: Any) -> None:
    # The org's quota, as the hosted service enforces it: one running sandbox, then 429 without Retry-After.
    (await control.http.put("/_test/limits", json={"maxRunningSandboxes": 1})).raise_for_status()

    @flow
    async def over_quota() -> tuple[str, int]:
        holder = await create_sandbox()  # takes the only slot
        future = create_sandbox.with_options(retries=3, retry_delay_seconds=2).submit()
        # Free the slot once the quota has refused the create and Prefect scheduled its retry.
        while not future.state.is_final() and not await _has_waited_to_retry(future.task_run_id):
            await asyncio.sleep(0.2)
        await kill_sandbox(holder)
        created = await asyncio.to_thread(future.result)
        await kill_sandbox(created)
        async with get_client() as prefect:
            task_run = await prefect.read_task_run(future.task_run_id)
        return created.sandbox_id, task_run.run_count

    sandbox_id, attempts = await over_quota()

    assert sandbox_id.startswith("sb-") and attempts >= 2
    assert await control.live_sandboxes() == 0


async def test_over_the_quota_without_retries_fails_at_once_with_the_services_answer(control: Any) -> None:
    (await control.http.put("/_test/limits", json={"maxRunningSandboxes": 1})).raise_for_status()

    @flow
    async def over_quota() -> None:
        holder = await create_sandbox()
        try:
            await create_sandbox()
        finally:
            await kill_sandbox(holder)

    state = await over_quota(return_state=True)

    assert state.is_failed()
    with pytest.raises(RateLimitedError, match="limit"):
        await state.aresult()
