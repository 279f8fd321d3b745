"""Each sandbox's disk is a filesystem of its own: full at diskMB (ENOSPC), never the host's disk.

The server here caps disks at 64 MB, so a test fills one in a fraction of a second. The disk image
is the sandbox's state: it survives hibernation, checkpoints, forks and server restarts; it is
mounted only in private mount namespaces, so nothing of it shows in the host's mount table, and a
killed server leaves no loop device behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import processes_mentioning

from prefect_opencomputer.local import LocalServer, LocalServerConfig
from prefect_opencomputer.local.sandbox import disk, rootfs
from prefect_opencomputer.local.sandbox.factory import template_root
from prefect_opencomputer.local.sandbox.runtime import SandboxRuntime

API_KEY = "osb_" + "e" * 64
DISK_MB = 64


def _client(server: LocalServer) -> httpx.Client:
    return httpx.Client(base_url=server.api_url, headers={"X-API-Key": server.api_key}, timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    data_dir = tmp_path_factory.mktemp("disk") / "state"
    with LocalServer(LocalServerConfig(data_dir=data_dir, api_key=API_KEY, max_disk_mb=DISK_MB)) as running:
        yield running


@pytest.fixture
def api(server: LocalServer) -> Iterator[httpx.Client]:
    with _client(server) as client:
        yield client


def create(api: httpx.Client) -> str:
    response = api.post("/sandboxes", json={"templateID": "base", "timeout": 0})
    assert response.status_code == 201, response.text
    sandbox_id: str = response.json()["sandboxID"]
    return sandbox_id


def run(api: httpx.Client, sandbox_id: str, cmd: str) -> dict[str, object]:
    response = api.post(f"/sandboxes/{sandbox_id}/exec/run", json={"cmd": cmd, "timeout": 60})
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def out(api: httpx.Client, sandbox_id: str, cmd: str) -> str:
    result = run(api, sandbox_id, cmd)
    assert result["exitCode"] == 0, result
    return str(result["stdout"])


def checkpoint(api: httpx.Client, sandbox_id: str, name: str) -> str:
    created = api.post(f"/sandboxes/{sandbox_id}/checkpoints", json={"name": name})
    assert created.status_code == 201, created.text
    checkpoint_id: str = created.json()["id"]
    for _ in range(400):
        listed = api.get(f"/sandboxes/{sandbox_id}/checkpoints").json()
        status = next(cp for cp in listed if cp["id"] == checkpoint_id)["status"]
        if status == "ready":
            return checkpoint_id
        assert status == "processing", listed
        time.sleep(0.05)
    raise AssertionError("checkpoint never became ready")


def bare_runtime(tmp_path: Path, max_disk_mb: int | None = None) -> SandboxRuntime:
    """A runtime without HTTP and without cgroups, over ``tmp_path``."""
    return SandboxRuntime(
        tmp_path / "runtime",
        cache=rootfs.cache_dir(),
        rootfs=template_root,
        cgroups=None,
        max_disk_mb=max_disk_mb,
    )


def traces(data_dir: Path) -> dict[str, list[str]]:
    """What of ``data_dir``'s sandboxes the host still holds: loop devices, mounts, processes."""
    prefix = str(data_dir)
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if prefix in line]
    return {
        "loops": [path for path in disk.loop_backing_files() if path.startswith(prefix)],
        "mounts": mounts,
        "processes": [str(pid) for pid in processes_mentioning(prefix)],
    }


def store_device(data_dir: Path) -> int:
    """The device number of the server's disk store: the loop device its ``disks.xfs`` is on."""
    store = str(data_dir / "runtime" / "disks.xfs")
    for entry in Path("/sys/block").glob("loop*/loop/backing_file"):
        if entry.read_text().strip() == store:
            major, minor = (entry.parent.parent / "dev").read_text().split(":")
            return os.makedev(int(major), int(minor))
    raise AssertionError(f"no loop device holds {store}")


def wait_for_no_traces(data_dir: Path, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while any((left := traces(data_dir)).values()):
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind: {left}")
        time.sleep(0.05)


def test_a_write_past_the_disk_limit_fails_with_enospc_and_the_server_keeps_serving(
    api: httpx.Client,
) -> None:
    sandbox = create(api)
    size_kb = int(out(api, sandbox, "df -k --output=size /home/sandbox | tail -1"))
    assert 40 * 1024 < size_kb <= DISK_MB * 1024
    full = run(api, sandbox, "echo before > kept.txt; head -c 100M /dev/zero > big.bin")
    assert full["exitCode"] != 0
    assert "No space left on device" in str(full["stderr"])
    # The sandbox frees its own disk and carries on; so does everyone else.
    assert out(api, sandbox, "rm big.bin; cat kept.txt; echo more >> kept.txt; cat kept.txt") == (
        "before\nbefore\nmore\n"
    )
    other = create(api)
    assert out(api, other, "head -c 1M /dev/zero > one.bin && echo fine") == "fine\n"
    for sandbox_id in (sandbox, other):
        assert api.delete(f"/sandboxes/{sandbox_id}").status_code == 204


def test_files_survive_hibernate_wake_checkpoint_fork_and_restore(api: httpx.Client) -> None:
    sandbox = create(api)
    out(api, sandbox, "echo v1 > state.txt; sudo sh -c 'echo system > /etc/disk-test'")
    assert api.post(f"/sandboxes/{sandbox}/hibernate").status_code == 200
    assert api.post(f"/sandboxes/{sandbox}/wake").status_code == 200
    assert out(api, sandbox, "cat state.txt /etc/disk-test") == "v1\nsystem\n"

    v1 = checkpoint(api, sandbox, "v1")
    out(api, sandbox, "echo v2 > state.txt; rm /etc/disk-test 2>/dev/null || sudo rm /etc/disk-test")
    forked = api.post(f"/sandboxes/from-checkpoint/{v1}", json={})
    assert forked.status_code == 201, forked.text
    fork = forked.json()["sandboxID"]
    assert out(api, fork, "cat state.txt /etc/disk-test") == "v1\nsystem\n"
    # The fork has a disk of its own, as small as its source's.
    assert "No space left on device" in str(run(api, fork, "head -c 100M /dev/zero > big.bin")["stderr"])
    assert out(api, sandbox, "cat state.txt; ls big.bin 2>/dev/null || echo none") == "v2\nnone\n"

    v2 = checkpoint(api, sandbox, "v2")
    restored = api.post(f"/sandboxes/{sandbox}/checkpoints/{v1}/restore")
    assert restored.status_code == 200, restored.text
    assert out(api, sandbox, "cat state.txt /etc/disk-test") == "v1\nsystem\n"
    forked = api.post(f"/sandboxes/from-checkpoint/{v2}", json={})
    assert forked.status_code == 201, forked.text
    fork_of_v2 = forked.json()["sandboxID"]
    assert out(api, fork_of_v2, "cat state.txt; ls /etc/disk-test 2>/dev/null || echo gone") == "v2\ngone\n"
    for sandbox_id in (sandbox, fork, fork_of_v2):
        assert api.delete(f"/sandboxes/{sandbox_id}").status_code == 204


def test_kill_leaves_no_loop_device_mount_or_directory(server: LocalServer, api: httpx.Client) -> None:
    sandbox = create(api)
    out(api, sandbox, "head -c 1M /dev/urandom > data.bin; sleep 300 >/dev/null 2>&1 &")
    layer = server.data_dir / "runtime" / "layers" / "sandboxes" / sandbox
    # Of what other servers on this host attached meanwhile, only images in this server's store count
    # (the warm pool's spares among them: the sandbox may have been one, booted before its create).
    store = store_device(server.data_dir)

    def attached() -> set[tuple[int, int]]:
        return {(device, inode) for device, inode in disk.attached_files() if device == store}

    before_kill = attached()
    # Mounted in the sandbox's own namespaces only: the host's mount table never names it.
    assert str(layer) not in Path("/proc/self/mountinfo").read_text()
    assert api.delete(f"/sandboxes/{sandbox}").status_code == 204
    # Kill answers at once; its processes, loop device and directories go right after.
    deadline = time.monotonic() + 10
    while layer.exists() or not before_kill - attached():
        assert time.monotonic() < deadline, "the sandbox's layer or loop device is still there"
        time.sleep(0.05)
    assert len(before_kill - attached()) == 1, "the sandbox's disk was on a loop device of its own"
    wait_for_no_traces(layer)


async def test_a_stopped_sandbox_is_checkpointed_from_its_image_and_forks_boot_on_a_clone(
    tmp_path: Path,
) -> None:
    runtime = bare_runtime(tmp_path, max_disk_mb=DISK_MB)
    runtime.layers.create_sandbox("sb-stop0001")
    try:
        await runtime.start("sb-stop0001", template="base", network=False)
        made = await runtime.run("sb-stop0001", ["/bin/sh", "-c", "echo quiet > quiet.txt; mkfifo pipe"])
        assert made.exit_code == 0, made
        await runtime.stop("sb-stop0001")
        # Like an image build: stopped first, then cloned from the image that nothing mounts now.
        assert await runtime.checkpoint("sb-stop0001", "ckpt-stopped") > 0
        await runtime.layers.fork("ckpt-stopped", "sb-stop0002")
        assert disk.image_size_mb(runtime.layers.disk_image("sb-stop0002")) == DISK_MB
        await runtime.start("sb-stop0002", template="base", network=False)
        read = await runtime.run("sb-stop0002", ["/bin/sh", "-c", "cat quiet.txt; test -p pipe && echo fifo"])
        assert read.stdout == b"quiet\nfifo\n", read
    finally:
        await runtime.destroy("sb-stop0001")
        await runtime.destroy("sb-stop0002")
        await runtime.shutdown()
    wait_for_no_traces(tmp_path)


COMMAND = [sys.executable, "-m", "prefect_opencomputer.cli", "local", "serve"]


@pytest.mark.slow
def test_a_sigkilled_server_leaves_no_loop_device_or_mount_and_the_disk_survives(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    log = tmp_path / "serve.log"
    env = {**os.environ, "OPENCOMPUTER_LOCAL_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"}
    argv = [*COMMAND, "--port", "0", "--data-dir", str(data_dir), "--max-disk-mb", str(DISK_MB)]
    with log.open("w") as sink:
        process = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while (match := re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text())) is None:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        headers = {"X-API-Key": API_KEY}
        with httpx.Client(base_url=match.group(1) + "/api", headers=headers, timeout=60) as api:
            sandbox = create(api)
            out(api, sandbox, "echo survived > kept.txt; sleep 300 >/dev/null 2>&1 &")
            assert any(path.startswith(str(data_dir)) for path in disk.loop_backing_files())
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        wait_for_no_traces(data_dir)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    # The image is the sandbox's state: a new server boots it again.
    with (
        LocalServer(LocalServerConfig(data_dir=data_dir, api_key=API_KEY, max_disk_mb=DISK_MB)) as again,
        _client(again) as api,
    ):
        assert api.get(f"/sandboxes/{sandbox}").json()["status"] == "hibernated"
        assert out(api, sandbox, "cat kept.txt") == "survived\n"
        assert api.delete(f"/sandboxes/{sandbox}").status_code == 204
    wait_for_no_traces(data_dir)


async def test_a_disk_from_before_the_store_is_brought_into_it_when_it_boots(tmp_path: Path) -> None:
    runtime = bare_runtime(tmp_path, max_disk_mb=DISK_MB)
    runtime.layers.create_sandbox("sb-old00001")
    await runtime.start("sb-old00001", template="base", network=False)
    made = await runtime.run("sb-old00001", ["/bin/sh", "-c", "echo old > old.txt; ln -s old.txt link"])
    assert made.exit_code == 0, made
    await runtime.stop("sb-old00001")
    assert await runtime.wait_stopped(30)
    # The layout of a data dir made before the disk store: the image beside the mount points.
    layer = runtime.layers.layer_dir("sb-old00001")
    shutil.move(runtime.layers.disk_image("sb-old00001"), layer / "disk.img")
    assert runtime.layers.sandbox_exists("sb-old00001")

    await runtime.start("sb-old00001", template="base", network=False)
    try:
        read = await runtime.run("sb-old00001", ["/bin/sh", "-c", "cat old.txt; readlink link"])
        assert read.stdout == b"old\nold.txt\n", read
        assert sorted(path.name for path in layer.iterdir()) == ["disk", "init.log", "lower", "merged"]
        assert runtime.layers.disk_image("sb-old00001").is_file()
    finally:
        await runtime.destroy("sb-old00001")
        await runtime.shutdown()


def test_a_disk_larger_than_the_host_has_free_is_refused(tmp_path: Path) -> None:
    runtime = bare_runtime(tmp_path)
    stats = os.statvfs(tmp_path)
    free_mb = stats.f_bavail * stats.f_frsize // disk.MIB
    if free_mb >= 262144:
        pytest.skip("this host has room for the largest disk")
    with pytest.raises(OSError, match="does not fit"):
        runtime.layers.create_sandbox("sb-huge0001", disk_mb=262144)
    assert not runtime.layers.layer_dir("sb-huge0001").exists()


async def test_a_disk_the_host_went_down_with_is_repaired_before_it_boots(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = bare_runtime(tmp_path, max_disk_mb=DISK_MB)
    runtime.layers.create_sandbox("sb-fsck0001")
    image = runtime.layers.disk_image("sb-fsck0001")
    assert not disk.needs_repair(image)
    try:
        await runtime.start("sb-fsck0001", template="base", network=False)
        made = await runtime.run("sb-fsck0001", ["/bin/sh", "-c", "echo kept > kept.txt"])
        assert made.exit_code == 0, made
        # Journaled, a mounted disk reads as clean: a crash is its journal's to replay, not e2fsck's.
        assert not disk.needs_repair(image)
        await runtime.stop("sb-fsck0001")
        assert await runtime.wait_stopped(30)
        assert not disk.needs_repair(image)

        # As a host crash leaves it: "not clean" (debugfs rewrites the superblock with its checksum).
        marked = await asyncio.create_subprocess_exec("debugfs", "-w", "-R", "ssv state 0", str(image))
        assert await marked.wait() == 0
        assert disk.needs_repair(image)
        with caplog.at_level(logging.WARNING, "prefect_opencomputer.local.sandbox.layers"):
            await runtime.start("sb-fsck0001", template="base", network=False)
        assert "e2fsck repaired it" in caplog.text
        read = await runtime.run("sb-fsck0001", ["cat", "kept.txt"])
        assert read.stdout == b"kept\n", read
    finally:
        await runtime.destroy("sb-fsck0001")
        await runtime.shutdown()
    wait_for_no_traces(tmp_path)
