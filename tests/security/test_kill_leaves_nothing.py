"""Class 7: killing a sandbox leaves no process, mount, cgroup or layer of it on this machine."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from prefect_opencomputer.local import LocalServer
from prefect_opencomputer.local.sandbox.factory import cgroup_group
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
    await _until_gone(sandbox, group, layer, seconds=10)
    assert processes_naming(sandbox) == []
    assert str(layer) not in Path("/proc/self/mountinfo").read_text()
    assert not layer.exists()
    assert cgroup_dirs_of(sandbox, group) == []


async def _until_gone(sandbox: str, group: str, layer: Path, *, seconds: float) -> None:
    for _ in range(int(seconds * 10)):
        if not processes_naming(sandbox) and not cgroup_dirs_of(sandbox, group) and not layer.exists():
            return
        await asyncio.sleep(0.1)


def uninterruptible(sandbox_id: str) -> list[int]:
    """Pids of the sandbox (by its cgroup) sleeping in the kernel, uninterruptibly (state D)."""
    found = []
    for pid in processes_naming(sandbox_id):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] == "D":
            found.append(pid)
    return found


async def test_kill_during_an_uninterruptible_syscall_answers_and_leaves_nothing(
    http: httpx.AsyncClient, new_sandbox: NewSandbox, local_server: LocalServer
) -> None:
    sandbox = await new_sandbox()
    # sync waits for the disk uninterruptibly: a SIGKILL reaches it only once the write-out is done.
    writer = "while :; do head -c 300M /dev/zero > big.bin; sync; done"
    await run_ok(http, sandbox, f"nohup sh -c '{writer}' >/dev/null 2>&1 &", timeout=60)
    for _ in range(600):
        if uninterruptible(sandbox):
            break
        await asyncio.sleep(0.05)
    assert uninterruptible(sandbox), "nothing of the sandbox ever sat in an uninterruptible sleep"

    assert (await http.delete(f"/sandboxes/{sandbox}")).status_code == 204
    assert (await http.get(f"/sandboxes/{sandbox}")).json()["status"] == "stopped"
    layer = local_server.data_dir / "runtime" / "layers" / "sandboxes" / sandbox
    group = cgroup_group(local_server.data_dir)
    await _until_gone(sandbox, group, layer, seconds=120)
    assert processes_naming(sandbox) == []
    assert cgroup_dirs_of(sandbox, group) == []
    assert not layer.exists()


async def test_kill_of_a_hibernated_sandbox_leaves_nothing(
    http: httpx.AsyncClient, new_sandbox: NewSandbox, local_server: LocalServer
) -> None:
    sandbox = await new_sandbox()
    await run_ok(http, sandbox, "nohup sleep 600 >/dev/null 2>&1 &")
    assert (await http.post(f"/sandboxes/{sandbox}/hibernate")).status_code == 200
    assert processes_naming(sandbox)  # frozen, not gone
    assert (await http.delete(f"/sandboxes/{sandbox}")).status_code == 204
    layer = local_server.data_dir / "runtime" / "layers" / "sandboxes" / sandbox
    group = cgroup_group(local_server.data_dir)
    # Frozen processes die only once thawed: the kill must not leave them in the refrigerator.
    await _until_gone(sandbox, group, layer, seconds=30)
    assert processes_naming(sandbox) == []
    assert cgroup_dirs_of(sandbox, group) == []
    assert not layer.exists()
