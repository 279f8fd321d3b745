"""A server killed while a checkpoint is in flight: it ends failed, nothing acknowledged is lost."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from serving import Served, environment, wait_until_serving

pytestmark = pytest.mark.slow

KEY = "osb_crash-safety-0123456789abcdef"


def _serve(data: Path, log: Path) -> Served:
    server = Served(
        ["--port", "0", "--data-dir", str(data)], environment(OPENCOMPUTER_LOCAL_API_KEY=KEY), log
    )
    wait_until_serving(server.url)
    return server


def _api(server: Served) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/api", headers={"X-API-Key": KEY}, timeout=300)


def _run(api: httpx.Client, sandbox: str, command: str) -> str:
    result = api.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": command, "timeout": 300}).json()
    assert result["exitCode"] == 0, result
    return str(result["stdout"])


def test_a_checkpoint_in_flight_when_the_server_is_killed_ends_failed_and_the_disk_survives(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    server = _serve(data, tmp_path / "first.log")
    caught = None
    try:
        with _api(server) as api:
            sandbox = api.post("/sandboxes", json={"timeout": 0}).json()["sandboxID"]
            _run(api, sandbox, "echo kept > kept.txt && sync")
            megabytes = 512
            for attempt in range(4):
                # Written but not synced: the checkpoint has to write it all out first, which keeps
                # it in flight long enough to kill the server under it.
                _run(api, sandbox, f"head -c {megabytes}M /dev/zero > dirty-{attempt}.bin")
                created = api.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": f"cp-{attempt}"})
                assert created.status_code == 201, created.text
                checkpoint = created.json()["id"]
                listed = {item["id"]: item for item in api.get(f"/sandboxes/{sandbox}/checkpoints").json()}
                if listed[checkpoint]["status"] == "processing":
                    server.process.kill()  # SIGKILL, mid-checkpoint
                    server.process.wait()
                    caught = (sandbox, checkpoint)
                    break
                megabytes *= 2  # it was done before we looked: more to write out
        assert caught is not None, "never caught a checkpoint in flight"
    finally:
        server.stop()

    sandbox, checkpoint = caught
    restarted = _serve(data, tmp_path / "second.log")
    try:
        with _api(restarted) as api:
            listed = {item["id"]: item for item in api.get(f"/sandboxes/{sandbox}/checkpoints").json()}
            assert listed[checkpoint]["status"] == "failed"
            assert "stopped while the checkpoint was being taken" in listed[checkpoint]["errorMsg"]
            forked = api.post(f"/sandboxes/from-checkpoint/{checkpoint}", json={})
            assert forked.status_code == 400, forked.text  # never served as ready
            # What was acknowledged before the kill is on the disk, and checkpoints work again.
            assert _run(api, sandbox, "cat kept.txt") == "kept\n"
            again = api.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": "after"})
            assert again.status_code == 201, again.text
            fork = api.post(f"/sandboxes/from-checkpoint/{again.json()['id']}", json={})
            assert fork.status_code == 201, fork.text
            assert _run(api, fork.json()["sandboxID"], "cat kept.txt") == "kept\n"
        restarted.process.send_signal(signal.SIGTERM)
        restarted.process.wait(timeout=60)
    finally:
        restarted.stop()
