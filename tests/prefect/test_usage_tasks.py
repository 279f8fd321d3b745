"""Usage tasks: a sandbox's usage, and a flow run's usage found by the flow-run tag this integration sets."""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import SandboxUsage, SandboxUsageItem
from prefect_opencomputer.tasks import get_flow_run_usage, get_sandbox_usage, open_sandbox


async def test_a_flow_run_reads_the_usage_of_the_sandboxes_it_ran(
    credentials: OpenComputerCredentials, control: Any
) -> None:
    @flow
    async def two_sandboxes() -> tuple[list[str], list[SandboxUsageItem], SandboxUsage]:
        ids = []
        for _ in range(2):
            async with open_sandbox(memory_mb=1024, credentials=credentials) as sandbox:
                ids.append(sandbox.sandbox_id)
                await asyncio.sleep(1)
        run_usage = await get_flow_run_usage(credentials=credentials)
        one = await get_sandbox_usage(ids[0], credentials=credentials)
        return ids, run_usage, one

    ids, run_usage, one = await two_sandboxes()

    assert sorted(item.sandbox_id for item in run_usage) == sorted(ids)
    assert all(item.status == "stopped" and item.memory_gb_seconds >= 1 for item in run_usage)
    assert one.sandbox_id == ids[0]
    assert one.totals.memory_allocated_peak_mb == 1024
    assert one.totals.uptime_seconds >= 1
