"""Sandbox lifecycle, tags, timeout and usage routes: success and error shapes over real HTTP."""

from __future__ import annotations

import httpx

from tests.fast.coverage import covers, error_of
from tests.waiting import until

MISSING = "sb-00000000"


@covers("POST /api/sandboxes", "GET /api/sandboxes/{sandbox_id}", "GET /api/sandboxes")
async def test_create_get_and_list(http: httpx.AsyncClient, created: list[str]) -> None:
    made = await http.post("/sandboxes", json={"templateID": "base", "memoryMB": 1024})
    assert made.status_code == 201, made.text
    sandbox_id = made.json()["sandboxID"]
    created.append(sandbox_id)
    got = (await http.get(f"/sandboxes/{sandbox_id}")).json()
    assert (got["status"], got["template"]) == ("running", "base")
    listed = {item["sandboxID"]: item for item in (await http.get("/sandboxes")).json()}
    assert (listed[sandbox_id]["memoryMB"], listed[sandbox_id]["cpuCount"]) == (1024, 1)
    unknown_template = await http.post("/sandboxes", json={"templateID": "no-such-template"})
    assert unknown_template.status_code == 404
    assert "template not found" in error_of(unknown_template.json())
    too_big = await http.post("/sandboxes", json={"memoryMB": 999999})
    assert too_big.status_code == 400 and "memoryMB" in error_of(too_big.json())
    missing = await http.get(f"/sandboxes/{MISSING}")
    assert missing.status_code == 404 and error_of(missing.json()) == "sandbox not found"


@covers("DELETE /api/sandboxes/{sandbox_id}")
async def test_kill_is_repeatable_and_unknown_is_404(http: httpx.AsyncClient, sandbox: str) -> None:
    assert (await http.delete(f"/sandboxes/{sandbox}")).status_code == 204
    assert (await http.delete(f"/sandboxes/{sandbox}")).status_code == 204
    assert (await http.get(f"/sandboxes/{sandbox}")).json()["status"] == "stopped"
    ran = await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": "true"})
    assert ran.status_code == 410, ran.text
    missing = await http.delete(f"/sandboxes/{MISSING}")
    assert missing.status_code == 404 and error_of(missing.json())


@covers("POST /api/sandboxes/{sandbox_id}/timeout")
async def test_timeout(http: httpx.AsyncClient, sandbox: str) -> None:
    # Idle past its new timeout, the sandbox hibernates on its own.
    assert (await http.post(f"/sandboxes/{sandbox}/timeout", json={"timeout": 1})).status_code == 204

    async def hibernated() -> bool:
        return (await http.get(f"/sandboxes/{sandbox}")).json()["status"] == "hibernated"

    await until(hibernated, what="the idle sandbox to hibernate", timeout=30)
    negative = await http.post(f"/sandboxes/{sandbox}/timeout", json={"timeout": -1})
    assert negative.status_code == 400 and "non-negative" in error_of(negative.json())
    missing = await http.post(f"/sandboxes/{MISSING}/timeout", json={"timeout": 1})
    assert missing.status_code == 404


@covers("POST /api/sandboxes/{sandbox_id}/hibernate", "POST /api/sandboxes/{sandbox_id}/wake")
async def test_hibernate_keeps_files_and_wake_brings_it_back(http: httpx.AsyncClient, sandbox: str) -> None:
    wrote = await http.put(f"/sandboxes/{sandbox}/files", params={"path": "kept.txt"}, content=b"kept")
    assert wrote.status_code == 204
    hibernated = await http.post(f"/sandboxes/{sandbox}/hibernate")
    assert hibernated.status_code == 200, hibernated.text
    assert (await http.get(f"/sandboxes/{sandbox}")).json()["status"] == "hibernated"
    assert (await http.post(f"/sandboxes/{sandbox}/hibernate")).status_code == 200  # idempotent
    woke = await http.post(f"/sandboxes/{sandbox}/wake", json={"timeout": 0})
    assert woke.status_code == 200, woke.text
    assert (await http.get(f"/sandboxes/{sandbox}")).json()["status"] == "running"
    assert (await http.get(f"/sandboxes/{sandbox}/files", params={"path": "kept.txt"})).content == b"kept"
    await http.delete(f"/sandboxes/{sandbox}")
    stopped = await http.post(f"/sandboxes/{sandbox}/hibernate")
    assert stopped.status_code == 400 and error_of(stopped.json()) == "sandbox is not running"
    not_hibernated = await http.post(f"/sandboxes/{sandbox}/wake")
    assert not_hibernated.status_code == 400
    assert error_of(not_hibernated.json()) == "sandbox is not hibernated"


@covers("GET /api/sandboxes/{sandbox_id}/tags", "PUT /api/sandboxes/{sandbox_id}/tags", "GET /api/tags")
async def test_tags(http: httpx.AsyncClient, sandbox: str) -> None:
    put = await http.put(f"/sandboxes/{sandbox}/tags", json={"team": "data", "env": "fast"})
    assert put.status_code == 200, put.text
    got = await http.get(f"/sandboxes/{sandbox}/tags")
    assert got.status_code == 200 and got.json()["tags"] == {"team": "data", "env": "fast"}
    keys = {item["key"]: item for item in (await http.get("/tags")).json()["keys"]}
    assert keys["team"]["sandboxCount"] >= 1
    bad = await http.put(f"/sandboxes/{sandbox}/tags", json=["not", "a", "map"])
    assert bad.status_code == 400 and error_of(bad.json())
    assert (await http.get(f"/sandboxes/{MISSING}/tags")).status_code == 404


@covers("GET /api/sandboxes/{sandbox_id}/usage", "GET /api/usage")
async def test_usage(http: httpx.AsyncClient, sandbox: str) -> None:
    usage = await http.get(f"/sandboxes/{sandbox}/usage")
    assert usage.status_code == 200, usage.text
    assert usage.json()["sandboxId"] == sandbox
    report = await http.get("/usage", params={"groupBy": "sandbox"})
    assert report.status_code == 200, report.text
    bad_window = await http.get(f"/sandboxes/{sandbox}/usage", params={"from": "yesterday"})
    assert bad_window.status_code == 400 and error_of(bad_window.json())
    bad_query = await http.get("/usage", params={"groupBy": "nonsense"})
    assert bad_query.status_code == 400 and error_of(bad_query.json())
