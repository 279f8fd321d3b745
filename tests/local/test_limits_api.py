"""Hosted limits: the running-sandbox cap (429) and request bodies far larger than the old 1 MiB cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from prefect_opencomputer.local import LocalServer


@pytest.fixture
async def control(local_server: LocalServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=local_server.url, headers={"X-API-Key": local_server.api_key}, timeout=60
    ) as client:
        yield client
        # Back to the configured cap for the tests after this one.
        limit = local_server.config.max_running_sandboxes
        await client.put("/_test/limits", json={"maxRunningSandboxes": limit})


async def _running(http: httpx.AsyncClient) -> int:
    return sum(item["status"] == "running" for item in (await http.get("/sandboxes")).json())


async def _create(http: httpx.AsyncClient, created: list[str]) -> httpx.Response:
    response = await http.post("/sandboxes", json={})
    if response.status_code == 201:
        created.append(response.json()["sandboxID"])
    return response


def test_the_default_cap_is_the_hosted_50(local_server: LocalServer) -> None:
    assert local_server.config.max_running_sandboxes == 50


async def test_creates_past_the_running_cap_are_429_with_the_hosted_message(
    http: httpx.AsyncClient, control: httpx.AsyncClient, created: list[str]
) -> None:
    limit = await _running(http) + 2
    assert (await control.put("/_test/limits", json={"maxRunningSandboxes": limit})).status_code == 200
    assert (await _create(http, created)).status_code == 201
    assert (await _create(http, created)).status_code == 201

    refused = await _create(http, created)
    assert refused.status_code == 429
    assert "retry-after" not in refused.headers
    assert refused.json() == {
        "error": f"concurrent sandbox limit reached ({limit}/{limit}) — hibernate or delete one before "
        "creating another",
        "active": limit,
        "limit": limit,
    }

    # Only running sandboxes count: hibernating one makes room.
    assert (await http.post(f"/sandboxes/{created[0]}/hibernate")).status_code == 200
    assert (await _create(http, created)).status_code == 201


async def test_a_fork_past_the_cap_is_429_too(
    http: httpx.AsyncClient, control: httpx.AsyncClient, sandbox: str
) -> None:
    checkpoint = (await http.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": "capped"})).json()["id"]
    for _ in range(200):
        listed = (await http.get(f"/sandboxes/{sandbox}/checkpoints")).json()
        if listed[0]["status"] == "ready":
            break
        await asyncio.sleep(0.05)
    await control.put("/_test/limits", json={"maxRunningSandboxes": await _running(http)})
    refused = await http.post(f"/sandboxes/from-checkpoint/{checkpoint}", json={})
    assert refused.status_code == 429
    assert refused.json()["error"].startswith("concurrent sandbox limit reached")


async def test_concurrent_creates_cannot_pass_the_cap_together(
    http: httpx.AsyncClient, control: httpx.AsyncClient, created: list[str]
) -> None:
    limit = await _running(http) + 2
    await control.put("/_test/limits", json={"maxRunningSandboxes": limit})
    responses = await asyncio.gather(*(_create(http, created) for _ in range(5)))
    assert sorted(r.status_code for r in responses) == [201, 201, 429, 429, 429]


async def test_a_1_5_mb_patch_script_is_accepted(http: httpx.AsyncClient, sandbox: str) -> None:
    checkpoint = (await http.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": "big"})).json()["id"]
    for _ in range(200):
        if (await http.get(f"/sandboxes/{sandbox}/checkpoints")).json()[0]["status"] == "ready":
            break
        await asyncio.sleep(0.05)
    script = "echo patched > /tmp/patched\n# " + "x" * 1_500_000 + "\n"
    response = await http.post(f"/sandboxes/checkpoints/{checkpoint}/patches", json={"script": script})
    assert response.status_code == 201, response.text[:200]
    assert len(response.json()["patch"]["script"]) == len(script)


async def test_a_2_mb_image_add_file_passes_the_body_limit(http: httpx.AsyncClient) -> None:
    # An unknown base is refused by validation (400), which runs only after the whole body was read.
    content = "y" * 2_000_000
    image = {
        "base": "no-such-base",
        "steps": [{"type": "add_file", "args": {"path": "/x", "content": content}}],
    }
    response = await http.post("/sandboxes", json={"image": image})
    assert response.status_code == 400, response.text[:200]
    assert response.json()["error"] != "request body too large"


def test_the_json_body_cap_is_64_mib(local_server: LocalServer) -> None:
    assert local_server.config.max_json_bytes == 64 * 1024 * 1024
