"""`--no-limits`: sandboxes run without cgroups, and the server says what that costs."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from prefect_opencomputer.local import LocalServer, LocalServerConfig
from prefect_opencomputer.local.backend.sandboxes import prepare_host
from prefect_opencomputer.local.sandbox.factory import cgroup_group
from tests.security.conftest import UNCOVER_DISKS, disks_shown


def test_without_limits_the_server_says_nothing_is_enforced(tmp_path: Path) -> None:
    config = LocalServerConfig(data_dir=tmp_path, api_key="k", limits=False)
    line = prepare_host(config, progress=lambda _: None)
    assert line.startswith("limits: none (--no-limits)")


def test_with_limits_the_server_names_the_cgroups_in_force(tmp_path: Path) -> None:
    config = LocalServerConfig(data_dir=tmp_path, api_key="k")
    line = prepare_host(config, progress=lambda _: None)
    assert "memory" in line and "pids" in line and "freezer" in line


def test_without_limits_sandboxes_run_and_hibernate_stops_their_processes(tmp_path: Path) -> None:
    with (
        LocalServer(LocalServerConfig(data_dir=tmp_path, limits=False)) as server,
        httpx.Client(base_url=server.api_url, headers={"X-API-Key": server.api_key}, timeout=60) as http,
    ):
        sandbox = http.post("/sandboxes", json={"timeout": 0}).json()["sandboxID"]
        started = "echo kept > kept.txt; nohup sleep 600 >/dev/null 2>&1 &"
        assert http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": started}).json()["exitCode"] == 0
        assert http.post(f"/sandboxes/{sandbox}/hibernate").status_code == 200
        after = http.post(
            f"/sandboxes/{sandbox}/exec/run", json={"cmd": 'cat kept.txt; pgrep -c "slee[p] 600" || true'}
        ).json()
        # No freezer: the disk stays, the processes do not (as the README says of --no-limits).
        assert after["stdout"] == "kept\n0\n"
        assert http.delete(f"/sandboxes/{sandbox}").status_code == 204


def test_without_limits_proc_still_lists_no_disk_and_root_inside_cannot_uncover_one(tmp_path: Path) -> None:
    """No lxcfs views without cgroups, but the empty tables of disks stay (tests/security has the why)."""
    with (
        LocalServer(LocalServerConfig(data_dir=tmp_path, limits=False)) as server,
        httpx.Client(base_url=server.api_url, headers={"X-API-Key": server.api_key}, timeout=60) as http,
    ):
        sandbox = http.post("/sandboxes", json={"timeout": 0}).json()["sandboxID"]
        probed = http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": UNCOVER_DISKS}).json()
        assert probed["exitCode"] == 0, probed
        seen = json.loads(probed["stdout"])
        assert disks_shown(seen) == [], seen
        assert http.delete(f"/sandboxes/{sandbox}").status_code == 204


def test_a_stopped_server_leaves_no_cgroup_of_its_own(tmp_path: Path) -> None:
    with (
        LocalServer(LocalServerConfig(data_dir=tmp_path / "data")) as server,
        httpx.Client(base_url=server.api_url, headers={"X-API-Key": server.api_key}, timeout=60) as http,
    ):
        sandbox = http.post("/sandboxes", json={"timeout": 0}).json()["sandboxID"]
        group = cgroup_group(server.data_dir)
        ours = [path for path in Path("/sys/fs/cgroup").glob(f"*/**/{group}") if path.is_dir()]
        # One group per boot of the sandbox, named after it.
        assert ours and all(any(path.glob(f"{sandbox}-*")) for path in ours)
    assert not [path for path in ours if path.exists()]
