"""The warm pool on real sandboxes: a spare is a sandbox of its own, and none outlives its server."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
from serving import Served, environment, wait_until_serving

from prefect_opencomputer.local import LocalServer
from prefect_opencomputer.local.sandbox.factory import cgroup_group
from tests.security.test_kill_leaves_nothing import cgroup_dirs_of
from tests.waiting import until

KEY = "osb_warm-pool-0123456789abcdef0123"
CLOCK_TICKS_PER_SECOND = 100  # USER_HZ on Linux


async def _wait_full(url: str, api_key: str, size: int = 2) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": api_key}) as control:

        async def full() -> bool:
            return int((await control.get("/_test/stats")).json()["warmSandboxes"]) == size

        await until(full, what="the warm pool to fill", timeout=60)


async def _run(http: httpx.AsyncClient, sandbox: str, command: str) -> str:
    result = (await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": command})).json()
    assert result["exitCode"] == 0, result
    return str(result["stdout"])


async def test_a_sandbox_taken_from_the_pool_has_its_own_name_groups_and_disk_and_leaves_nothing(
    http: httpx.AsyncClient, local_server: LocalServer
) -> None:
    await _wait_full(local_server.url, local_server.api_key)
    await asyncio.sleep(1.0)  # the spare's pid 1 is now at least a second older than any boot to come
    made = await http.post("/sandboxes", json={})
    assert made.status_code == 201, made.text
    sandbox = made.json()["sandboxID"]
    try:
        # Booted before its create: pid 1 ran long before the first command.
        stats = await _run(http, sandbox, "cut -d' ' -f22 /proc/1/stat /proc/self/stat")
        init_ticks, command_ticks = (int(line) for line in stats.split())
        assert command_ticks - init_ticks >= CLOCK_TICKS_PER_SECOND // 2, "it was booted by its create"
        # Its own name, inside and in /etc, as a sandbox booted by its create has.
        named = await _run(http, sandbox, 'hostname; cat /etc/hostname; grep -c "$(hostname)" /etc/hosts')
        assert named.split() == [sandbox, sandbox, "1"]
        assert cgroup_dirs_of(sandbox, cgroup_group(local_server.data_dir)), "its cgroups carry its id"
        layer = _layers(local_server.data_dir) / sandbox
        assert layer.is_dir(), "its layer (where its disk is mounted) carries its id"
        # Its files are its own: what it writes is there, in its home, as the sandbox user.
        await _run(http, sandbox, "echo mine > note.txt")
        assert (await http.get(f"/sandboxes/{sandbox}/files", params={"path": "note.txt"})).text == "mine\n"
    finally:
        assert (await http.delete(f"/sandboxes/{sandbox}")).status_code == 204

    async def gone() -> bool:
        return not cgroup_dirs_of(sandbox, cgroup_group(local_server.data_dir)) and not layer.exists()

    await until(gone, what="the killed sandbox's cgroups and disk to go")


def _layers(data: Path) -> Path:
    return data / "runtime" / "layers" / "sandboxes"


def _spare_disks(data: Path) -> set[str]:
    """The sandboxes that have a layer: only spares, in a server nobody has asked anything."""
    return {path.name for path in _layers(data).iterdir()} if _layers(data).is_dir() else set()


@pytest.mark.slow
def test_spares_go_with_a_stopped_server_and_with_the_next_start_after_a_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ["--port", "0", "--data-dir", str(data), "--enable-test-routes"]
    env = environment(OPENCOMPUTER_LOCAL_API_KEY=KEY)
    for ending in ("SIGTERM", "SIGKILL"):
        server = Served(args, env, tmp_path / f"{ending}.log")
        try:
            wait_until_serving(server.url)
            asyncio.run(_wait_full(server.url, KEY))
            spares = _spare_disks(data)
            assert len(spares) == 2, spares
            if ending == "SIGTERM":
                server.signal(signal.SIGTERM)
                assert not _spare_disks(data), "a stopped server left its spares"
            else:
                server.stop()  # SIGKILL: the spares' disks stay until the next start
                assert _spare_disks(data) == spares
        finally:
            server.stop()
    again = Served(args, env, tmp_path / "again.log")
    try:
        wait_until_serving(again.url)
        # Recovery discards them as it starts; their layers are removed in the background.
        deadline = time.monotonic() + 30
        while spares & _spare_disks(data):
            assert time.monotonic() < deadline, "the next start kept the killed server's spares"
            time.sleep(0.05)
    finally:
        again.stop()
