"""The warm pool: a create of the default shape takes a booted spare; spares are nobody's sandbox."""

from __future__ import annotations

import httpx

from tests.fast.conftest import FastServer
from tests.waiting import until


async def _warm(http: httpx.AsyncClient, local_server: FastServer) -> int:
    return int((await http.get(f"{local_server.url}/_test/stats")).json()["warmSandboxes"])


async def _full(http: httpx.AsyncClient, local_server: FastServer) -> None:
    size = local_server.backend.config.warm_sandboxes
    assert size > 0, "the pool is off: these tests would prove nothing"

    async def full() -> bool:
        return await _warm(http, local_server) == size

    await until(full, what="the warm pool to fill")


async def test_a_default_create_takes_a_spare_and_the_pool_fills_again(
    http: httpx.AsyncClient, created: list[str], local_server: FastServer
) -> None:
    await _full(http, local_server)
    spares = local_server.backend.core.warm.ids
    made = await http.post("/sandboxes", json={})
    assert made.status_code == 201, made.text
    sandbox = made.json()["sandboxID"]
    created.append(sandbox)
    assert sandbox in spares
    ran = await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": "echo", "args": ["ready"]})
    assert ran.status_code == 200, ran.text
    assert ran.json().get("stdout") == "ready\n", ran.text
    await _full(http, local_server)
    # Spares are nobody's: never listed, never found.
    listed = {item["sandboxID"] for item in (await http.get("/sandboxes")).json()}
    for spare in local_server.backend.core.warm.ids:
        assert spare not in listed
        assert (await http.get(f"/sandboxes/{spare}")).status_code == 404


async def test_a_create_of_another_shape_boots_its_own(
    http: httpx.AsyncClient, created: list[str], local_server: FastServer
) -> None:
    await _full(http, local_server)
    spares = local_server.backend.core.warm.ids
    made = await http.post("/sandboxes", json={"memoryMB": 1024})
    assert made.status_code == 201, made.text
    created.append(made.json()["sandboxID"])
    assert made.json()["sandboxID"] not in spares
    assert local_server.backend.core.warm.ids == spares


async def test_spares_do_not_count_against_the_running_cap(
    http: httpx.AsyncClient, created: list[str], local_server: FastServer
) -> None:
    await _full(http, local_server)
    assert (
        await http.put(f"{local_server.url}/_test/limits", json={"maxRunningSandboxes": 1})
    ).status_code == 200
    try:
        first = await http.post("/sandboxes", json={})
        assert first.status_code == 201, first.text
        created.append(first.json()["sandboxID"])
        second = await http.post("/sandboxes", json={})
        assert second.status_code == 429, second.text
    finally:
        await http.put(f"{local_server.url}/_test/limits", json={"maxRunningSandboxes": 50})
