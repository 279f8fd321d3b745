"""The official OpenComputer SDK, unchanged, against the local server: the client nobody here wrote."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from opencomputer import Sandbox

from prefect_opencomputer.local import LocalServer

pytestmark = pytest.mark.slow


@pytest.fixture
def sdk_env(local_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCOMPUTER_API_URL", local_server.url)
    monkeypatch.setenv("OPENCOMPUTER_API_KEY", local_server.api_key)


@pytest.fixture
async def sdk_sandbox(sdk_env: None) -> AsyncIterator[Sandbox]:
    sandbox = await Sandbox.create(envs={"GREETING": "hello from envs"}, timeout=300)
    try:
        yield sandbox
    finally:
        if sandbox.status != "stopped":
            await sandbox.kill()
        await sandbox.close()


async def wait_until_ready(sandbox: Sandbox, checkpoint_id: str) -> dict[str, object]:
    for _ in range(600):
        listed = {checkpoint["id"]: checkpoint for checkpoint in await sandbox.list_checkpoints() or []}
        status = listed[checkpoint_id]["status"]
        if status == "ready":
            return listed[checkpoint_id]
        assert status == "processing", listed[checkpoint_id]
        await asyncio.sleep(0.1)
    raise AssertionError("checkpoint never became ready")


async def test_sdk_runs_commands_and_moves_files(sdk_sandbox: Sandbox) -> None:
    result = await sdk_sandbox.exec.run("echo $GREETING; echo oops >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "hello from envs\n", "oops\n")

    await sdk_sandbox.files.write("/home/sandbox/project/state.txt", "v1")
    assert await sdk_sandbox.files.read("project/state.txt") == "v1"
    entries = await sdk_sandbox.files.list("/home/sandbox/project")
    assert [(entry.name, entry.is_dir) for entry in entries] == [("state.txt", False)]

    url = await sdk_sandbox.download_url("/home/sandbox/project/state.txt")
    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.get(url)).text == "v1"


async def test_sdk_checkpoint_patch_fork_and_restore(sdk_sandbox: Sandbox) -> None:
    await sdk_sandbox.files.write("/home/sandbox/project/state.txt", "v1")
    checkpoint = await sdk_sandbox.create_checkpoint("v1")
    assert checkpoint["name"] == "v1"
    assert checkpoint["sandboxId"] == sdk_sandbox.sandbox_id
    checkpoint_id = str(checkpoint["id"])
    await wait_until_ready(sdk_sandbox, checkpoint_id)

    created = await Sandbox.create_checkpoint_patch(
        checkpoint_id, "echo patched > /home/sandbox/patched.txt", description="mark forks"
    )
    patch = created["patch"]
    assert (patch["sequence"], patch["description"]) == (1, "mark forks")

    fork = await Sandbox.create_from_checkpoint(checkpoint_id)
    try:
        assert fork.sandbox_id != sdk_sandbox.sandbox_id
        assert await fork.files.read("/home/sandbox/project/state.txt") == "v1"
        assert await fork.files.read("/home/sandbox/patched.txt") == "patched\n"
        assert (await fork.exec.run("echo $GREETING")).stdout == "hello from envs\n"
    finally:
        await fork.kill()
        await fork.close()

    patches = await Sandbox.list_checkpoint_patches(checkpoint_id)
    assert [listed["id"] for listed in patches] == [patch["id"]]
    await Sandbox.delete_checkpoint_patch(checkpoint_id, patch["id"])
    assert await Sandbox.list_checkpoint_patches(checkpoint_id) == []

    await sdk_sandbox.files.write("/home/sandbox/project/state.txt", "v2")
    await sdk_sandbox.restore_checkpoint(checkpoint_id)
    assert await sdk_sandbox.files.read("/home/sandbox/project/state.txt") == "v1"


async def test_sdk_previews_timeout_and_kill(sdk_sandbox: Sandbox, local_server: LocalServer) -> None:
    preview = await sdk_sandbox.create_preview_url(8000)
    assert preview["port"] == 8000
    assert preview["hostname"].startswith(f"{sdk_sandbox.sandbox_id}-p8000.")
    assert (await sdk_sandbox.create_preview_url(8000))["id"] == preview["id"]
    assert [listed["port"] for listed in await sdk_sandbox.list_preview_urls()] == [8000]
    await sdk_sandbox.delete_preview_url(8000)
    assert await sdk_sandbox.list_preview_urls() == []

    await sdk_sandbox.set_timeout(600)

    await sdk_sandbox.kill()
    assert sdk_sandbox.status == "stopped"
    reconnected = await Sandbox.connect(sdk_sandbox.sandbox_id)
    try:
        assert reconnected.status == "stopped"
    finally:
        await reconnected.close()


async def test_sdk_exec_start_streams_output_while_the_command_runs(sdk_sandbox: Sandbox) -> None:
    chunks: list[bytes] = []
    session = await sdk_sandbox.exec.start(
        "sh", args=["-c", "echo line-1; sleep 1; echo line-2"], on_stdout=chunks.append
    )
    try:
        for _ in range(200):
            if b"line-1" in b"".join(chunks):
                break
            await asyncio.sleep(0.01)
        assert b"".join(chunks) == b"line-1\n"
        assert not session.done.done(), "line-1 should arrive while the command still runs"

        assert await asyncio.wait_for(session.done, 30) == 0
        assert b"".join(chunks) == b"line-1\nline-2\n"
    finally:
        await session.close()
