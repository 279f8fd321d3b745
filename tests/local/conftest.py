"""Fixtures for the local server's own tests: a sandbox runtime without HTTP."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from opencomputer import Sandbox

from prefect_opencomputer.local import LocalServer
from prefect_opencomputer.local.sandbox import rootfs
from prefect_opencomputer.local.sandbox.cgroups import CgroupHost
from prefect_opencomputer.local.sandbox.egress import registry_exceptions
from prefect_opencomputer.local.sandbox.factory import template_root
from prefect_opencomputer.local.sandbox.runtime import SandboxRuntime


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[SandboxRuntime]:
    """A runtime over a fresh data dir, with real cgroups in a group of the test's own."""
    cgroups = CgroupHost.discover(group=f"prefect-opencomputer-test-{os.getpid()}")
    cache = rootfs.cache_dir()
    runtime = SandboxRuntime(
        tmp_path / "runtime",
        cache=cache,
        rootfs=template_root,
        cgroups=cgroups,
    )
    runtime.registries = registry_exceptions()
    yield runtime
    for sandbox_id in list(runtime.running_ids()):
        await runtime.destroy(sandbox_id)
    await runtime.shutdown()
    # Shut down, the runtime lets go of its (by then empty) groups.
    assert not [directory for directory in cgroups.hierarchy_dirs if directory.exists()]


@pytest.fixture
async def created(http: httpx.AsyncClient) -> AsyncIterator[list[str]]:
    """Sandbox ids a test creates itself; all killed afterwards."""
    ids: list[str] = []
    yield ids
    for sandbox_id in ids:
        await http.delete(f"/sandboxes/{sandbox_id}")


async def _sdk_sandbox(local_server: LocalServer, **options: int) -> AsyncIterator[Sandbox]:
    sandbox = await Sandbox.create(
        api_url=local_server.url, api_key=local_server.api_key, timeout=300, **options
    )
    try:
        yield sandbox
    finally:
        await sandbox.kill()
        await sandbox.close()


@pytest.fixture
async def sdk_sandbox(local_server: LocalServer) -> AsyncIterator[Sandbox]:
    """A sandbox of the default size made by the official Python SDK, killed after the test."""
    async for sandbox in _sdk_sandbox(local_server):
        yield sandbox


@pytest.fixture
async def small_sdk_sandbox(local_server: LocalServer) -> AsyncIterator[Sandbox]:
    """A 1024 MB sandbox made by the official Python SDK, killed after the test."""
    async for sandbox in _sdk_sandbox(local_server, memory_mb=1024):
        yield sandbox
