"""The test control routes: off unless enabled, key-protected, reset and stats that tests rely on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from prefect_opencomputer.local import LocalServer, LocalServerConfig


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    # Reset kills every sandbox: it gets a server of its own, not the session's shared one.
    config = LocalServerConfig(data_dir=tmp_path_factory.mktemp("control"), enable_test_routes=True)
    with LocalServer(config) as server:
        yield server


@pytest.fixture
async def control(own_server: LocalServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=own_server.url, headers={"X-API-Key": own_server.api_key}, timeout=60
    ) as client:
        yield client


async def test_control_routes_need_the_api_key(own_server: LocalServer) -> None:
    async with httpx.AsyncClient(base_url=own_server.url) as client:
        response = await client.get("/_test/stats")
    assert response.status_code == 401


async def test_stats_count_api_requests_but_not_control_requests(control: httpx.AsyncClient) -> None:
    assert (await control.post("/_test/reset")).status_code == 204
    for _ in range(3):
        assert (await control.get("/api/sandboxes")).status_code == 200
    await control.get("/api/no-such-route")
    stats = (await control.get("/_test/stats")).json()
    assert stats["requestsServed"] == 4
    assert (await control.get("/_test/stats")).json()["requestsServed"] == 4


async def test_reset_kills_every_sandbox_and_zeroes_the_counters(control: httpx.AsyncClient) -> None:
    created = [await control.post("/api/sandboxes", json={"templateID": "base"}) for _ in range(2)]
    assert all(response.status_code == 201 for response in created)
    before = (await control.get("/_test/stats")).json()
    assert before["liveSandboxes"] >= 2
    assert before["peakSandboxes"] >= 2

    assert (await control.post("/_test/reset")).status_code == 204

    after = (await control.get("/_test/stats")).json()
    counters = ("liveSandboxes", "peakSandboxes", "requestsServed")
    assert {name: after[name] for name in counters} == dict.fromkeys(counters, 0)
    assert after["warmSandboxes"] >= 0  # spares are not sandboxes: the pool refills after a reset
    assert (await control.get("/api/sandboxes")).json() == []


async def test_peak_sandboxes_remembers_the_most_alive_at_once(control: httpx.AsyncClient) -> None:
    await control.post("/_test/reset")
    ids = [(await control.post("/api/sandboxes", json={})).json()["sandboxID"] for _ in range(2)]
    for sandbox_id in ids:
        assert (await control.delete(f"/api/sandboxes/{sandbox_id}")).status_code == 204
    stats = (await control.get("/_test/stats")).json()
    assert stats["liveSandboxes"] == 0
    assert stats["peakSandboxes"] == 2


async def test_reset_clears_injected_faults(control: httpx.AsyncClient) -> None:
    added = await control.post("/_test/faults", json={"path": "/api/*", "status": 503, "times": 0})
    assert added.status_code == 201
    await control.post("/_test/reset")
    assert (await control.get("/_test/faults")).json() == []
    assert (await control.get("/api/sandboxes")).status_code == 200
