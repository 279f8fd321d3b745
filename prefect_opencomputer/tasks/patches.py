"""Tasks for checkpoint patches: bash scripts that run, in order, in each sandbox forked from a checkpoint."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import CheckpointPatch, NotFoundError
from prefect_opencomputer.tasks import report
from prefect_opencomputer.tasks.naming import TASK_TAG, on_checkpoint
from prefect_opencomputer.tasks.references import CheckpointRef, checkpoint_id_of
from prefect_opencomputer.tasks.retries import RETRY_DELAYS, retry_if_replayable, retry_if_transient


@task(
    name="create_checkpoint_patch",
    task_run_name=on_checkpoint("patch"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    # A replayed create would append the script twice: only refused requests are retried.
    retry_condition_fn=retry_if_transient,
)
async def create_checkpoint_patch(
    credentials: OpenComputerCredentials, checkpoint: CheckpointRef, script: str, description: str = ""
) -> CheckpointPatch:
    """Append `script` to a ready checkpoint's patch chain; it runs as user `sandbox` in each later fork."""
    checkpoint_id = checkpoint_id_of(checkpoint)
    async with credentials.get_client() as client:
        patch = await client.patches.create(checkpoint_id, script, description=description)
    get_run_logger().info("Patch %d (%s) added to checkpoint %s", patch.sequence, patch.id, checkpoint_id)
    sandbox_id = getattr(checkpoint, "sandbox_id", "") or "-"
    report.record(
        "patch", sandbox_id, description or f"patch {patch.sequence} of {checkpoint_id[:8]}", "added"
    )
    return patch


@task(
    name="list_checkpoint_patches",
    task_run_name=on_checkpoint("list-patches"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def list_checkpoint_patches(
    credentials: OpenComputerCredentials, checkpoint: CheckpointRef
) -> list[CheckpointPatch]:
    """The checkpoint's patches in the order they run."""
    async with credentials.get_client() as client:
        return await client.patches.list(checkpoint_id_of(checkpoint))


@task(
    name="delete_checkpoint_patch",
    task_run_name=on_checkpoint("delete-patch"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def delete_checkpoint_patch(
    credentials: OpenComputerCredentials, checkpoint: CheckpointRef, patch: CheckpointPatch | str
) -> bool:
    """Remove a patch from the chain; False when it was already gone."""
    patch_id = patch.id if isinstance(patch, CheckpointPatch) else patch
    async with credentials.get_client() as client:
        try:
            await client.patches.delete(checkpoint_id_of(checkpoint), patch_id)
        except NotFoundError:
            return False
    return True
