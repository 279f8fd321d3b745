"""The backend's own lifecycle on the stand-in runtime: a restart, and a launch that fails part-way."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from prefect_opencomputer.local.backend.sandboxes import SandboxRequest
from prefect_opencomputer.local.backend.service import LocalBackend
from tests.fast.checkpoints import ready_checkpoint
from tests.fast.conftest import FastServer, fast_config
from tests.fast.coverage import error_of
from tests.fast.standin import StandinRuntime


async def test_a_restarted_server_brings_a_running_sandbox_back_hibernated_with_its_files(
    tmp_path: Path,
) -> None:
    config = fast_config(tmp_path)
    first = LocalBackend(config, StandinRuntime(tmp_path / "runtime"))
    await first.start()
    try:
        record, _ = await first.sandboxes.create(SandboxRequest())
        ran = await first.exec.run(
            record.id, ["sh", "-c", "echo kept > kept.txt"], envs={}, cwd=None, timeout=10
        )
        assert ran.exit_code == 0
    finally:
        await first.close()
    second = LocalBackend(config, StandinRuntime(tmp_path / "runtime"))
    await second.start()
    try:
        assert second.sandboxes.get(record.id).status == "hibernated"
        await second.sandboxes.wake(record.id)
        read = await second.exec.run(record.id, ["cat", "kept.txt"], envs={}, cwd=None, timeout=10)
        assert read.stdout == b"kept\n"
    finally:
        await second.close()


async def test_a_fork_whose_copy_is_gone_fails_and_leaves_no_sandbox_behind(
    http: httpx.AsyncClient, sandbox: str, local_server: FastServer
) -> None:
    checkpoint = await ready_checkpoint(http, sandbox)
    before = {item["sandboxID"] for item in (await http.get("/sandboxes")).json()}
    shutil.rmtree(local_server.data_dir / "runtime" / "checkpoints" / checkpoint)  # its copy is lost
    fork = await http.post(f"/sandboxes/from-checkpoint/{checkpoint}", json={})
    assert fork.status_code == 500
    assert error_of(fork.json()).startswith("fork from checkpoint: ")
    after = {item["sandboxID"] for item in (await http.get("/sandboxes")).json()}
    assert after == before
    layers = {path.name for path in (local_server.data_dir / "runtime" / "layers").iterdir()}
    assert layers <= before | {sandbox} | local_server.backend.core.warm.ids
