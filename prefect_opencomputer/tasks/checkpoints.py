"""Tasks for checkpoints: create (and wait until ready), list, restore, delete, and fork a new sandbox."""

from __future__ import annotations

from typing import Literal

from prefect import get_run_logger

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import (
    Checkpoint,
    CheckpointRestore,
    ConflictError,
    OpenComputerClient,
    RetentionPolicy,
    Sandbox,
)
from prefect_opencomputer.tasks import events, ownership, run_registry, run_report
from prefect_opencomputer.tasks.errors import PatchFailedError
from prefect_opencomputer.tasks.factory import opencomputer_task, resolve_credentials, service_client
from prefect_opencomputer.tasks.leakproof import (
    KILL_TIMEOUT,
    adopt_new_sandbox,
    create_or_find,
    done_or_recovered,
    finish_despite_cancellation,
    kill_ignoring_missing,
    record_checkpoint_deleted,
    removed_by_this_call,
    rollback_hook,
    slot_for_create,
    wait_out_full_quota,
)
from prefect_opencomputer.tasks.ownership import DEFAULT_IDLE_TIMEOUT
from prefect_opencomputer.tasks.references import (
    CheckpointRef,
    SandboxRef,
    checkpoint_id_of,
    checkpoint_owner_of,
    sandbox_id_of,
)
from prefect_opencomputer.tasks.retries import retry_if_replayable, retry_if_transient
from prefect_opencomputer.tasks.run_names import on_checkpoint, on_sandbox


async def _find_by_name(client: OpenComputerClient, sandbox_id: str, name: str) -> Checkpoint | None:
    return next((cp for cp in await client.checkpoints.list(sandbox_id) if cp.name == name), None)


async def _create_or_find_checkpoint(
    client: OpenComputerClient,
    sandbox_id: str,
    name: str,
    kind: Literal["full", "disk_only"],
    retention: RetentionPolicy | None,
) -> Checkpoint:
    """Create the checkpoint; if the answer leaves it unclear whether it was made, look it up by name.

    Names are unique per sandbox, so the one found is the one this request (or an earlier attempt of this
    task run) made: a 502 after the work, or a retry whose first attempt landed, ends with one checkpoint.
    """
    try:
        return await done_or_recovered(
            lambda: client.checkpoints.create(sandbox_id, name, kind=kind, retention=retention),
            lambda: _find_by_name(client, sandbox_id, name),
            lambda error, found: (
                f"Lost the answer to creating checkpoint {name!r} ({error}); it was made: {found.id}"
            ),
        )
    except ConflictError:
        existing = await _find_by_name(client, sandbox_id, name)
        if existing is None or not run_registry.is_retry_attempt():
            raise
        return existing


@opencomputer_task(
    "create_checkpoint", run_name=on_sandbox("checkpoint", "name"), retry_condition=retry_if_transient
)
async def create_checkpoint(
    sandbox: SandboxRef,
    name: str,
    *,
    credentials: OpenComputerCredentials | None = None,
    kind: Literal["full", "disk_only"] = "full",
    retention: RetentionPolicy | None = None,
    wait_timeout: float = 300.0,
) -> Checkpoint:
    """Checkpoint a running sandbox under `name` and return it once it is ready.

    A flow run that fails deletes the checkpoints it made (with `cleanup_hooks()`); the reaper deletes those
    of runs that died.

    Args:
        name: Unique per sandbox.
        kind: `full` (memory and disk on the hosted service: forks and restores resume running processes)
            or `disk_only` (disk only). The local server keeps the disk for both.
        retention: What the service deletes when the sandbox has too many checkpoints.
        wait_timeout: Seconds to wait for the checkpoint to be ready.

    Returns:
        The ready checkpoint.

    Raises:
        CheckpointFailedError: The service reports the checkpoint failed.

    Example:
        ```python
        checkpoint = create_checkpoint(sandbox, "prepared")
        ```
    """
    sandbox_id = sandbox_id_of(sandbox)
    async with service_client(credentials) as client:
        checkpoint = await _create_or_find_checkpoint(client, sandbox_id, name, kind, retention)
        run_registry.remember_checkpoint(sandbox_id, checkpoint.id)
        # Announced before the wait: a checkpoint that never gets ready still exists, and the reaper finds
        # what a dead run left through this event.
        events.emit_sandbox_event(
            events.CHECKPOINT_CREATED,
            sandbox_id,
            checkpoint_id=checkpoint.id,
            payload={
                "name": name,
                "kind": checkpoint.kind,
                "checkpoint_id": checkpoint.id,
                "flow_run_id": run_registry.current_flow_run_id(),
            },
        )
        checkpoint = await client.checkpoints.wait_ready(sandbox_id, checkpoint.id, timeout=wait_timeout)
    get_run_logger().info("Checkpoint %r (%s) of %s is ready", name, checkpoint.id, sandbox_id)
    run_report.record("checkpoint", sandbox_id, f"{name} ({checkpoint.id[:8]})", checkpoint.status)
    return checkpoint


@opencomputer_task(
    "list_checkpoints", run_name=on_sandbox("list-checkpoints"), retry_condition=retry_if_replayable
)
async def list_checkpoints(
    sandbox: SandboxRef, *, credentials: OpenComputerCredentials | None = None
) -> list[Checkpoint]:
    """The sandbox's checkpoints.

    Returns:
        Its checkpoints, newest first, whatever their status.

    Example:
        ```python
        names = [checkpoint.name for checkpoint in list_checkpoints(sandbox)]
        ```
    """
    async with service_client(credentials) as client:
        return await client.checkpoints.list(sandbox_id_of(sandbox))


@opencomputer_task(
    "restore_checkpoint", run_name=on_checkpoint("restore"), retry_condition=retry_if_transient
)
async def restore_checkpoint(
    checkpoint: CheckpointRef,
    *,
    sandbox: SandboxRef | None = None,
    credentials: OpenComputerCredentials | None = None,
) -> CheckpointRestore:
    """Revert a checkpoint's sandbox in place to it; later calls wait for the restore.

    Its files become the checkpoint's. Its processes resume from the checkpoint on the hosted service (a
    `full` checkpoint); on the local server they start fresh.

    Args:
        checkpoint: A ready checkpoint: its model (which names its sandbox), or its id with `sandbox`.
        sandbox: The sandbox it belongs to, as its id or its model; needed only with a checkpoint id.

    Returns:
        The restore, as the service acknowledged it.

    Example:
        ```python
        restore_checkpoint(checkpoint)
        ```
    """
    sandbox_id = checkpoint_owner_of(checkpoint, sandbox)
    async with service_client(credentials) as client:
        restore = await client.checkpoints.restore(sandbox_id, checkpoint_id_of(checkpoint))
    run_report.record("restore", sandbox_id, checkpoint_id_of(checkpoint)[:8], restore.status)
    return restore


@opencomputer_task(
    "delete_checkpoint", run_name=on_checkpoint("delete-checkpoint"), retry_condition=retry_if_replayable
)
async def delete_checkpoint(
    checkpoint: CheckpointRef,
    *,
    sandbox: SandboxRef | None = None,
    credentials: OpenComputerCredentials | None = None,
) -> bool:
    """Delete a checkpoint and its patches (idempotent).

    Args:
        checkpoint: The checkpoint: its model (which names its sandbox), or its id with `sandbox`.
        sandbox: The sandbox it belongs to, as its id or its model; needed only with a checkpoint id.

    Returns:
        True when this call deleted it, False when it was already gone.

    Example:
        ```python
        delete_checkpoint(checkpoint)
        ```
    """
    sandbox_id = checkpoint_owner_of(checkpoint, sandbox)
    checkpoint_id = checkpoint_id_of(checkpoint)
    async with service_client(credentials) as client:
        deleted = await removed_by_this_call(client.checkpoints.delete(sandbox_id, checkpoint_id))
    record_checkpoint_deleted(sandbox_id, checkpoint_id, "delete_checkpoint task", deleted)
    return deleted


@opencomputer_task(
    "fork_checkpoint",
    run_name=on_checkpoint("fork", numbered=True),
    retry_condition=retry_if_transient,
    on_rollback=rollback_hook,
)
async def fork_checkpoint(
    checkpoint: CheckpointRef,
    *,
    credentials: OpenComputerCredentials | None = None,
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT,
    envs: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    memory_mb: int | None = None,
    tags: dict[str, str] | None = None,
    check_patches: bool = True,
    concurrency_limit: str | None = None,
    concurrency_strict: bool = False,
) -> Sandbox:
    """Fork a new sandbox from a ready checkpoint; its patches run before this returns.

    The fork holds the checkpoint's files, envs and size. A fork of a `full` checkpoint on the hosted
    service also resumes the processes that were running, with their memory; on the local server (and
    from `disk_only`) it boots fresh over the disk: start again what must run (a patch can).

    The service starts forks persistent, so `idle_timeout` is set right after. Inside `with transaction():`
    the fork is killed when the transaction rolls back. Task runs are numbered (`fork[cp-…] #2`) so the
    forks of one checkpoint are told apart in the UI.

    Args:
        checkpoint: A ready checkpoint, as its id or its model.
        idle_timeout: Seconds of inactivity after which the service hibernates the fork.
        envs: Environment variables over the checkpoint's (these win).
        metadata: Stored with the fork.
        memory_mb: Memory tier (at least the checkpoint's).
        tags: Tags of your own, besides the ownership tags this task adds.
        check_patches: A patch that failed in the fork kills the fork and raises `PatchFailedError`;
            without it, see `Sandbox.patch_error`.
        concurrency_limit: A Prefect global concurrency limit (the service's running-sandbox quota): waits
            for one of its slots, held until the fork is killed; the service's own 429 is then waited
            out for up to 10 minutes.
        concurrency_strict: Raise `ConcurrencyLimitMissingError` when that limit does not exist.

    Returns:
        The running fork.

    Raises:
        PatchFailedError: A patch failed in the fork (with `check_patches`).
        ConcurrencyLimitMissingError: `concurrency_strict` and no such concurrency limit.

    Example:
        ```python
        fork = fork_checkpoint(checkpoint)
        ```
    """
    credentials = await resolve_credentials(credentials)
    checkpoint_id = checkpoint_id_of(checkpoint)
    source_sandbox_id = checkpoint.sandbox_id if isinstance(checkpoint, Checkpoint) else None
    async with (
        slot_for_create(concurrency_limit, strict=concurrency_strict) as slot,
        credentials.get_client() as client,
    ):
        fork = await wait_out_full_quota(
            lambda: finish_despite_cancellation(
                create_or_find(
                    client,
                    lambda marker: client.checkpoints.fork(
                        checkpoint_id,
                        envs={**(envs or {}), **marker},
                        metadata={**(metadata or {}), **ownership.ownership_tags()},
                        memory_mb=memory_mb,
                    ),
                ),
                timeout=600.0,
            ),
            patient=concurrency_limit is not None,
        )
        slot.bind(fork.sandbox_id)
        fork = await adopt_new_sandbox(
            client, credentials, fork, tags={**(tags or {}), **slot.tags}, idle_timeout=idle_timeout
        )
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
            run_report.record("fork", fork.sandbox_id, f"from {checkpoint_id[:8]}", "patch failed")
            run_report.record("kill", fork.sandbox_id, "patch failed", "killed")
            raise PatchFailedError(fork.sandbox_id, checkpoint_id, fork.patch_error)
    get_run_logger().info("Forked %s from checkpoint %s", fork.sandbox_id, checkpoint_id)
    run_report.record(
        "fork",
        fork.sandbox_id,
        f"from {checkpoint_id[:8]}",
        fork.status,
        cleanup=not ownership.is_retained(fork.tags),
        # A fork runs at its checkpoint's tier unless it asked for more.
        memory_mb=memory_mb or fork.memory_mb or run_registry.memory_of(source_sandbox_id),
    )
    events.emit_sandbox_event(
        events.SANDBOX_FORKED,
        fork.sandbox_id,
        checkpoint_id=checkpoint_id,
        source_sandbox_id=source_sandbox_id,
        payload={"checkpoint_id": checkpoint_id},
    )
    return fork


acreate_checkpoint = create_checkpoint.aio
alist_checkpoints = list_checkpoints.aio
arestore_checkpoint = restore_checkpoint.aio
adelete_checkpoint = delete_checkpoint.aio
afork_checkpoint = fork_checkpoint.aio
