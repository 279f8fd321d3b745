"""Tasks for checkpoint patches: bash scripts that run, in order, in each sandbox forked from a checkpoint."""

from __future__ import annotations

from prefect import get_run_logger

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import CheckpointPatch
from prefect_opencomputer.tasks import run_report
from prefect_opencomputer.tasks.factory import opencomputer_task, service_client
from prefect_opencomputer.tasks.leakproof import removed_by_this_call
from prefect_opencomputer.tasks.references import CheckpointRef, checkpoint_id_of
from prefect_opencomputer.tasks.retries import retry_if_replayable, retry_if_transient
from prefect_opencomputer.tasks.run_names import on_checkpoint


@opencomputer_task(
    "create_checkpoint_patch",
    run_name=on_checkpoint("patch"),
    # A replayed create would append the script twice: only refused requests are retried.
    retry_condition=retry_if_transient,
)
async def create_checkpoint_patch(
    checkpoint: CheckpointRef,
    script: str,
    description: str = "",
    *,
    credentials: OpenComputerCredentials | None = None,
) -> CheckpointPatch:
    """Append a bash script to a ready checkpoint's patch chain; it runs as user `sandbox` in each later fork.

    Args:
        checkpoint: A ready checkpoint, as its id or its model.
        script: The bash script.
        description: Shown in the patch list and the run report.

    Returns:
        The patch, with its place in the chain (`sequence`).

    Example:
        ```python
        create_checkpoint_patch(checkpoint, "echo patched > ~/patched.txt", "mark forks")
        ```
    """
    checkpoint_id = checkpoint_id_of(checkpoint)
    async with service_client(credentials) as client:
        patch = await client.patches.create(checkpoint_id, script, description=description)
    get_run_logger().info("Patch %d (%s) added to checkpoint %s", patch.sequence, patch.id, checkpoint_id)
    sandbox_id = getattr(checkpoint, "sandbox_id", "") or "-"
    run_report.record(
        "patch", sandbox_id, description or f"patch {patch.sequence} of {checkpoint_id[:8]}", "added"
    )
    return patch


@opencomputer_task(
    "list_checkpoint_patches", run_name=on_checkpoint("list-patches"), retry_condition=retry_if_replayable
)
async def list_checkpoint_patches(
    checkpoint: CheckpointRef, *, credentials: OpenComputerCredentials | None = None
) -> list[CheckpointPatch]:
    """The checkpoint's patches.

    Returns:
        Its patches in the order they run.

    Example:
        ```python
        scripts = [patch.script for patch in list_checkpoint_patches(checkpoint)]
        ```
    """
    async with service_client(credentials) as client:
        return await client.patches.list(checkpoint_id_of(checkpoint))


@opencomputer_task(
    "delete_checkpoint_patch", run_name=on_checkpoint("delete-patch"), retry_condition=retry_if_replayable
)
async def delete_checkpoint_patch(
    checkpoint: CheckpointRef,
    patch: CheckpointPatch | str,
    *,
    credentials: OpenComputerCredentials | None = None,
) -> bool:
    """Remove a patch from the chain (idempotent).

    Args:
        patch: The patch, as its id or its model.

    Returns:
        True when this call removed it, False when it was already gone.

    Example:
        ```python
        delete_checkpoint_patch(checkpoint, patch)
        ```
    """
    patch_id = patch.id if isinstance(patch, CheckpointPatch) else patch
    async with service_client(credentials) as client:
        return await removed_by_this_call(client.patches.delete(checkpoint_id_of(checkpoint), patch_id))


acreate_checkpoint_patch = create_checkpoint_patch.aio
alist_checkpoint_patches = list_checkpoint_patches.aio
adelete_checkpoint_patch = delete_checkpoint_patch.aio
