"""Tasks for usage: what a sandbox, or every sandbox of a flow run, consumed as the service meters it."""

from __future__ import annotations

from datetime import datetime

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import SandboxUsage, SandboxUsageItem
from prefect_opencomputer.tasks import ownership, run_registry
from prefect_opencomputer.tasks.factory import opencomputer_task, service_client
from prefect_opencomputer.tasks.references import SandboxRef, sandbox_id_of
from prefect_opencomputer.tasks.retries import retry_if_replayable
from prefect_opencomputer.tasks.run_names import on_sandbox


@opencomputer_task("get_sandbox_usage", run_name=on_sandbox("usage"), retry_condition=retry_if_replayable)
async def get_sandbox_usage(
    sandbox: SandboxRef,
    *,
    credentials: OpenComputerCredentials | None = None,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
) -> SandboxUsage:
    """A sandbox's memory usage in 1-minute points, killed sandboxes included.

    Args:
        start: Start of the window (aware datetime, ISO date or RFC3339); default: an hour ago.
        end: End of the window; default: now. At most 30 days after `start`.

    Returns:
        Its points and totals: allocated and used memory GiB-seconds, uptime, peaks.

    Example:
        ```python
        usage = get_sandbox_usage(sandbox)
        print(usage.totals.memory_allocated_gb_seconds)
        ```
    """
    async with service_client(credentials) as client:
        return await client.usage.for_sandbox(sandbox_id_of(sandbox), from_=start, to=end)


@opencomputer_task("get_flow_run_usage", run_name="flow-run-usage", retry_condition=retry_if_replayable)
async def get_flow_run_usage(
    flow_run_id: str | None = None,
    *,
    credentials: OpenComputerCredentials | None = None,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
) -> list[SandboxUsageItem]:
    """The usage of every sandbox a flow run created, found by the flow-run tag this integration sets.

    Args:
        flow_run_id: The flow run; default: the current one.
        start: Start of the window; default: 30 days ago (at most 90 days before `end`).
        end: End of the window; default: now.

    Returns:
        One item per sandbox, largest first: memory and disk-overage GiB-seconds, status, tags.

    Example:
        ```python
        for item in get_flow_run_usage():
            print(item.sandbox_id, item.memory_gb_seconds)
        ```
    """
    flow_run_id = flow_run_id or run_registry.current_flow_run_id()
    if flow_run_id is None:
        raise ValueError("get_flow_run_usage needs a flow_run_id outside a flow run")
    async with service_client(credentials) as client:
        return await client.usage.all_by_sandbox(
            from_=start, to=end, tags={ownership.TAG_FLOW_RUN: flow_run_id}
        )


aget_sandbox_usage = get_sandbox_usage.aio
aget_flow_run_usage = get_flow_run_usage.aio
