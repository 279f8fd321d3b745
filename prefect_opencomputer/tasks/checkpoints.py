"""Tasks for checkpoints: create (and wait until ready), list, restore, delete, and fork a new sandbox."""

from __future__ import annotations

from typing import Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import (
    Checkpoint,
    CheckpointRestore,
    ConflictError,
    NotFoundError,
    RetentionPolicy,
    Sandbox,
)
from prefect_opencomputer.tasks import events, report
from prefect_opencomputer.tasks.errors import PatchFailedError
from prefect_opencomputer.tasks.lost_creates import create_or_find
from prefect_opencomputer.tasks.naming import TASK_TAG, on_checkpoint, on_sandbox
from prefect_opencomputer.tasks.ownership import DEFAULT_IDLE_TIMEOUT, is_retained, ownership_tags
from prefect_opencomputer.tasks.references import (
    CheckpointRef,
    SandboxRef,
    checkpoint_id_of,
    sandbox_id_of,
)
from prefect_opencomputer.tasks.retries import RETRY_DELAYS, retry_if_replayable, retry_if_transient
from prefect_opencomputer.tasks.sandboxes import (
    KILL_TIMEOUT,
    adopt_new_sandbox,
    kill_ignoring_missing,
    rollback_hook,
)
from prefect_opencomputer.tasks.shielding import finish_despite_cancellation


def _is_retry() -> bool:
    context = TaskRunContext.get()
    return context is not None and context.task_run.run_count > 1


@task(
    name="create_checkpoint",
    task_run_name=on_sandbox("checkpoint", "name"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_transient,
)
async def create_checkpoint(
    credentials: OpenComputerCredentials,
    sandbox: SandboxRef,
    name: str,
    *,
    kind: Literal["full", "disk_only"] = "full",
    retention: RetentionPolicy | None = None,
    wait_timeout: float = 300.0,
) -> Checkpoint:
    """Checkpoint a running sandbox under `name` (unique per sandbox) and return it once it is ready.

    Raises `CheckpointFailedError` when the service reports the checkpoint failed.
    """
    sandbox_id = sandbox_id_of(sandbox)
    async with credentials.get_client() as client:
        try:
            checkpoint = await client.checkpoints.create(sandbox_id, name, kind=kind, retention=retention)
        except ConflictError:
            # On a retry, a name conflict means an earlier attempt created it: carry on with that one.
            existing = next((cp for cp in await client.checkpoints.list(sandbox_id) if cp.name == name), None)
            if existing is None or not _is_retry():
                raise
            checkpoint = existing
        checkpoint = await client.checkpoints.wait_ready(sandbox_id, checkpoint.id, timeout=wait_timeout)
    get_run_logger().info("Checkpoint %r (%s) of %s is ready", name, checkpoint.id, sandbox_id)
    report.record("checkpoint", sandbox_id, f"{name} ({checkpoint.id[:8]})", checkpoint.status)
    events.emit_sandbox_event(
        events.CHECKPOINT_CREATED,
        sandbox_id,
        checkpoint_id=checkpoint.id,
        payload={"name": name, "kind": checkpoint.kind, "checkpoint_id": checkpoint.id},
    )
    return checkpoint


@task(
    name="list_checkpoints",
    task_run_name=on_sandbox("list-checkpoints"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def list_checkpoints(credentials: OpenComputerCredentials, sandbox: SandboxRef) -> list[Checkpoint]:
    """The sandbox's checkpoints, newest first, whatever their status."""
    async with credentials.get_client() as client:
        return await client.checkpoints.list(sandbox_id_of(sandbox))


@task(
    name="restore_checkpoint",
    task_run_name=on_sandbox("restore"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_transient,
)
async def restore_checkpoint(
    credentials: OpenComputerCredentials, sandbox: SandboxRef, checkpoint: CheckpointRef
) -> CheckpointRestore:
    """Revert the sandbox in place to a ready checkpoint of its own; later calls wait for the restore."""
    sandbox_id = sandbox_id_of(sandbox)
    async with credentials.get_client() as client:
        restore = await client.checkpoints.restore(sandbox_id, checkpoint_id_of(checkpoint))
    report.record("restore", sandbox_id, checkpoint_id_of(checkpoint)[:8], restore.status)
    return restore


@task(
    name="delete_checkpoint",
    task_run_name=on_sandbox("delete-checkpoint"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def delete_checkpoint(
    credentials: OpenComputerCredentials, sandbox: SandboxRef, checkpoint: CheckpointRef
) -> bool:
    """Delete a checkpoint and its patches; False when it was already gone."""
    sandbox_id = sandbox_id_of(sandbox)
    async with credentials.get_client() as client:
        try:
            await client.checkpoints.delete(sandbox_id, checkpoint_id_of(checkpoint))
        except NotFoundError:
            return False
    report.record("delete-checkpoint", sandbox_id, checkpoint_id_of(checkpoint)[:8], "deleted")
    return True


@task(
    name="create_sandbox_from_checkpoint",
    task_run_name=on_checkpoint("fork"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_transient,
)
async def create_sandbox_from_checkpoint(
    credentials: OpenComputerCredentials,
    checkpoint: CheckpointRef,
    *,
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT,
    envs: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    memory_mb: int | None = None,
    tags: dict[str, str] | None = None,
    check_patches: bool = True,
) -> Sandbox:
    """Fork a new sandbox from a ready checkpoint; its patches run before this returns.

    The service starts forks persistent, so `idle_timeout` is set right after. With `check_patches`, a
    patch that failed in the fork kills the fork and raises `PatchFailedError`; without it, see
    `Sandbox.patch_error`. Inside `with transaction():` the fork is killed when the transaction rolls back.
    """
    checkpoint_id = checkpoint_id_of(checkpoint)
    source_sandbox_id = checkpoint.sandbox_id if isinstance(checkpoint, Checkpoint) else None
    async with credentials.get_client() as client:
        fork = await finish_despite_cancellation(
            create_or_find(
                client,
                lambda: client.checkpoints.fork(
                    checkpoint_id,
                    envs=envs,
                    metadata={**(metadata or {}), **ownership_tags()},
                    memory_mb=memory_mb,
                ),
            ),
            timeout=600.0,
        )
        fork = await adopt_new_sandbox(client, credentials, fork, tags=tags, idle_timeout=idle_timeout)
        # The fork answer does not say whether patches applied; the sandbox's state does.
        try:
            state = await client.sandboxes.get(fork.sandbox_id)
        except BaseException:
            await finish_despite_cancellation(
                kill_ignoring_missing(client, fork.sandbox_id), timeout=KILL_TIMEOUT
            )
            raise
        fork = fork.model_copy(update={"patch_error": state.patch_error, "status": state.status})
        if check_patches and fork.patch_error:
            await finish_despite_cancellation(
                kill_ignoring_missing(client, fork.sandbox_id), timeout=KILL_TIMEOUT
            )
            report.record("fork", fork.sandbox_id, f"from {checkpoint_id[:8]}", "patch failed")
            report.record("kill", fork.sandbox_id, "patch failed", "killed")
            raise PatchFailedError(fork.sandbox_id, checkpoint_id, fork.patch_error)
    get_run_logger().info("Forked %s from checkpoint %s", fork.sandbox_id, checkpoint_id)
    report.record(
        "fork", fork.sandbox_id, f"from {checkpoint_id[:8]}", fork.status, cleanup=not is_retained(fork.tags)
    )
    events.emit_sandbox_event(
        events.SANDBOX_FORKED,
        fork.sandbox_id,
        checkpoint_id=checkpoint_id,
        source_sandbox_id=source_sandbox_id,
        payload={"checkpoint_id": checkpoint_id},
    )
    return fork


create_sandbox_from_checkpoint.on_rollback(rollback_hook)
