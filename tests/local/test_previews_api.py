"""Preview URL routes on the wire: idempotent create, hostname, list, delete, token rotation."""

from __future__ import annotations

import asyncio
import re

import httpx

from prefect_opencomputer.local import LocalServer


def _previews(sandbox: str) -> str:
    return f"/sandboxes/{sandbox}/preview"


async def test_create_is_201_then_200_with_the_same_preview(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    created = await http.post(_previews(sandbox), json={"port": 3000})
    assert created.status_code == 201
    body = created.json()
    assert re.match(r"^[0-9a-f-]{36}$", body["id"])
    assert body["sandboxId"] == sandbox
    assert body["port"] == 3000
    assert body["sslStatus"] == "active"
    assert body["authConfig"] == {}
    assert body["hostname"] == f"{sandbox}-p3000.{local_server.config.effective_preview_domain}"
    again = await http.post(_previews(sandbox), json={"port": 3000, "authConfig": {"ignored": True}})
    assert again.status_code == 200
    assert again.json() == body


async def test_list_and_delete(http: httpx.AsyncClient, sandbox: str) -> None:
    assert (await http.get(_previews(sandbox))).json() == []
    for port in (8000, 8001):
        await http.post(_previews(sandbox), json={"port": port, "authConfig": {"mode": "open"}})
    listed = (await http.get(_previews(sandbox))).json()
    assert [(item["port"], item["authConfig"]) for item in listed] == [
        (8000, {"mode": "open"}),
        (8001, {"mode": "open"}),
    ]
    assert (await http.delete(f"{_previews(sandbox)}/8000")).status_code == 204
    assert [item["port"] for item in (await http.get(_previews(sandbox))).json()] == [8001]
    missing = await http.delete(f"{_previews(sandbox)}/8000")
    assert (missing.status_code, missing.json()) == (404, {"error": "no preview URL for this port"})
    for port in ("0", "70000", "http"):
        bad = await http.delete(f"{_previews(sandbox)}/{port}")
        assert (bad.status_code, bad.json()) == (400, {"error": "invalid port"})


async def test_port_must_be_in_range(http: httpx.AsyncClient, sandbox: str) -> None:
    for body in ({}, {"port": 0}, {"port": 65536}):
        response = await http.post(_previews(sandbox), json=body)
        assert (response.status_code, response.json()) == (400, {"error": "port must be between 1 and 65535"})


async def test_sandbox_must_be_running(http: httpx.AsyncClient, sandbox: str) -> None:
    await http.post(f"/sandboxes/{sandbox}/hibernate")
    response = await http.post(_previews(sandbox), json={"port": 80})
    assert (response.status_code, response.json()) == (400, {"error": "sandbox is not running or not found"})
    response = await http.post(_previews("sb-00000000"), json={"port": 80})
    assert response.status_code == 400


async def test_custom_domain_is_refused(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await http.post(_previews(sandbox), json={"port": 80, "domain": "example.com"})
    assert (response.status_code, response.json()) == (400, {"error": "org has no custom domain configured"})


async def test_kill_deletes_the_sandbox_previews(http: httpx.AsyncClient, sandbox: str) -> None:
    await http.post(_previews(sandbox), json={"port": 80})
    await http.delete(f"/sandboxes/{sandbox}")
    assert (await http.get(_previews(sandbox))).json() == []


async def test_preview_traffic_wakes_a_hibernated_sandbox(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    hostname = (await http.post(_previews(sandbox), json={"port": 9})).json()["hostname"]
    await http.post(f"/sandboxes/{sandbox}/hibernate")
    async with httpx.AsyncClient() as browser:
        response = await browser.get(f"{local_server.url}/", headers={"Host": hostname})
    assert response.status_code == 502  # nothing listens on port 9, but the sandbox is up again
    assert (await http.get(f"/sandboxes/{sandbox}")).json()["status"] == "running"


async def test_rotating_the_token_gates_the_preview_and_revokes_the_old_token(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    await http.post(
        f"/sandboxes/{sandbox}/exec/run",
        json={
            "cmd": "cd /tmp && echo gated > index.html && nohup python3 -m http.server 8123 >/dev/null 2>&1 &"
        },
    )
    hostname = (await http.post(_previews(sandbox), json={"port": 8123})).json()["hostname"]
    first = await http.post(f"{_previews(sandbox)}/rotate")
    assert first.status_code == 200
    assert first.json()["scheme"] == "bearer"
    token = first.json()["previewAuthToken"]
    assert re.match(r"^[A-Za-z0-9_-]{43}$", token)
    second = (await http.post(f"{_previews(sandbox)}/rotate")).json()["previewAuthToken"]
    async with httpx.AsyncClient(base_url=local_server.url, timeout=30) as browser:
        for _ in range(50):
            ok = await browser.get("/index.html", headers={"Host": hostname, "X-OC-Preview-Token": second})
            if ok.status_code == 200:
                break
            await asyncio.sleep(0.1)  # the server is still starting
        assert ok.text == "gated\n"
        bearer = await browser.get(
            "/index.html", headers={"Host": hostname, "Authorization": f"Bearer {second}"}
        )
        assert bearer.status_code == 200
        assert (await browser.get("/index.html", headers={"Host": hostname})).status_code == 401
        old = await browser.get("/index.html", headers={"Host": hostname, "X-OC-Preview-Token": token})
        assert old.status_code == 401


async def test_rotating_a_killed_sandbox_is_410(http: httpx.AsyncClient, sandbox: str) -> None:
    await http.delete(f"/sandboxes/{sandbox}")
    response = await http.post(f"{_previews(sandbox)}/rotate")
    assert response.status_code == 410
