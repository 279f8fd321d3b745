"""Isolation as an API user sees it: what one sandbox does stays in it, and the host stays out of reach."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from prefect_opencomputer.local import LocalServer
from prefect_opencomputer.local.sandbox import rootfs


async def run(http: httpx.AsyncClient, sandbox: str, script: str) -> dict[str, object]:
    response = await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": script, "timeout": 30})
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


@pytest.fixture
async def other_sandbox(http: httpx.AsyncClient) -> AsyncIterator[str]:
    response = await http.post("/sandboxes", json={"timeout": 0})
    assert response.status_code == 201, response.text
    sandbox_id: str = response.json()["sandboxID"]
    yield sandbox_id
    await http.delete(f"/sandboxes/{sandbox_id}")


async def test_a_file_written_to_etc_is_seen_neither_by_the_host_nor_by_another_sandbox(
    http: httpx.AsyncClient, sandbox: str, other_sandbox: str
) -> None:
    name = f"oc-isolation-{uuid.uuid4().hex[:8]}"
    written = await http.put(f"/sandboxes/{sandbox}/files", params={"path": f"/etc/{name}"}, content=b"mine")
    assert written.status_code == 204, written.text

    assert (await run(http, sandbox, f"cat /etc/{name}"))["stdout"] == "mine"
    assert not Path("/etc", name).exists()
    elsewhere = await run(http, other_sandbox, f"cat /etc/{name}")
    assert elsewhere["exitCode"] != 0
    missing = await http.get(f"/sandboxes/{other_sandbox}/files", params={"path": f"/etc/{name}"})
    assert missing.status_code == 404


async def test_the_host_homes_and_the_server_data_dir_are_out_of_reach(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    private = [str(local_server.data_dir), "/root", *(str(p) for p in Path("/home").iterdir())]
    for path in private:
        listing = await run(http, sandbox, f"ls -A {path} 2>/dev/null | grep -v '^sandbox$'")
        assert listing["stdout"] == "", path
        answer = await http.get(f"/sandboxes/{sandbox}/files/list", params={"path": path})
        entries = [] if answer.status_code != 200 else [e["name"] for e in answer.json() or []]
        # What the sandbox shows there is its template's (a root with a .bashrc), never the host's.
        assert not set(entries) & await host_only(path), (path, entries)
    state_db = local_server.data_dir / "state.db"
    assert state_db.exists()
    probe = await run(http, sandbox, f"cat {state_db}")
    assert probe["exitCode"] != 0


async def test_a_symlink_to_the_host_leads_nowhere(http: httpx.AsyncClient, sandbox: str) -> None:
    await run(http, sandbox, "ln -s /proc/self/root/etc host-etc; ln -s ../../../../../.. up")
    for path in ("/home/sandbox/host-etc/hostname", "../../../etc/hostname"):
        response = await http.get(f"/sandboxes/{sandbox}/files", params={"path": path})
        assert response.status_code in (400, 404), (path, response.status_code)
        assert response.headers["content-type"].startswith("application/json")
    # A link climbing above the root stops at the sandbox's own root: its /etc, never this host's.
    response = await http.get(f"/sandboxes/{sandbox}/files", params={"path": "/home/sandbox/up/etc/hostname"})
    assert response.status_code == 200, response.status_code
    assert response.text == f"{sandbox}\n"


async def test_a_background_server_keeps_serving_between_commands_and_through_its_preview(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    started = await run(
        http, sandbox, "nohup python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 & echo started"
    )
    assert started["stdout"] == "started\n"
    fetch = "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/').status)\""
    for _ in range(100):
        answer = await run(http, sandbox, fetch)
        if answer["exitCode"] == 0:
            break
        await asyncio.sleep(0.05)
    assert answer["stdout"] == "200\n"

    preview = await http.post(f"/sandboxes/{sandbox}/preview", json={"port": 8000})
    hostname = preview.json()["hostname"]
    assert hostname.startswith(f"{sandbox}-p8000.")
    async with httpx.AsyncClient(base_url=local_server.url) as browser:
        page = await browser.get("/", headers={"Host": hostname})
    assert page.status_code == 200
    assert "Directory listing" in page.text


async def test_sandboxes_run_as_an_unprivileged_user_with_their_own_process_tree(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    result = await run(http, sandbox, "id -u; ps -eo pid= | wc -l")
    uid, processes = str(result["stdout"]).split()
    assert uid == "1000"
    assert int(processes) < 10  # its own PID namespace, not the host's hundreds


async def test_network_enabled_false_gives_a_sandbox_no_way_out(http: httpx.AsyncClient) -> None:
    created = await http.post("/sandboxes", json={"networkEnabled": False})
    assert created.status_code == 201, created.text
    offline = created.json()["sandboxID"]
    try:
        interfaces = "tail -n +3 /proc/net/dev | cut -d: -f1"
        result = await run(http, offline, f"getent hosts pypi.org || echo unresolved; {interfaces}")
        assert str(result["stdout"]).split() == ["unresolved", "lo"]

        checkpoint = await http.post(f"/sandboxes/{offline}/checkpoints", json={"name": "offline"})
        checkpoint_id = checkpoint.json()["id"]
        for _ in range(200):
            listed = (await http.get(f"/sandboxes/{offline}/checkpoints")).json()
            if listed[0]["status"] == "ready":
                break
            await asyncio.sleep(0.05)
        assert listed[0]["sandboxConfig"]["networkEnabled"] is False
        fork = (await http.post(f"/sandboxes/from-checkpoint/{checkpoint_id}", json={})).json()["sandboxID"]
        try:
            probe = await run(http, fork, "getent hosts pypi.org || echo unresolved")
            assert str(probe["stdout"]).strip() == "unresolved"
        finally:
            await http.delete(f"/sandboxes/{fork}")
    finally:
        await http.delete(f"/sandboxes/{offline}")


@pytest.mark.slow
async def test_sandboxes_reach_registries_directly_without_proxy_settings(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    script = "env | grep -ci _proxy; curl -sS -o /dev/null -w '%{http_code}' https://pypi.org/simple/six/"
    result = await run(http, sandbox, script + " || true")
    assert str(result["stdout"]).split() == ["0", "200"]


async def host_only(path: str) -> set[str]:
    """Names in a host directory that the default template's tree does not have there."""
    tree = await rootfs.ensure_rootfs("default")
    try:
        host_names = set(os.listdir(path))
    except OSError:
        return set()
    template_path = tree / path.lstrip("/")
    template_names = set(os.listdir(template_path)) if template_path.is_dir() else set()
    return host_names - template_names
