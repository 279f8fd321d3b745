"""Tasks for snapshots: images built once under a name, that sandboxes then start from in seconds."""

from __future__ import annotations

from prefect import get_run_logger

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import ConflictError, Image, Snapshot
from prefect_opencomputer.tasks import run_report
from prefect_opencomputer.tasks.factory import opencomputer_task, service_client
from prefect_opencomputer.tasks.leakproof import removed_by_this_call
from prefect_opencomputer.tasks.output import build_log_handler
from prefect_opencomputer.tasks.retries import retry_if_replayable, retry_if_transient


@opencomputer_task("create_snapshot", run_name="snapshot[{name}]", retry_condition=retry_if_transient)
async def create_snapshot(
    name: str,
    image: Image,
    *,
    credentials: OpenComputerCredentials | None = None,
    exist_ok: bool = False,
) -> Snapshot:
    """Build an image (or reuse the service's cached build) and keep it as a named snapshot, ready to use.

    The build's output goes to the run log as it happens.

    Args:
        name: The snapshot's name, unique in the organisation.
        image: The declarative image to build.
        exist_ok: Return a snapshot already called `name` as it is (whatever image it was built from).

    Returns:
        The ready snapshot.

    Raises:
        BuildFailedError: The image did not build.

    Example:
        ```python
        create_snapshot("tools", Image.base().pip_install(["tomli-w"]))
        ```
    """
    logger = get_run_logger()
    async with service_client(credentials) as client:
        try:
            snapshot = await client.snapshots.create(name, image, on_build_log=build_log_handler(logger))
        except ConflictError:
            if not exist_ok:
                raise
            snapshot = await client.snapshots.wait_ready(name)
    logger.info("Snapshot %r is ready (image %s)", name, snapshot.content_hash[:12])
    run_report.record("snapshot", "-", name, snapshot.status)
    return snapshot


@opencomputer_task("list_snapshots", run_name="list-snapshots", retry_condition=retry_if_replayable)
async def list_snapshots(*, credentials: OpenComputerCredentials | None = None) -> list[Snapshot]:
    """The organisation's named snapshots.

    Returns:
        Every snapshot, whatever its status.

    Example:
        ```python
        names = [snapshot.name for snapshot in list_snapshots()]
        ```
    """
    async with service_client(credentials) as client:
        return await client.snapshots.list()


@opencomputer_task("get_snapshot", run_name="get-snapshot[{name}]", retry_condition=retry_if_replayable)
async def get_snapshot(name: str, *, credentials: OpenComputerCredentials | None = None) -> Snapshot:
    """The snapshot as the service reports it now (its status says whether sandboxes can start from it).

    Args:
        name: The snapshot's name.

    Returns:
        The snapshot.

    Raises:
        NotFoundError: There is no snapshot of that name.

    Example:
        ```python
        ready = get_snapshot("py-tools").status == "ready"
        ```
    """
    async with service_client(credentials) as client:
        return await client.snapshots.get(name)


@opencomputer_task("delete_snapshot", run_name="delete-snapshot[{name}]", retry_condition=retry_if_replayable)
async def delete_snapshot(name: str, *, credentials: OpenComputerCredentials | None = None) -> bool:
    """Forget a snapshot (sandboxes started from it keep running; idempotent).

    Args:
        name: The snapshot's name.

    Returns:
        True when this call deleted it, False when there was none.

    Example:
        ```python
        delete_snapshot("tools")
        ```
    """
    async with service_client(credentials) as client:
        return await removed_by_this_call(client.snapshots.delete(name))


acreate_snapshot = create_snapshot.aio
alist_snapshots = list_snapshots.aio
adelete_snapshot = delete_snapshot.aio
aget_snapshot = get_snapshot.aio
