"""A server killed in the middle of a checkpoint copy: the copy dies with it, the next start cleans up."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from serving import Served, cmdline, environment, wait_until_serving

from prefect_opencomputer.local.sandbox import copying

pytestmark = pytest.mark.slow

KEY = "osb_crash-safety-0123456789abcdef"


def copies_under(data: Path) -> list[int]:
    """Pids of live (not zombie) ``cp`` processes copying something below ``data``."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
        if comm != "cp" or state == "Z":
            continue
        if str(data) in cmdline(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def partials_under(data: Path) -> list[Path]:
    return [path for path in data.rglob("*") if copying.PARTIAL_MARK in path.name]


def _serve(data: Path, log: Path) -> Served:
    server = Served(
        ["--port", "0", "--data-dir", str(data)], environment(OPENCOMPUTER_LOCAL_API_KEY=KEY), log
    )
    wait_until_serving(server.url)
    return server


def _api(server: Served) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/api", headers={"X-API-Key": KEY}, timeout=300)


def test_a_checkpoint_copy_killed_with_the_server_ends_failed_and_leaves_no_copy(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = _serve(data, tmp_path / "first.log")
    caught = None
    held: list[int] = []
    try:
        with _api(server) as api:
            sandbox = api.post("/sandboxes", json={"timeout": 0}).json()["sandboxID"]
            megabytes = 200
            for attempt in range(4):
                grow = f"head -c {megabytes}M /dev/zero > big-{attempt}.bin && sync"
                assert (
                    api.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": grow, "timeout": 300}).json()[
                        "exitCode"
                    ]
                    == 0
                )
                created = api.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": f"cp-{attempt}"})
                assert created.status_code == 201, created.text
                checkpoint = created.json()["id"]
                while not (copying_now := copies_under(data)):
                    status = api.get(f"/sandboxes/{sandbox}/checkpoints").json()
                    if all(item["status"] != "processing" for item in status):
                        break
                if copying_now:
                    # Hold the copy still, so only a death signal (not finishing first) can end it.
                    for pid in copying_now:
                        os.kill(pid, signal.SIGSTOP)
                    held = copying_now
                    server.process.kill()  # SIGKILL, mid-copy
                    server.process.wait()
                    caught = (sandbox, checkpoint)
                    break
                megabytes *= 2  # the copy was too quick to catch: a bigger tree
        assert caught is not None, "never caught a checkpoint copy in flight"
    finally:
        server.stop()

    # The copy died with the server: a stopped cp without a death signal would wait here for ever.
    deadline = time.monotonic() + 10
    while copies_under(data) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = copies_under(data)
    for pid in survivors:  # only what this test stopped itself, should the assertion fail
        if pid in held:
            os.kill(pid, signal.SIGKILL)
    assert survivors == []
    sandbox, checkpoint = caught

    restarted = _serve(data, tmp_path / "second.log")
    try:
        with _api(restarted) as api:
            listed = {item["id"]: item for item in api.get(f"/sandboxes/{sandbox}/checkpoints").json()}
            assert listed[checkpoint]["status"] == "failed"
            assert listed[checkpoint]["errorMsg"]
        assert partials_under(data) == []
        assert not any(path.name == checkpoint for path in data.rglob(checkpoint))
        restarted.process.send_signal(signal.SIGTERM)
        restarted.process.wait(timeout=60)
    finally:
        restarted.stop()


async def test_copy_tree_is_all_or_nothing_and_a_failed_copy_leaves_no_partial(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "nested").mkdir(parents=True)
    (source / "nested" / "file").write_bytes(b"x" * 1000)
    os.symlink("nested/file", source / "link")
    await copying.copy_tree(source, tmp_path / "copy")
    assert (tmp_path / "copy" / "nested" / "file").read_bytes() == b"x" * 1000
    assert os.readlink(tmp_path / "copy" / "link") == "nested/file"
    assert copying.tree_size(tmp_path / "copy") == 1000 + len("nested/file")

    with pytest.raises(FileExistsError):
        await copying.copy_tree(source, tmp_path / "copy")
    with pytest.raises(copying.CopyFailed):
        await copying.copy_tree(tmp_path / "missing", tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert partials_under(tmp_path) == []


async def test_sweeping_removes_partials_only(tmp_path: Path) -> None:
    keep = tmp_path / "checkpoint-a"
    keep.mkdir()
    stale = copying.partial_path(tmp_path / "checkpoint-b")
    (stale / "deep").mkdir(parents=True)
    (stale / "deep" / "half").write_bytes(b"half")
    assert await copying.sweep_partials(tmp_path) == [stale]
    assert keep.exists() and not stale.exists()
    assert await copying.sweep_partials(tmp_path / "missing") == []


async def test_a_cancelled_copy_kills_cp_and_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "big").write_bytes(b"\0" * (64 * 1024 * 1024))
    task = asyncio.create_task(copying.copy_tree(source, tmp_path / "copy"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert copies_under(tmp_path) == []
    assert not (tmp_path / "copy").exists()
    assert partials_under(tmp_path) == []
