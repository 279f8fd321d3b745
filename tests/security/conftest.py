"""Helpers for the attacks: sandboxes made and killed over the API, commands, checkpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest


# What /proc/self/uid_map shows inside a sandbox: ids 0.. are a host range of its own, past the
# canonical range its files are stored with (100000000..+65535).
def is_sandbox_uid_map(words: list[str]) -> bool:
    return len(words) == 3 and words[0] == "0" and int(words[1]) >= 100_065_536 and words[2] == "65536"


# What it shows for a process in the host's own user namespace (host root, or any host user).
HOST_UID_MAP = ["0", "0", "4294967295"]

NewSandbox = Callable[..., Awaitable[str]]


async def run(
    http: httpx.AsyncClient, sandbox: str, script: str, *, timeout: int = 30, bash: bool = False
) -> dict[str, Any]:
    """Run ``script`` in the sandbox (through ``/bin/sh -c``, or bash without relying on sh)."""
    body: dict[str, Any] = {"cmd": script, "timeout": timeout}
    if bash:
        body = {"cmd": "/bin/bash", "args": ["-c", script], "timeout": timeout}
    response = await http.post(f"/sandboxes/{sandbox}/exec/run", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def run_ok(http: httpx.AsyncClient, sandbox: str, script: str, **options: Any) -> str:
    result = await run(http, sandbox, script, **options)
    assert result["exitCode"] == 0, result
    return str(result["stdout"])


async def checkpoint_ready(http: httpx.AsyncClient, sandbox: str, name: str) -> str:
    """Take a checkpoint and wait until it can be forked; its id."""
    created = await http.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": name})
    assert created.status_code == 201, created.text
    checkpoint_id: str = created.json()["id"]
    for _ in range(600):
        listed = (await http.get(f"/sandboxes/{sandbox}/checkpoints")).json()
        status = next(c["status"] for c in listed if c["id"] == checkpoint_id)
        if status == "ready":
            return checkpoint_id
        assert status != "failed", listed
        await asyncio.sleep(0.05)
    raise AssertionError(f"checkpoint {checkpoint_id} never became ready")


@pytest.fixture
async def new_sandbox(http: httpx.AsyncClient) -> AsyncIterator[NewSandbox]:
    """Make sandboxes (``POST /sandboxes`` with the given body); every one is killed afterwards."""
    made: list[str] = []

    async def make(**body: Any) -> str:
        response = await http.post("/sandboxes", json={"templateID": "base", "timeout": 0, **body})
        assert response.status_code == 201, response.text
        sandbox_id: str = response.json()["sandboxID"]
        made.append(sandbox_id)
        return sandbox_id

    yield make
    for sandbox_id in made:
        await http.delete(f"/sandboxes/{sandbox_id}")
