"""Checkpoint kinds through the official Python SDK, and what a fork of either holds here: the disk."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from opencomputer import Sandbox

from prefect_opencomputer.local import LocalServer

pytestmark = pytest.mark.slow


@pytest.fixture
async def source(local_server: LocalServer) -> AsyncIterator[Sandbox]:
    sandbox = await Sandbox.create(api_url=local_server.url, api_key=local_server.api_key, timeout=300)
    try:
        yield sandbox
    finally:
        await sandbox.kill()
        await sandbox.close()


async def _ready(sandbox: Sandbox, checkpoint_id: str) -> dict[str, object]:
    for _ in range(600):
        listed = {cp["id"]: cp for cp in await sandbox.list_checkpoints() or []}
        if listed[checkpoint_id]["status"] == "ready":
            return listed[checkpoint_id]
        await asyncio.sleep(0.1)
    raise AssertionError("checkpoint never became ready")


async def test_kind_is_accepted_stored_and_answered(source: Sandbox) -> None:
    full = await source.create_checkpoint("whole")
    disk = await source.create_checkpoint("files", kind="disk_only")
    assert (full["kind"], disk["kind"]) == ("full", "disk_only")
    assert (await _ready(source, full["id"]))["kind"] == "full"
    assert (await _ready(source, disk["id"]))["kind"] == "disk_only"
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await source.create_checkpoint("odd", kind="memory")
    assert caught.value.response.json() == {"error": "kind must be full or disk_only"}


@pytest.mark.parametrize("kind", ["full", "disk_only"])
async def test_a_fork_holds_the_disk_and_no_process_of_its_source(
    source: Sandbox, local_server: LocalServer, kind: str
) -> None:
    await source.files.write("state.txt", "prepared")
    await source.exec.run("nohup sleep 600 >/dev/null 2>&1 &")
    checkpoint = await source.create_checkpoint("prepared", kind=kind)
    await _ready(source, checkpoint["id"])

    fork = await Sandbox.create_from_checkpoint(
        checkpoint["id"], api_url=local_server.url, api_key=local_server.api_key
    )
    try:
        assert await fork.files.read("state.txt") == "prepared"
        assert (await fork.exec.run("pgrep -x sleep || echo none")).stdout == "none\n"
    finally:
        await fork.kill()
        await fork.close()
    assert (await source.exec.run("pgrep -x sleep >/dev/null && echo running")).stdout == "running\n"
