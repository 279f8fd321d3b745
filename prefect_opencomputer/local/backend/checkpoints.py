"""Checkpoints, their patches, restore and fork.

A checkpoint is a clone of a sandbox's disk, taken with its filesystem frozen, in the background
(``processing`` until the clone is done: milliseconds, whatever the disk holds). Restore puts a
clone of it in place of a running sandbox's disk and reboots it; fork boots a new sandbox on a
clone of it and runs its patches, in sequence, before answering. Checkpoints outlive the sandbox
they were taken from: they are resources of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Literal

from prefect_opencomputer.local.backend import sizing
from prefect_opencomputer.local.backend.records import (
    CheckpointKind,
    CheckpointRecord,
    SandboxRecord,
    new_token,
    new_uuid,
    utc_now,
)
from prefect_opencomputer.local.backend.state import DuplicateName
from prefect_opencomputer.local.errors import BackendError, Failed, Invalid, NameTaken, NotFound

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.core import SandboxCore

logger = logging.getLogger(__name__)

LIMITS: Mapping[str, int] = {"full": 10, "disk_only": 100}
FORK_READY_WAIT_SECONDS = 30.0
PATCH_TIMEOUT_SECONDS = 300.0
_PATCH_ADVICE = (
    "delete the bad patch and retry (DELETE /snapshots/:name/patches/:id or "
    "DELETE /sandboxes/checkpoints/:id/patches/:id)"
)
RetentionMode = Literal["", "none", "delete_oldest"]


class _LayerReaders:
    """Who is copying out of each checkpoint layer, so deleting the layer waits for them."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def reading(self, checkpoint_id: str) -> AsyncIterator[None]:
        self._counts[checkpoint_id] = self._counts.get(checkpoint_id, 0) + 1
        try:
            yield
        finally:
            self._counts[checkpoint_id] -= 1
            if not self._counts[checkpoint_id]:
                del self._counts[checkpoint_id]
            async with self._changed:
                self._changed.notify_all()

    async def wait_unread(self, checkpoint_id: str) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: checkpoint_id not in self._counts)


class Checkpoints:
    """Checkpoint and patch behaviour over the sandboxes core."""

    def __init__(self, backend: SandboxCore) -> None:
        self._backend = backend
        self._copies: dict[str, asyncio.Task[None]] = {}
        self._readers = _LayerReaders()

    # -- server lifecycle --------------------------------------------------------------------

    async def recover(self) -> None:
        """A clone that was in flight when the server died never finished: mark it failed.

        Its data goes, and so does every partial clone (checkpoint, fork or restore) that a killed
        server left; nothing here fails the start. A ready checkpoint whose image is missing (one
        taken by a local server from before the disk store) is failed with the reason.
        """
        store = self._backend.store
        for checkpoint in store.checkpoints(status="processing"):
            _fail(checkpoint, "the local server stopped while the checkpoint was being taken")
            store.save_checkpoint(checkpoint)
            with contextlib.suppress(OSError):
                await self._backend.remove_checkpoint(checkpoint.id)
        for checkpoint in store.checkpoints(status="ready"):
            if not self._backend.checkpoint_exists(checkpoint.id):
                _fail(checkpoint, "its disk image is missing (taken by an older local server); take it again")
                store.save_checkpoint(checkpoint)

    async def finish_copies(self, timeout: float) -> None:
        """Wait (bounded) for copies in flight; what remains is failed by the next `recover`."""
        copies = list(self._copies.values())
        if copies:
            await asyncio.wait(copies, timeout=timeout)

    # -- checkpoints -------------------------------------------------------------------------

    async def create(
        self,
        sandbox_id: str,
        *,
        name: str,
        kind: str,
        promote_to_full: bool | None,
        retention_mode: str,
        retention_max_count: int,
    ) -> CheckpointRecord:
        """Register a checkpoint and start copying the sandbox's layer into it."""
        backend = self._backend
        record = backend.sandbox(sandbox_id)
        if record.status != "running":
            raise Invalid("sandbox must be running to create a checkpoint")
        if not name:
            raise Invalid("name is required")
        kind = kind or "full"
        if kind not in LIMITS:
            raise Invalid("kind must be full or disk_only")
        if promote_to_full and kind != "disk_only":
            raise Invalid("promoteToFull is only supported for disk_only checkpoints")
        if retention_mode not in ("", "none", "delete_oldest"):
            raise Invalid("unsupported checkpoint retention policy")
        limit = LIMITS[kind]
        lock = backend.lifecycle_lock(sandbox_id)
        # The lock passes to the copy task, which releases it when the copy ends: nothing can
        # hibernate, restore or kill the sandbox between this answer and its snapshot.
        await lock.acquire()
        try:
            record = backend.sandbox(sandbox_id)
            if record.status != "running":
                raise Invalid("sandbox must be running to create a checkpoint")
            if backend.store.checkpoint_name_taken(sandbox_id, name):
                raise NameTaken("checkpoint name already exists for this sandbox")
            same_kind = [cp for cp in backend.store.checkpoints(sandbox_id=sandbox_id) if cp.kind == kind]
            count = len(same_kind)
            if retention_mode == "delete_oldest":
                max_count = retention_max_count or limit
                if not 1 <= max_count <= limit:
                    raise Invalid(
                        f"retentionPolicy.maxCount must be between 1 and {limit} for {kind} checkpoints",
                    )
                if count >= max_count:
                    count -= await self._apply_retention(same_kind, count - max_count + 1, limit, kind)
            if count >= limit:
                raise Invalid(f"maximum {limit} {kind} checkpoints per sandbox")
            checkpoint = CheckpointRecord(
                id=new_uuid(),
                sandbox_id=sandbox_id,
                name=name,
                kind=kind_of(kind),
                status="processing",
                sandbox_config=record.config(),
                created_at=utc_now(),
            )
            try:
                backend.store.insert_checkpoint(checkpoint)
            except DuplicateName:
                raise NameTaken("checkpoint name already exists for this sandbox") from None
            resumed = backend.pause_data_plane(sandbox_id)
            self._copies[checkpoint.id] = asyncio.create_task(
                self._copy(checkpoint, lock, resumed), name=f"checkpoint-{checkpoint.id}"
            )
        except BaseException:
            lock.release()
            raise
        return checkpoint

    def for_sandbox(self, sandbox_id: str) -> list[CheckpointRecord]:
        """The sandbox's checkpoints, newest first (also after the sandbox was killed)."""
        self._backend.sandbox(sandbox_id)
        return self._backend.store.checkpoints(sandbox_id=sandbox_id)

    async def restore(self, sandbox_id: str, checkpoint_id: str) -> None:
        """Revert a running sandbox's disk to the checkpoint and reboot it; patches are not run."""
        backend = self._backend
        require_uuid(checkpoint_id, "checkpoint")
        record = backend.sandbox(sandbox_id)
        if record.status != "running":
            raise Invalid("sandbox must be running to restore a checkpoint")
        checkpoint = self._owned(sandbox_id, checkpoint_id)
        if checkpoint.status != "ready":
            raise Invalid(f"checkpoint is not ready (status: {checkpoint.status})")
        async with backend.lifecycle_lock(sandbox_id), self._readers.reading(checkpoint_id):
            record = backend.sandbox(sandbox_id)
            if record.status != "running":
                raise Invalid("sandbox must be running to restore a checkpoint")
            if backend.store.checkpoint(checkpoint_id) is None:
                raise NotFound("checkpoint not found")
            await backend.stop_processes(record, "running")
            try:
                await backend.restore_layer(checkpoint_id, sandbox_id)
            except Exception as error:
                await backend.boot(record)  # on the old disk, which a failed clone leaves in place
                raise Failed(f"restore failed: {error}") from error
            await backend.boot(record)

    async def delete(self, sandbox_id: str, checkpoint_id: str) -> None:
        require_uuid(checkpoint_id, "checkpoint")
        checkpoint = self._owned(sandbox_id, checkpoint_id)
        await self._remove(checkpoint)

    async def fork(
        self,
        checkpoint_id: str,
        *,
        envs: Mapping[str, str],
        metadata: Mapping[str, str],
        memory_mb: int,
        secret_store: str,
    ) -> SandboxRecord:
        """Boot a new sandbox from the checkpoint and run its patches before answering.

        Like the service, a fork is persistent (idle timeout 0): clients set a timeout after.
        """
        backend = self._backend
        require_uuid(checkpoint_id, "checkpoint")
        checkpoint = await self._ready_for_fork(checkpoint_id)
        if secret_store:
            raise Invalid(f"secret store not found: {secret_store}")
        config = checkpoint.sandbox_config
        base_memory = _int(config.get("memoryMB"), sizing.DEFAULT_MEMORY_MB)
        record = SandboxRecord(
            id=backend.admit_sandbox(),
            status="pending",
            template=str(config.get("templateID") or sizing.DEFAULT_TEMPLATE),
            timeout=0,
            cpu_count=_int(config.get("cpuCount"), sizing.DEFAULT_CPU_COUNT),
            memory_mb=sizing.clamp_fork_memory(memory_mb, base_memory),
            disk_mb=_int(config.get("diskMB"), sizing.MIN_DISK_MB),
            token=new_token(),
            started_at=utc_now(),
            envs={**_str_map(config.get("envs")), **envs},
            metadata={**_str_map(config.get("metadata")), **metadata},
            based_on_checkpoint_id=checkpoint.id,
            network_enabled=config.get("networkEnabled") is not False,
        )
        try:
            async with self._readers.reading(checkpoint.id):
                if backend.store.checkpoint(checkpoint.id) is None:
                    raise NotFound("checkpoint not found")
                await backend.launch(record, from_checkpoint=checkpoint.id)
        except Exception as error:
            if isinstance(error, BackendError):
                raise
            raise Failed(f"fork from checkpoint: {error}") from error
        await self._apply_patches(record, checkpoint.id)
        return record

    # -- internals ---------------------------------------------------------------------------

    def get(self, checkpoint_id: str) -> CheckpointRecord:
        """The checkpoint, whatever its status; 404 when this server never had it."""
        checkpoint = self._backend.store.checkpoint(checkpoint_id)
        if checkpoint is None:
            raise NotFound("checkpoint not found")
        return checkpoint

    def _owned(self, sandbox_id: str, checkpoint_id: str) -> CheckpointRecord:
        checkpoint = self.get(checkpoint_id)
        if checkpoint.sandbox_id != sandbox_id:
            raise Invalid("checkpoint does not belong to this sandbox")
        return checkpoint

    async def _copy(self, checkpoint: CheckpointRecord, lock: asyncio.Lock, resumed: asyncio.Event) -> None:
        backend = self._backend
        try:
            size = await backend.take_checkpoint(checkpoint.sandbox_id, checkpoint.id)
        except Exception as error:
            logger.warning("checkpoint %s failed: %s", checkpoint.id, error)
            current = backend.store.checkpoint(checkpoint.id)
            if current is not None:
                _fail(current, str(error) or type(error).__name__)
                backend.store.save_checkpoint(current)
            with contextlib.suppress(Exception):
                await backend.remove_checkpoint(checkpoint.id)
        else:
            current = backend.store.checkpoint(checkpoint.id)
            if current is None:  # deleted while it was being copied
                await backend.remove_checkpoint(checkpoint.id)
            else:
                current.status = "ready"
                current.size_bytes = size
                backend.store.save_checkpoint(current)
        finally:
            backend.resume_data_plane(checkpoint.sandbox_id, resumed)
            lock.release()
            self._copies.pop(checkpoint.id, None)

    async def _apply_retention(
        self, same_kind: list[CheckpointRecord], needed: int, limit: int, kind: str
    ) -> int:
        """Delete the ``needed`` oldest deletable checkpoints; returns how many went."""
        store = self._backend.store
        candidates = [
            cp
            for cp in reversed(same_kind)
            if not store.has_patches(cp.id) and not store.is_fork_source(cp.id)
        ][:needed]
        if len(candidates) < needed:
            raise Invalid(
                f"maximum {limit} {kind} checkpoints per sandbox; no eligible checkpoint can be "
                "deleted by retention policy",
            )
        for checkpoint in candidates:
            await self._remove(checkpoint)
        return len(candidates)

    async def _remove(self, checkpoint: CheckpointRecord) -> None:
        """Forget the checkpoint (and its patches) now; drop its layer once nobody reads it."""
        copy = self._copies.get(checkpoint.id)
        self._backend.store.delete_checkpoint(checkpoint.id)
        if copy is not None:
            # The copy task removes the layer itself when it finds the record gone.
            return
        await self._readers.wait_unread(checkpoint.id)
        await self._backend.remove_checkpoint(checkpoint.id)

    async def _ready_for_fork(self, checkpoint_id: str) -> CheckpointRecord:
        """The checkpoint once its copy is done (waiting up to 30 s); 400 when it is not usable."""
        store = self._backend.store
        checkpoint = store.checkpoint(checkpoint_id)
        if checkpoint is None:
            raise NotFound("checkpoint not found")
        if checkpoint.status == "processing":
            copy = self._copies.get(checkpoint_id)
            if copy is not None:
                await asyncio.wait({copy}, timeout=FORK_READY_WAIT_SECONDS)
            checkpoint = store.checkpoint(checkpoint_id)
            if checkpoint is None:
                raise NotFound("checkpoint not found")
            if checkpoint.status == "processing":
                raise Invalid(
                    f"checkpoint is not ready after {FORK_READY_WAIT_SECONDS:.0f}s "
                    f"(status: {checkpoint.status})",
                )
        if checkpoint.status == "failed":
            raise Invalid("checkpoint failed")
        return checkpoint

    async def _apply_patches(self, record: SandboxRecord, checkpoint_id: str) -> None:
        """Run pending patches in sequence as the sandbox user; the first failure stops the chain."""
        backend = self._backend
        patches = backend.store.patches(checkpoint_id, after_sequence=record.last_patch_sequence)
        if not patches:
            return
        record.patch_error = None
        for patch in patches:
            failure: str | None
            try:
                result = await backend.run(
                    record.id,
                    ["bash", "-c", patch.script],
                    env=record.envs,
                    timeout=PATCH_TIMEOUT_SECONDS,
                )
            except Exception as error:
                failure = f"exec failed: {error}"
            else:
                stderr = result.stderr.decode(errors="replace")
                failure = (
                    None if result.exit_code == 0 else f"patch exited with code {result.exit_code}: {stderr}"
                )
            if failure is not None:
                record.patch_error = f"patch seq {patch.sequence} failed: {failure} — {_PATCH_ADVICE}"
                backend.store.save_sandbox(record)
                logger.info("sandbox %s: %s", record.id, record.patch_error)
                return
            record.last_patch_sequence = patch.sequence
            backend.store.save_sandbox(record)
        record.patch_error = None
        backend.store.save_sandbox(record)


def _fail(checkpoint: CheckpointRecord, reason: str) -> None:
    checkpoint.status = "failed"
    checkpoint.error_msg = reason
    checkpoint.failed_at = utc_now()


def kind_of(kind: str) -> CheckpointKind:
    return "disk_only" if kind == "disk_only" else "full"


def require_uuid(value: str, what: str) -> None:
    """400 ``invalid <what> ID`` unless ``value`` is a UUID, as the service checks ids first."""
    try:
        uuid.UUID(value)
    except ValueError:
        raise Invalid(f"invalid {what} ID") from None


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and value > 0 else default


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}
