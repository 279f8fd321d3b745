"""Class 5, the one exception: a host loopback port the operator opened (`--allow-host-port`), nothing else.

Only listeners this test starts on loopback and on this host's own interface address are ever contacted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from prefect_opencomputer.local import LocalServer, LocalServerConfig
from prefect_opencomputer.local.config import HOST_ALIAS
from tests.security.conftest import run
from tests.security.test_egress import Listener, host_interface_address

pytestmark = pytest.mark.security

FETCH = "curl -sS --max-time 10 http://{}:{}/"


async def _listen(host: str) -> tuple[Listener, asyncio.Server]:
    state = Listener(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.reached.append(await reader.read(100))
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nreached")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, host, 0)
    state.port = server.sockets[0].getsockname()[1]
    return state, server


@pytest.fixture
async def loopback_pair() -> AsyncIterator[tuple[Listener, Listener]]:
    """Two listeners on the host's loopback: the one the server opens, and one it must not."""
    opened, opened_server = await _listen("127.0.0.1")
    closed, closed_server = await _listen("127.0.0.1")
    yield opened, closed
    for server in (opened_server, closed_server):
        server.close()
        await server.wait_closed()


@pytest.fixture
def opened_server(loopback_pair: tuple[Listener, Listener], tmp_path: Path) -> Iterator[LocalServer]:
    config = LocalServerConfig(data_dir=tmp_path, allow_host_ports=(loopback_pair[0].port,))
    with LocalServer(config) as server:
        yield server


@pytest.fixture
async def opened_sandbox(opened_server: LocalServer) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async with httpx.AsyncClient(
        base_url=opened_server.api_url, headers={"X-API-Key": opened_server.api_key}, timeout=120
    ) as http:
        created = await http.post("/sandboxes", json={"templateID": "base", "timeout": 300})
        assert created.status_code == 201, created.text
        sandbox_id: str = created.json()["sandboxID"]
        try:
            yield http, sandbox_id
        finally:
            await http.delete(f"/sandboxes/{sandbox_id}")


async def test_an_opened_host_port_is_reached_by_name_and_nothing_else_of_the_host(
    opened_sandbox: tuple[httpx.AsyncClient, str], loopback_pair: tuple[Listener, Listener]
) -> None:
    http, sandbox = opened_sandbox
    opened, closed = loopback_pair
    resolved = await run(http, sandbox, f"getent hosts {HOST_ALIAS}")
    assert resolved["stdout"].split()[:1] == ["10.0.2.2"], resolved

    reached = await run(http, sandbox, FETCH.format(HOST_ALIAS, opened.port))
    assert reached["stdout"] == "reached", reached
    assert len(opened.reached) == 1

    # Another loopback port of the host, by the name and by the address.
    for target in (HOST_ALIAS, "10.0.2.2"):
        refused = await run(http, sandbox, FETCH.format(target, closed.port))
        assert "reached" not in refused["stdout"], refused
    # The opened port anywhere else: the sandbox's own loopback, another private address, the host's
    # interface address.
    elsewhere = ["127.0.0.1", "10.0.2.3", "192.168.0.1"]
    interface = host_interface_address()
    if interface is not None:
        elsewhere.append(interface)
    for target in elsewhere:
        refused = await run(http, sandbox, FETCH.format(target, opened.port))
        assert "reached" not in refused["stdout"], (target, refused)
    assert closed.reached == []
    assert len(opened.reached) == 1


async def test_by_default_no_host_port_is_reachable(
    http: httpx.AsyncClient, sandbox: str, loopback_pair: tuple[Listener, Listener]
) -> None:
    opened, _ = loopback_pair
    resolved = await run(http, sandbox, f"getent hosts {HOST_ALIAS}")
    assert "10.0.2.2" not in resolved["stdout"]
    refused = await run(http, sandbox, FETCH.format("10.0.2.2", opened.port))
    assert "reached" not in refused["stdout"], refused
    assert opened.reached == []
