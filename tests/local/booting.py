"""Booting sandboxes on a bare runtime (no HTTP), with limits fit for tests."""

from __future__ import annotations

from prefect_opencomputer.local.sandbox.cgroups import Limits
from prefect_opencomputer.local.sandbox.runtime import SandboxRuntime

LIMITS = Limits(memory_bytes=1024 * 1024 * 1024, max_processes=512, cpu_quota_cores=1.0)


async def start(runtime: SandboxRuntime, sandbox_id: str, *, network: bool = True) -> None:
    """Boot a sandbox over its existing layer, with the test limits."""
    await runtime.start(sandbox_id, template="base", network=network, limits=LIMITS)
