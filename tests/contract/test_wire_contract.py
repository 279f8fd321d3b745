"""The wire contract, checked on the local server and, with `OPENCOMPUTER_API_KEY` set, on the hosted service.

Only behaviour both must share is asserted (the hosted front door answers lists and GETs in its own shape;
a GET right after a create may briefly 404 there). Hosted runs create and kill one small sandbox per test.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from prefect_opencomputer.local import LocalServer

HOSTED_URL = "https://app.opencomputer.dev"


@dataclass(frozen=True)
class Target:
    name: str
    api_base: str
    api_key: str


@pytest.fixture(params=["local", "hosted"])
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "hosted":
        key = os.environ.get("OPENCOMPUTER_API_KEY", "")
        if not key:
            pytest.skip("OPENCOMPUTER_API_KEY is not set: the hosted service is not checked")
        url = os.environ.get("OPENCOMPUTER_API_URL", HOSTED_URL).rstrip("/")
        return Target("hosted", url if url.endswith("/api") else url + "/api", key)
    server: LocalServer = request.getfixturevalue("local_server")
    return Target("local", server.api_url, server.api_key)


@pytest.fixture
async def api(target: Target) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=target.api_base, headers={"X-API-Key": target.api_key}, timeout=120
    ) as client:
        yield client


@pytest.fixture
async def sandbox_id(api: httpx.AsyncClient) -> AsyncIterator[str]:
    response = await api.post("/sandboxes", json={"templateID": "base", "timeout": 300, "memoryMB": 1024})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "running" and created["sandboxID"].startswith("sb-")
    try:
        yield str(created["sandboxID"])
    finally:
        await api.delete(f"/sandboxes/{created['sandboxID']}")


async def test_exec_run_returns_exit_code_and_both_streams(api: httpx.AsyncClient, sandbox_id: str) -> None:
    body = {"cmd": "sh", "args": ["-c", "echo out; echo err >&2; exit 3"], "timeout": 20}
    response = await api.post(f"/sandboxes/{sandbox_id}/exec/run", json=body)
    assert response.status_code == 200
    assert response.json() == {"exitCode": 3, "stdout": "out\n", "stderr": "err\n"}


async def test_run_async_answers_inline_or_by_exec_id_and_the_result_arrives(
    api: httpx.AsyncClient, sandbox_id: str
) -> None:
    body = {"cmd": "sh", "args": ["-c", "sleep 1; echo later"], "timeout": 20}
    response = await api.post(f"/sandboxes/{sandbox_id}/exec/run-async", json=body)
    assert response.status_code in (200, 202)
    result = response.json()
    if response.status_code == 202:
        exec_id = result["execId"]
        assert result["running"] is True and len(exec_id) == 8
        for _ in range(60):
            polled = await api.get(f"/sandboxes/{sandbox_id}/exec/{exec_id}/result")
            assert polled.status_code == 200
            result = polled.json()
            if not result["running"]:
                break
            await asyncio.sleep(0.2)
    assert (result["exitCode"], result["stdout"]) == (0, "later\n")


async def test_files_round_trip_and_a_missing_one_is_an_error(
    api: httpx.AsyncClient, sandbox_id: str
) -> None:
    path = "/home/sandbox/contract/state.txt"
    put = await api.put(f"/sandboxes/{sandbox_id}/files", params={"path": path}, content=b"v1")
    assert put.status_code == 204
    read = await api.get(f"/sandboxes/{sandbox_id}/files", params={"path": path})
    assert (read.status_code, read.content) == (200, b"v1")
    missing = await api.get(f"/sandboxes/{sandbox_id}/files", params={"path": "/home/sandbox/nope"})
    assert missing.status_code >= 400 and "error" in missing.json()


async def test_the_list_is_a_plain_array_that_holds_a_running_sandbox(
    api: httpx.AsyncClient, sandbox_id: str
) -> None:
    for _ in range(20):  # the hosted index is written just after the create
        listed = (await api.get("/sandboxes")).json()
        assert isinstance(listed, list)
        statuses = {item["sandboxID"]: item["status"] for item in listed}
        if sandbox_id in statuses:
            assert statuses[sandbox_id] == "running"
            return
        await asyncio.sleep(0.5)
    raise AssertionError("the new sandbox never showed in the list")


async def test_kill_is_204_and_repeatable(api: httpx.AsyncClient, sandbox_id: str) -> None:
    assert (await api.delete(f"/sandboxes/{sandbox_id}")).status_code == 204
    assert (await api.delete(f"/sandboxes/{sandbox_id}")).status_code == 204


async def test_an_unknown_sandbox_is_404_with_the_error_envelope(api: httpx.AsyncClient) -> None:
    response = await api.get("/sandboxes/sb-00000000")
    assert response.status_code == 404
    assert response.json() == {"error": "sandbox not found"}
