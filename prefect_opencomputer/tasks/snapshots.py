"""Tasks for snapshots: images built once under a name, that sandboxes then start from in seconds."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import ConflictError, Image, NotFoundError, Snapshot
from prefect_opencomputer.tasks import report
from prefect_opencomputer.tasks.build_logs import build_log_handler
from prefect_opencomputer.tasks.naming import TASK_TAG
from prefect_opencomputer.tasks.retries import RETRY_DELAYS, retry_if_replayable, retry_if_transient


@task(
    name="create_snapshot",
    task_run_name="snapshot[{name}]",
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_transient,
)
async def create_snapshot(
    credentials: OpenComputerCredentials, name: str, image: Image, *, exist_ok: bool = False
) -> Snapshot:
    """Build `image` (or reuse the service's cached build) and keep it as snapshot `name`, ready to use.

    The build's output goes to the run log as it happens; a failed build raises `BuildFailedError`. With
    `exist_ok`, a snapshot already called `name` is returned as it is (whatever image it was built from).
    """
    logger = get_run_logger()
    async with credentials.get_client() as client:
        try:
            snapshot = await client.snapshots.create(name, image, on_build_log=build_log_handler(logger))
        except ConflictError:
            if not exist_ok:
                raise
            snapshot = await client.snapshots.wait_ready(name)
    logger.info("Snapshot %r is ready (image %s)", name, snapshot.content_hash[:12])
    report.record("snapshot", "-", name, snapshot.status)
    return snapshot


@task(
    name="list_snapshots",
    task_run_name="list-snapshots",
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def list_snapshots(credentials: OpenComputerCredentials) -> list[Snapshot]:
    """The organisation's named snapshots, whatever their status."""
    async with credentials.get_client() as client:
        return await client.snapshots.list()


@task(
    name="delete_snapshot",
    task_run_name="delete-snapshot[{name}]",
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def delete_snapshot(credentials: OpenComputerCredentials, name: str) -> bool:
    """Forget snapshot `name` (sandboxes started from it keep running); False when there was none."""
    async with credentials.get_client() as client:
        try:
            await client.snapshots.delete(name)
        except NotFoundError:
            return False
    return True
