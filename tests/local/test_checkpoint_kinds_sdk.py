"""Checkpoint kinds through the official Python SDK, and what a fork of either holds here: the disk."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from opencomputer import Sandbox

from prefect_opencomputer.local import LocalServer

pytestmark = pytest.mark.slow


async def _ready(sandbox: Sandbox, checkpoint_id: str) -> dict[str, object]:
    for _ in range(600):
        listed = {cp["id"]: cp for cp in await sandbox.list_checkpoints() or []}
        if listed[checkpoint_id]["status"] == "ready":
            return listed[checkpoint_id]
        await asyncio.sleep(0.1)
    raise AssertionError("checkpoint never became ready")


async def test_kind_is_accepted_stored_and_answered(sdk_sandbox: Sandbox) -> None:
    full = await sdk_sandbox.create_checkpoint("whole")
    disk = await sdk_sandbox.create_checkpoint("files", kind="disk_only")
    assert (full["kind"], disk["kind"]) == ("full", "disk_only")
    assert (await _ready(sdk_sandbox, full["id"]))["kind"] == "full"
    assert (await _ready(sdk_sandbox, disk["id"]))["kind"] == "disk_only"
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await sdk_sandbox.create_checkpoint("odd", kind="memory")
    assert caught.value.response.json() == {"error": "kind must be full or disk_only"}


@pytest.mark.parametrize("kind", ["full", "disk_only"])
async def test_a_fork_holds_the_disk_and_no_process_of_its_source(
    sdk_sandbox: Sandbox, local_server: LocalServer, kind: str
) -> None:
    await sdk_sandbox.files.write("state.txt", "prepared")
    await sdk_sandbox.exec.run("nohup sleep 600 >/dev/null 2>&1 &")
    checkpoint = await sdk_sandbox.create_checkpoint("prepared", kind=kind)
    await _ready(sdk_sandbox, checkpoint["id"])

    fork = await Sandbox.create_from_checkpoint(
        checkpoint["id"], api_url=local_server.url, api_key=local_server.api_key
    )
    try:
        assert await fork.files.read("state.txt") == "prepared"
        assert (await fork.exec.run("pgrep -x sleep || echo none")).stdout == "none\n"
    finally:
        await fork.kill()
        await fork.close()
    assert (await sdk_sandbox.exec.run("pgrep -x sleep >/dev/null && echo running")).stdout == "running\n"
