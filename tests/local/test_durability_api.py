"""The local server survives its own restart: nothing it acknowledged is lost."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from prefect_opencomputer.local import LocalServer, LocalServerConfig
from prefect_opencomputer.local.backend.records import CheckpointRecord, utc_now
from prefect_opencomputer.local.backend.state import StateStore
from tests.host_view import host_view, marked_sleep, new_marker

API_KEY = "osb_" + "d" * 64


def _client(server: LocalServer) -> httpx.Client:
    return httpx.Client(base_url=server.api_url, headers={"X-API-Key": server.api_key}, timeout=60)


def _wait_ready(api: httpx.Client, sandbox_id: str, checkpoint_id: str) -> None:
    for _ in range(200):
        listed = api.get(f"/sandboxes/{sandbox_id}/checkpoints").json()
        if next(cp for cp in listed if cp["id"] == checkpoint_id)["status"] == "ready":
            return
        time.sleep(0.05)
    raise AssertionError("checkpoint never became ready")


@pytest.mark.slow
def test_sandboxes_checkpoints_patches_and_previews_survive_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    with LocalServer(LocalServerConfig(data_dir=data_dir, api_key=API_KEY)) as server, _client(server) as api:
        sandbox = api.post("/sandboxes", json={"envs": {"KEPT": "yes"}}).json()["sandboxID"]
        api.put(f"/sandboxes/{sandbox}/tags", json={"owner": "durability"})
        api.put(f"/sandboxes/{sandbox}/files", params={"path": "notes/disk.txt"}, content=b"on disk")
        api.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": "nohup sleep 1000 >/dev/null 2>&1 &"})
        checkpoint = api.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": "before"}).json()["id"]
        _wait_ready(api, sandbox, checkpoint)
        patch = api.post(
            f"/sandboxes/checkpoints/{checkpoint}/patches", json={"script": "echo patched > patched.txt"}
        ).json()["patch"]
        api.post(f"/sandboxes/{sandbox}/preview", json={"port": 8080})
        killed = api.post("/sandboxes", json={}).json()["sandboxID"]
        api.delete(f"/sandboxes/{killed}")
        signed = api.post(f"/sandboxes/{sandbox}/files/download-url", json={"path": "notes/disk.txt"}).json()

    # A crash in the middle of a checkpoint copy leaves a `processing` row behind.
    store = StateStore(data_dir / "state.db")
    store.insert_checkpoint(
        CheckpointRecord(
            id="00000000-0000-4000-8000-0000000c0ffe",
            sandbox_id=sandbox,
            name="interrupted",
            kind="full",
            status="processing",
            sandbox_config={},
            created_at=utc_now(),
        )
    )
    store.close()

    with LocalServer(LocalServerConfig(data_dir=data_dir, api_key=API_KEY)) as server, _client(server) as api:
        body = api.get(f"/sandboxes/{sandbox}").json()
        assert body["status"] == "hibernated"
        assert body["tags"] == {"owner": "durability"}
        assert api.get(f"/sandboxes/{killed}").json()["status"] == "stopped"

        # The URL-signing secret survived: a URL signed before the restart still works.
        query = urlsplit(signed["url"]).query
        download = httpx.get(f"{server.url}/api/sandboxes/{sandbox}/files/download?{query}")
        assert download.content == b"on disk"
        assert api.get(f"/sandboxes/{sandbox}").json()["status"] == "running"

        run = api.post(
            f"/sandboxes/{sandbox}/exec/run",
            json={"cmd": 'cat notes/disk.txt; echo " $KEPT"; pgrep -cf "slee[p] 1000" || true'},
        )
        assert run.json()["stdout"] == "on disk yes\n0\n"

        checkpoints = {cp["name"]: cp for cp in api.get(f"/sandboxes/{sandbox}/checkpoints").json()}
        assert checkpoints["before"]["status"] == "ready"
        assert checkpoints["interrupted"]["status"] == "failed"
        assert checkpoints["interrupted"]["errorMsg"]
        assert [p["id"] for p in api.get(f"/sandboxes/checkpoints/{checkpoint}/patches").json()] == [
            patch["id"]
        ]

        previews = api.get(f"/sandboxes/{sandbox}/preview").json()
        assert [(p["port"], p["hostname"]) for p in previews] == [
            (8080, f"{sandbox}-p8080.{server.config.effective_preview_domain}")
        ]

        fork = api.post(f"/sandboxes/from-checkpoint/{checkpoint}", json={}).json()["sandboxID"]
        fork_run = api.post(f"/sandboxes/{fork}/exec/run", json={"cmd": "cat notes/disk.txt patched.txt"})
        assert fork_run.json()["stdout"] == "on diskpatched\n"
        for sandbox_id in (sandbox, fork):
            api.delete(f"/sandboxes/{sandbox_id}")


@pytest.mark.slow
def test_a_sandbox_created_just_before_shutdown_comes_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    with LocalServer(LocalServerConfig(data_dir=data_dir, api_key=API_KEY)) as server, _client(server) as api:
        ids = [api.post("/sandboxes", json={}).json()["sandboxID"] for _ in range(3)]
    with LocalServer(LocalServerConfig(data_dir=data_dir, api_key=API_KEY)) as server, _client(server) as api:
        for sandbox_id in ids:
            assert api.get(f"/sandboxes/{sandbox_id}").json()["status"] == "hibernated"
            woken = api.post(f"/sandboxes/{sandbox_id}/exec/run", json={"cmd": "echo awake"})
            assert woken.json()["stdout"] == "awake\n"
            api.delete(f"/sandboxes/{sandbox_id}")


def _uid_range(api: httpx.Client, sandbox_id: str) -> str:
    """The first host uid of the sandbox's own id range (it wakes the sandbox if it must)."""
    marker = new_marker()
    body = {"cmd": "/bin/bash", "args": ["-c", marked_sleep(marker)]}
    result = api.post(f"/sandboxes/{sandbox_id}/exec/run", json=body).json()
    assert result["exitCode"] == 0, result
    return host_view(marker).uid_map[1]


@pytest.mark.slow
def test_a_sandbox_keeps_its_host_id_range_while_hibernated_and_across_a_restart(tmp_path: Path) -> None:
    """No other sandbox runs as ids a living sandbox may run as again: its range stays its own
    until it is killed, whoever boots meanwhile (the new server's warm spares boot first)."""
    data_dir = tmp_path / "state"
    with LocalServer(LocalServerConfig(data_dir=data_dir, api_key=API_KEY)) as server, _client(server) as api:
        kept = api.post("/sandboxes", json={}).json()["sandboxID"]
        own = _uid_range(api, kept)
        assert api.post(f"/sandboxes/{kept}/hibernate").status_code == 200
        other = api.post("/sandboxes", json={"memoryMB": 1024}).json()["sandboxID"]  # boots, no spare
        assert _uid_range(api, other) != own
    with LocalServer(LocalServerConfig(data_dir=data_dir, api_key=API_KEY)) as server, _client(server) as api:
        booted_first = api.post("/sandboxes", json={"memoryMB": 1024}).json()["sandboxID"]
        assert _uid_range(api, booted_first) != own
        assert _uid_range(api, kept) == own
        for sandbox_id in (kept, other, booted_first):
            assert api.delete(f"/sandboxes/{sandbox_id}").status_code == 204
