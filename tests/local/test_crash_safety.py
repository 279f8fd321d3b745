"""A server killed while a checkpoint, a fork or a file write is in flight: nothing acknowledged is lost."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import pytest
from serving import Served, environment, processes_mentioning, wait_until_serving

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


def test_a_server_killed_during_a_file_write_and_forks_keeps_what_it_acknowledged_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    server = _serve(data, tmp_path / "first.log")
    try:
        with _api(server) as api:
            sandbox = api.post("/sandboxes", json={"timeout": 0}).json()["sandboxID"]
            kept = api.put(f"/sandboxes/{sandbox}/files", params={"path": "kept.txt"}, content=b"kept")
            assert kept.status_code == 204, kept.text
            checkpoint = api.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": "base"}).json()["id"]
            while api.get(f"/sandboxes/{sandbox}/checkpoints").json()[0]["status"] != "ready":
                time.sleep(0.02)
            streaming = threading.Event()

            def endless() -> Iterator[bytes]:
                while True:  # an upload the kill cuts short
                    yield b"x" * (1 << 20)
                    streaming.set()

            def upload() -> int:
                with _api(server) as own:
                    return own.put(
                        f"/sandboxes/{sandbox}/files", params={"path": "cut.bin"}, content=endless()
                    ).status_code

            def fork() -> str | None:
                with _api(server) as own:
                    answer = own.post(f"/sandboxes/from-checkpoint/{checkpoint}", json={"timeout": 0})
                    return str(answer.json()["sandboxID"]) if answer.status_code == 201 else None

            with ThreadPoolExecutor(max_workers=9) as pool:
                uploading = pool.submit(upload)
                assert streaming.wait(60)
                forking = [pool.submit(fork) for _ in range(8)]
                wait(forking, timeout=60, return_when=FIRST_COMPLETED)  # one answered, others on their way
                server.process.kill()  # SIGKILL, mid-write and mid-fork
                server.process.wait()
                acknowledged = []
                for future in forking:
                    try:
                        if (forked := future.result()) is not None:
                            acknowledged.append(forked)
                    except httpx.TransportError:
                        pass
                try:
                    status = uploading.result()
                except httpx.TransportError:
                    status = None
                assert status is None, "the upload was meant to be cut short by the kill"
    finally:
        server.stop()

    # The killed server's sandboxes go with it: their processes, agents and mounts.
    deadline = time.monotonic() + 30
    while processes_mentioning(sandbox) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(sandbox) == []
    restarted = _serve(data, tmp_path / "second.log")
    try:
        with _api(restarted) as api:
            listed = {item["sandboxID"] for item in api.get("/sandboxes").json()}
            # Every fork that was answered is there. A fork the kill cut off after its work but
            # before its answer may be there too, whole; nothing half-made is served.
            assert set(acknowledged) <= listed, (listed, acknowledged)
            forks = listed - {sandbox}
            assert api.get(f"/sandboxes/{sandbox}/files", params={"path": "kept.txt"}).content == b"kept"
            for forked in forks:
                assert _run(api, forked, "cat kept.txt") == "kept"
            fork = api.post(f"/sandboxes/from-checkpoint/{checkpoint}", json={})
            assert fork.status_code == 201, fork.text
            for each in [*listed, fork.json()["sandboxID"]]:
                assert api.delete(f"/sandboxes/{each}").status_code == 204
        restarted.process.send_signal(signal.SIGTERM)
        restarted.process.wait(timeout=60)
    finally:
        restarted.stop()
    for each in listed:
        assert processes_mentioning(each) == []
