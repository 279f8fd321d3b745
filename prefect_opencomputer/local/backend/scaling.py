"""A running sandbox's size and restarts: scale, autoscale settings, the scaling lock, reboot.

As the control plane: ``scale`` moves the sandbox to another memory tier (its vCPUs follow the
tier) while it runs, and turns autoscale off; the lock refuses both with 403 ``scaling_locked``.
Autoscale settings are kept and answered, but the local server has no autoscaler that acts on
them, and no plans, so no size is refused with 402. Reboot and power cycle both start the
sandbox's processes again over its kept disk.
"""

from __future__ import annotations

import dataclasses

from prefect_opencomputer.local.backend import sizing
from prefect_opencomputer.local.backend.core import SandboxCore, sandbox_limits
from prefect_opencomputer.local.backend.records import SandboxRecord, ScalingRecord
from prefect_opencomputer.local.errors import Conflict, Failed, Forbidden, Invalid
from prefect_opencomputer.local.sandbox.cgroups import CgroupError, MemoryInUse

LOCKED_SCALE = "scaling is locked on this sandbox — unlock via PUT /scaling-lock to allow size changes"
LOCKED_AUTOSCALE = "scaling is locked on this sandbox — unlock via PUT /scaling-lock to enable autoscale"


class Scaling:
    """Size changes and restarts over the sandboxes core."""

    def __init__(self, sandboxes: SandboxCore) -> None:
        self._sandboxes = sandboxes

    def settings(self, sandbox_id: str) -> ScalingRecord:
        """Its autoscale settings and lock; 404 for an unknown sandbox."""
        self._sandboxes.sandbox(sandbox_id)
        return self._sandboxes.store.scaling(sandbox_id)

    def set_autoscale(
        self, sandbox_id: str, enabled: bool, min_memory_mb: int, max_memory_mb: int
    ) -> ScalingRecord:
        scaling = self.settings(sandbox_id)
        if enabled:
            if scaling.locked:
                raise Forbidden(LOCKED_AUTOSCALE, code="scaling_locked")
            _check_tier("minMemoryMB", min_memory_mb)
            _check_tier("maxMemoryMB", max_memory_mb)
            if min_memory_mb > max_memory_mb:
                raise Invalid("minMemoryMB must be ≤ maxMemoryMB")
        updated = dataclasses.replace(
            scaling, autoscale_enabled=enabled, min_memory_mb=min_memory_mb, max_memory_mb=max_memory_mb
        )
        self._sandboxes.store.save_scaling(updated)
        return updated

    def set_lock(self, sandbox_id: str, locked: bool) -> ScalingRecord:
        """Locking also turns autoscale off, as on the service."""
        scaling = dataclasses.replace(self.settings(sandbox_id), locked=locked)
        if locked:
            scaling = dataclasses.replace(scaling, autoscale_enabled=False, min_memory_mb=0, max_memory_mb=0)
        self._sandboxes.store.save_scaling(scaling)
        return scaling

    async def scale(self, sandbox_id: str, memory_mb: int) -> tuple[SandboxRecord, bool]:
        """Resize the running sandbox to ``memory_mb``'s tier; returns it and whether autoscale was on.

        Checked in the control plane's order: the size, the lock, then the sandbox (404, 400 when
        not running). 409 ``oom_floor`` when its processes hold more than the new size.
        """
        if memory_mb <= 0:
            raise Invalid("memoryMB is required and must be positive")
        cpu_count, _ = sizing.resolve_tier(0, memory_mb)
        store = self._sandboxes.store
        known = store.sandbox(sandbox_id) is not None
        scaling = store.scaling(sandbox_id)
        if scaling.locked:
            raise Forbidden(LOCKED_SCALE, code="scaling_locked")
        if known:
            # A manual size wins over autoscale, whatever happens next.
            store.save_scaling(
                dataclasses.replace(scaling, autoscale_enabled=False, min_memory_mb=0, max_memory_mb=0)
            )
        self._sandboxes.sandbox(sandbox_id)
        async with self._sandboxes.lifecycle_lock(sandbox_id):
            record = self._sandboxes.sandbox(sandbox_id)
            if record.status != "running":
                raise Invalid("sandbox is not running")
            resized = dataclasses.replace(record, memory_mb=memory_mb, cpu_count=cpu_count)
            try:
                await self._sandboxes.resize(sandbox_id, sandbox_limits(resized))
            except MemoryInUse as error:
                raise Conflict(
                    "memory limit below guest working set — would OOM-kill processes",
                    code="oom_floor",
                    details=str(error),
                ) from None
            except CgroupError as error:
                raise Failed(f"set limits failed: {error}") from None
            record.memory_mb, record.cpu_count = memory_mb, cpu_count
            store.save_sandbox(record)
        return record, scaling.autoscale_enabled

    async def restart(self, sandbox_id: str, action: str) -> None:
        """Stop every process of the sandbox and boot it again over its disk (``reboot``, ``power-cycle``).

        Its exec sessions end with their processes; a hibernated sandbox comes back running.
        """
        self._sandboxes.sandbox(sandbox_id)
        async with self._sandboxes.lifecycle_lock(sandbox_id):
            record = self._sandboxes.sandbox(sandbox_id)
            if record.status not in ("running", "hibernated"):
                raise Failed(f"{action} failed: sandbox {sandbox_id} is not running")
            # Hibernated until it is up again: a failed boot leaves it to wake on the next call.
            await self._sandboxes.stop_processes(record, "hibernated")
            try:
                await self._sandboxes.boot(record)
            except Exception as error:
                raise Failed(f"{action} failed: {error}") from error


def _check_tier(field: str, memory_mb: int) -> None:
    """The service's tier check, where 0 means "not given"."""
    if memory_mb == 0:
        return
    try:
        sizing.resolve_tier(0, memory_mb)
    except Invalid as error:
        raise Invalid(f"{field}: {error.message}") from None
