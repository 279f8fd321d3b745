"""Session-wide fixtures: one embedded local server for the whole run, real HTTP everywhere."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from prefect_opencomputer.client import OpenComputerClient
from prefect_opencomputer.local import LocalServer, LocalServerConfig

# Prefect must never phone home or share state with a developer's own profile.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """The embedded OpenComputer-compatible server, with the test control routes on."""
    config = LocalServerConfig(data_dir=tmp_path_factory.mktemp("local-server"), enable_test_routes=True)
    with LocalServer(config) as server:
        yield server


@pytest.fixture
async def oc(local_server: LocalServer) -> AsyncIterator[OpenComputerClient]:
    """Our client, pointed at the local server."""
    async with OpenComputerClient(api_key=local_server.api_key, api_url=local_server.url) as client:
        yield client


@pytest.fixture
async def http(local_server: LocalServer) -> AsyncIterator[httpx.AsyncClient]:
    """Raw HTTP against ``/api``: the wire, without our client in between."""
    async with httpx.AsyncClient(
        base_url=local_server.api_url,
        headers={"X-API-Key": local_server.api_key},
        timeout=120,
    ) as client:
        yield client


@pytest.fixture
async def sandbox(http: httpx.AsyncClient) -> AsyncIterator[str]:
    """A fresh running sandbox id, killed after the test."""
    response = await http.post("/sandboxes", json={"templateID": "base", "timeout": 0})
    assert response.status_code == 201, response.text
    sandbox_id: str = response.json()["sandboxID"]
    yield sandbox_id
    await http.delete(f"/sandboxes/{sandbox_id}")
