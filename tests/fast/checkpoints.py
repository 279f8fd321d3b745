"""Taking a checkpoint over the API and waiting until it is ready, for the tests that need one."""

from __future__ import annotations

import uuid

import httpx

from tests.waiting import until


async def ready_checkpoint(http: httpx.AsyncClient, sandbox: str) -> str:
    made = await http.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": f"cp-{uuid.uuid4().hex[:8]}"})
    assert made.status_code == 201, made.text
    checkpoint = made.json()["id"]

    async def ready() -> bool:
        listed = (await http.get(f"/sandboxes/{sandbox}/checkpoints")).json()
        return any(item["id"] == checkpoint and item["status"] == "ready" for item in listed)

    await until(ready, what="the checkpoint to be ready")
    return checkpoint
