"""Preview, scaling, terminal, test-control and not-supported routes: success and error shapes."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import httpx
import pytest
import websockets

from prefect_opencomputer.client import Image
from tests.fast.checkpoints import ready_checkpoint
from tests.fast.conftest import FastServer
from tests.fast.coverage import COVERED, covers, error_of

MISSING = "sb-00000000"


@covers(
    "POST /api/sandboxes/{sandbox_id}/preview",
    "GET /api/sandboxes/{sandbox_id}/preview",
    "POST /api/sandboxes/{sandbox_id}/preview/rotate",
    "DELETE /api/sandboxes/{sandbox_id}/preview/{port}",
)
async def test_previews(http: httpx.AsyncClient, sandbox: str) -> None:
    made = await http.post(f"/sandboxes/{sandbox}/preview", json={"port": 8080})
    assert made.status_code == 201, made.text
    assert (await http.post(f"/sandboxes/{sandbox}/preview", json={"port": 8080})).status_code == 200
    assert [item["port"] for item in (await http.get(f"/sandboxes/{sandbox}/preview")).json()] == [8080]
    rotated = await http.post(f"/sandboxes/{sandbox}/preview/rotate")
    assert rotated.status_code == 200 and rotated.json()["scheme"] == "bearer"
    assert rotated.json()["previewAuthToken"]
    assert (await http.delete(f"/sandboxes/{sandbox}/preview/8080")).status_code == 204
    assert (await http.get(f"/sandboxes/{sandbox}/preview")).json() == []
    bad_port = await http.post(f"/sandboxes/{sandbox}/preview", json={"port": 70000})
    assert bad_port.status_code == 400 and error_of(bad_port.json())
    gone = await http.delete(f"/sandboxes/{sandbox}/preview/8080")
    assert gone.status_code == 404 and error_of(gone.json())
    assert (await http.get(f"/sandboxes/{MISSING}/preview")).status_code == 404
    assert (await http.post(f"/sandboxes/{MISSING}/preview/rotate")).status_code == 404


@covers(
    "POST /api/sandboxes/{sandbox_id}/scale",
    "GET /api/sandboxes/{sandbox_id}/autoscale",
    "PUT /api/sandboxes/{sandbox_id}/autoscale",
    "GET /api/sandboxes/{sandbox_id}/scaling-lock",
    "PUT /api/sandboxes/{sandbox_id}/scaling-lock",
    "POST /api/sandboxes/{sandbox_id}/reboot",
    "POST /api/sandboxes/{sandbox_id}/power-cycle",
)
async def test_scaling_and_restarts(http: httpx.AsyncClient, sandbox: str) -> None:
    scaled = await http.post(f"/sandboxes/{sandbox}/scale", json={"memoryMB": 8192})
    assert scaled.status_code == 200, scaled.text
    listed = {item["sandboxID"]: item for item in (await http.get("/sandboxes")).json()}
    assert (listed[sandbox]["memoryMB"], listed[sandbox]["cpuCount"]) == (8192, 2)
    bad_scale = await http.post(f"/sandboxes/{sandbox}/scale", json={"memoryMB": "lots"})
    assert bad_scale.status_code == 400 and error_of(bad_scale.json())
    autoscale = {"enabled": True, "minMemoryMB": 1024, "maxMemoryMB": 8192}
    put = await http.put(f"/sandboxes/{sandbox}/autoscale", json=autoscale)
    assert put.status_code == 200, put.text
    got = (await http.get(f"/sandboxes/{sandbox}/autoscale")).json()
    assert (got["enabled"], got["minMemoryMB"], got["maxMemoryMB"]) == (True, 1024, 8192)
    bad_autoscale = await http.put(f"/sandboxes/{sandbox}/autoscale", json=[1])
    assert bad_autoscale.status_code == 400 and error_of(bad_autoscale.json())
    locked = await http.put(f"/sandboxes/{sandbox}/scaling-lock", json={"locked": True})
    assert locked.status_code == 200, locked.text
    assert (await http.get(f"/sandboxes/{sandbox}/scaling-lock")).json()["locked"] is True
    bad_lock = await http.put(f"/sandboxes/{sandbox}/scaling-lock", json=[1])
    assert bad_lock.status_code == 400 and error_of(bad_lock.json())
    await http.put(f"/sandboxes/{sandbox}/files", params={"path": "kept.txt"}, content=b"kept")
    for restart in ("reboot", "power-cycle"):
        answered = await http.post(f"/sandboxes/{sandbox}/{restart}")
        assert answered.status_code == 204, answered.text
        assert (await http.get(f"/sandboxes/{sandbox}/files", params={"path": "kept.txt"})).content == b"kept"
    for path in ("autoscale", "scaling-lock"):
        assert (await http.get(f"/sandboxes/{MISSING}/{path}")).status_code == 404
    await http.delete(f"/sandboxes/{sandbox}")
    for restart in ("reboot", "power-cycle"):
        stopped = await http.post(f"/sandboxes/{sandbox}/{restart}")
        assert stopped.status_code == 500  # as the service answers a restart of a stopped sandbox
        assert error_of(stopped.json()) == f"{restart} failed: sandbox {sandbox} is not running"


@covers(
    "POST /api/sandboxes/{sandbox_id}/pty",
    "POST /api/sandboxes/{sandbox_id}/pty/{session_id}/resize",
    "DELETE /api/sandboxes/{sandbox_id}/pty/{session_id}",
    "WS /api/sandboxes/{sandbox_id}/pty/{session_id}",
)
async def test_terminal(http: httpx.AsyncClient, sandbox: str, local_server: FastServer) -> None:
    made = await http.post(f"/sandboxes/{sandbox}/pty", json={"cols": 80, "rows": 24, "shell": "/bin/sh"})
    assert made.status_code == 201, made.text
    session = made.json()["sessionID"]
    assert (
        await http.post(f"/sandboxes/{sandbox}/pty/{session}/resize", json={"cols": 100, "rows": 30})
    ).status_code == 200
    base = local_server.url.replace("http://", "ws://")
    url = f"{base}/api/sandboxes/{sandbox}/pty/{session}?api_key={quote(local_server.api_key)}"
    async with websockets.connect(url) as ws:
        await ws.send(b"echo fast-$((40+2))\n")
        seen = b""
        while b"fast-42" not in seen:
            frame = await ws.recv()
            seen += frame if isinstance(frame, bytes) else frame.encode()
    assert (await http.delete(f"/sandboxes/{sandbox}/pty/{session}")).status_code == 204
    gone = await http.post(f"/sandboxes/{sandbox}/pty/{session}/resize", json={"cols": 1, "rows": 1})
    assert gone.status_code == 404 and error_of(gone.json()) == f"PTY session {session} not found"
    assert (await http.delete(f"/sandboxes/{sandbox}/pty/{session}")).status_code == 404
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"{base}/api/sandboxes/{sandbox}/pty/{session}?api_key=wrong"):
            pass
    assert refused.value.response.status_code in (401, 403, 404)
    assert (await http.post(f"/sandboxes/{MISSING}/pty", json={})).status_code == 404


@covers(
    "POST /_test/reset",
    "GET /_test/stats",
    "PUT /_test/limits",
    "POST /_test/faults",
    "GET /_test/faults",
    "DELETE /_test/faults",
)
async def test_control_routes(local_server: FastServer) -> None:
    async with httpx.AsyncClient(
        base_url=local_server.url, headers={"X-API-Key": local_server.api_key}
    ) as control:
        stats = await control.get("/_test/stats")
        assert stats.status_code == 200 and "liveSandboxes" in stats.json()
        limited = await control.put("/_test/limits", json={"maxRunningSandboxes": 0})
        assert limited.status_code == 200, limited.text
        refused = await control.post("/api/sandboxes", json={})
        assert refused.status_code == 429 and "concurrent sandbox limit" in error_of(refused.json())
        assert (await control.put("/_test/limits", json={"maxRunningSandboxes": -1})).status_code == 400
        fault = await control.post(
            "/_test/faults", json={"method": "GET", "path": "/api/tags", "status": 503, "times": 1}
        )
        assert fault.status_code == 201, fault.text
        assert len((await control.get("/_test/faults")).json()) == 1
        assert (await control.get("/api/tags")).status_code == 503
        assert (await control.get("/api/tags")).status_code == 200
        assert (await control.post("/_test/faults", json={"status": "x"})).status_code == 400
        assert (await control.delete("/_test/faults")).status_code == 204
        assert (await control.get("/_test/faults")).json() == []
        assert (await control.post("/_test/reset")).status_code == 204
        assert (await control.get("/_test/stats")).json()["liveSandboxes"] == 0
        assert (await control.post("/api/sandboxes", json={})).status_code == 201  # the limit is back
        anonymous = await control.get("/_test/stats", headers={"X-API-Key": "wrong"})
        assert anonymous.status_code == 401 and error_of(anonymous.json())
        await control.post("/_test/reset")


UNSUPPORTED = (
    "/api/capacity/{rest:path}",
    "/api/images/{name}/patches",
    "/api/images/{name}/patches/{rest:path}",
    "/api/sandboxes/checkpoints/{checkpoint_id}/publish",
    "/api/sandboxes/checkpoints/{checkpoint_id}/unpublish",
    "/api/sandboxes/{sandbox_id}/agent",
    "/api/sandboxes/{sandbox_id}/agent/{rest:path}",
    "/api/sandboxes/{sandbox_id}/allowed-hosts",
    "/api/sandboxes/{sandbox_id}/limits",
    "/api/sandboxes/{sandbox_id}/logs",
    "/api/sandboxes/{sandbox_id}/migrate",
    "/api/sandboxes/{sandbox_id}/mounts",
    "/api/sandboxes/{sandbox_id}/mounts/{rest:path}",
    "/api/sandboxes/{sandbox_id}/token/refresh",
    "/api/secret-stores",
    "/api/secret-stores/{rest:path}",
    "/api/secrets",
    "/api/secrets/{rest:path}",
    "/api/snapshots/{name}/publish",
    "/api/snapshots/{name}/unpublish",
    "/api/templates",
    "/api/templates/{rest:path}",
    "/api/webhooks",
    "/api/webhooks/{rest:path}",
)
for _path in UNSUPPORTED:
    COVERED.update({("*", _path), ("WS", _path)})


@pytest.mark.parametrize("path", UNSUPPORTED)
async def test_what_the_local_server_does_not_do_is_a_clear_501(
    http: httpx.AsyncClient, sandbox: str, path: str
) -> None:
    checkpoint = await ready_checkpoint(http, sandbox) if "{checkpoint_id}" in path else "c"
    name = "n"
    if path.startswith("/api/snapshots/{name}"):
        name = f"fast-{uuid.uuid4().hex[:8]}"
        built = await http.post("/snapshots", json={"name": name, "image": Image.base().to_dict()})
        assert built.status_code == 201, built.text
    concrete = path.replace("{rest:path}", "x/y").replace("{sandbox_id}", sandbox)
    concrete = concrete.replace("{checkpoint_id}", checkpoint).replace("{name}", name).removeprefix("/api")
    for method in ("GET", "POST"):
        answered = await http.request(method, concrete)
        assert answered.status_code == 501, (method, concrete, answered.text)
        assert error_of(answered.json())
    if "{checkpoint_id}" in path:
        unknown = await http.get(concrete.replace(checkpoint, str(uuid.uuid4())))
        assert unknown.status_code == 404 and error_of(unknown.json()) == "checkpoint not found"
    if "{sandbox_id}" in path:
        unknown = await http.get(concrete.replace(sandbox, MISSING))
        assert unknown.status_code == 404 and error_of(unknown.json()) == "sandbox not found"
    unauthenticated = await http.get(concrete, headers={"X-API-Key": "wrong"})
    assert unauthenticated.status_code == 401
