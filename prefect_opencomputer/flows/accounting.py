"""What an example flow tells about itself at its end: its report table, and the sandboxes it left."""

from __future__ import annotations

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.tasks import list_sandboxes, publish_run_report
from prefect_opencomputer.tasks.ownership import TAG_FLOW_RUN, current_flow_run_id
from prefect_opencomputer.tasks.run_logger import run_logger


async def sandboxes_left_by_this_run(credentials: OpenComputerCredentials) -> int:
    """Sandboxes tagged with the current flow run that the service still lists (0 after a clean run)."""
    flow_run_id = current_flow_run_id()
    if flow_run_id is None:
        return 0
    return len(await list_sandboxes(credentials, tags={TAG_FLOW_RUN: flow_run_id}))


async def publish_report(key: str) -> None:
    """Publish the run's sandbox table; a failure to publish must not hide the flow's own outcome."""
    try:
        await publish_run_report(key=key)
    except Exception as exc:
        run_logger().warning("Could not publish the sandbox report: %s", exc)
