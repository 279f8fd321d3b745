"""What an example flow tells about itself at its end: its report table, and the sandboxes it left."""

from __future__ import annotations

from prefect.runtime import flow_run

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.tasks import TAG_FLOW_RUN, alist_sandboxes, apublish_run_report


async def sandboxes_left_by_this_run(credentials: OpenComputerCredentials) -> int:
    """Sandboxes tagged with the current flow run that the service still lists (0 after a clean run)."""
    flow_run_id = flow_run.get_id()
    if flow_run_id is None:
        return 0
    return len(await alist_sandboxes({TAG_FLOW_RUN: flow_run_id}, credentials=credentials))


async def publish_report(key: str) -> None:
    """Publish the run's sandbox table; a failure to publish must not hide the flow's own outcome."""
    try:
        await apublish_run_report(key=key)
    except Exception as exc:
        from prefect import get_run_logger

        get_run_logger().warning("Could not publish the sandbox report: %s", exc)
