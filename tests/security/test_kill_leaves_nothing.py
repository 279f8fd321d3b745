"""Class 7: killing a sandbox leaves no process, mount, cgroup or layer of it on this machine."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from prefect_opencomputer.local import LocalServer
from prefect_opencomputer.local.backend.sandboxes import cgroup_group
from tests.security.conftest import NewSandbox, run_ok

pytestmark = pytest.mark.security

CGROUP_ROOT = Path("/sys/fs/cgroup")


def processes_naming(sandbox_id: str) -> list[int]:
    """Host pids whose command line or cgroup names the sandbox."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            named = sandbox_id.encode() in Path(entry.path, "cmdline").read_bytes()
            named = named or sandbox_id in Path(entry.path, "cgroup").read_text()
        except OSError:
            continue
        if named:
            pids.append(int(entry.name))
    return pids


def cgroup_dirs_of(sandbox_id: str, group: str) -> list[Path]:
    """The sandbox's cgroup directories below the server's group, in every hierarchy."""
    found = []
    for top, dirs, _ in os.walk(CGROUP_ROOT):
        depth = len(Path(top).relative_to(CGROUP_ROOT).parts)
        if Path(top).name == group:
            found += [Path(top, d) for d in dirs if d.startswith(f"{sandbox_id}-")]  # one per boot
            dirs[:] = []
        elif depth >= 4:
            dirs[:] = []
    return found


async def test_kill_leaves_no_process_mount_cgroup_or_layer(
    http: httpx.AsyncClient, new_sandbox: NewSandbox, local_server: LocalServer
) -> None:
    sandbox = await new_sandbox()
    await run_ok(
        http,
        sandbox,
        "for i in 1 2 3; do nohup sleep 600 >/dev/null 2>&1 & done; sudo sleep 601 >/dev/null 2>&1 &",
    )
    layer = local_server.data_dir / "runtime" / "layers" / "sandboxes" / sandbox
    group = cgroup_group(local_server.data_dir)
    # What the sandbox had while it ran, so the checks below are not vacuous.
    assert processes_naming(sandbox)
    assert layer.is_dir()
    # (Its overlay is mounted in its own mount namespace: the host's table never shows it.)
    assert cgroup_dirs_of(sandbox, group)

    assert (await http.delete(f"/sandboxes/{sandbox}")).status_code == 204
    # Kill answers at once; the processes and then their cgroups go right after.
    for _ in range(100):
        if not processes_naming(sandbox) and not cgroup_dirs_of(sandbox, group):
            break
        await asyncio.sleep(0.1)
    assert processes_naming(sandbox) == []
    assert str(layer) not in Path("/proc/self/mountinfo").read_text()
    assert not layer.exists()
    assert cgroup_dirs_of(sandbox, group) == []
