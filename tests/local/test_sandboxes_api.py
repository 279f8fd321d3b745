"""Sandbox routes of the local server, on the wire: shapes, validation, lifecycle and idle timeout."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from prefect_opencomputer.local.backend.records import SandboxRecord, SandboxStatus
from prefect_opencomputer.local.backend.service import LocalBackend
from prefect_opencomputer.local.backend.state import StateStore
from prefect_opencomputer.local.config import LocalServerConfig
from tests.fast.standin import StandinRuntime

SANDBOX_ID = re.compile(r"^sb-[0-9a-f]{8}$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
RFC3339_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def _create(http: httpx.AsyncClient, created: list[str], **body: object) -> httpx.Response:
    response = await http.post("/sandboxes", json=body)
    if response.status_code == 201:
        created.append(response.json()["sandboxID"])
    return response


async def _status(http: httpx.AsyncClient, sandbox_id: str) -> str:
    status: str = (await http.get(f"/sandboxes/{sandbox_id}")).json()["status"]
    return status


async def test_create_answers_201_with_the_control_plane_shape(
    http: httpx.AsyncClient, created: list[str]
) -> None:
    response = await _create(http, created, templateID="base", timeout=0)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"sandboxID", "token", "status", "region", "workerID", "sandboxDomain"}
    assert SANDBOX_ID.match(body["sandboxID"])
    assert body["status"] == "running"
    assert body["workerID"] == "local"
    assert body["token"]


async def test_get_shows_template_tags_and_start_time(http: httpx.AsyncClient, created: list[str]) -> None:
    sandbox_id = (await _create(http, created, templateID="python")).json()["sandboxID"]
    body = (await http.get(f"/sandboxes/{sandbox_id}")).json()
    assert body["sandboxID"] == sandbox_id
    assert body["status"] == "running"
    assert body["template"] == "python"
    assert body["tags"] == {}
    assert body["tagsLastUpdatedAt"] is None
    assert RFC3339.match(body["startedAt"])
    assert {"token", "region", "workerID", "sandboxDomain"} <= set(body)
    assert "patchError" not in body


@pytest.mark.parametrize("template", ["", "default", "base", "ubuntu", "python", "node"])
async def test_every_builtin_template_creates_a_sandbox(
    http: httpx.AsyncClient, created: list[str], template: str
) -> None:
    assert (await _create(http, created, templateID=template)).status_code == 201


async def test_unknown_template_is_404(http: httpx.AsyncClient, created: list[str]) -> None:
    response = await _create(http, created, templateID="nosuch")
    assert response.status_code == 404
    assert response.json() == {"error": "template not found: nosuch"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"memoryMB": 2048}, "memoryMB must be one of: 1024, 4096, 8192, 16384 (got 2048)"),
        (
            {"memoryMB": 32768},
            "memoryMB=32768 exceeds the largest self-serve tier (16384 MB). "
            "Contact us for enterprise sizing.",
        ),
        ({"cpuCount": 3}, "cpuCount must be one of: 1, 2, 4 (got 3)"),
        (
            {"cpuCount": 8},
            "cpuCount=8 exceeds the largest self-serve tier (4 vCPU). Contact us for enterprise sizing.",
        ),
        (
            {"cpuCount": 2, "memoryMB": 4096},
            "cpuCount 2 and memoryMB 4096 do not match an allowed tier; valid combinations: "
            "1/1024, 1/4096, 2/8192, 4/16384, 8/32768, 16/65536",
        ),
        ({"diskMB": 1024}, "diskMB must be at least 20480 (20GB)"),
        ({"diskMB": 300000}, "diskMB cannot exceed 262144 (256GB)"),
        ({"previewAuth": {"scheme": "basic"}}, 'previewAuth.scheme must be "bearer" (got "basic")'),
        (
            {"previewAuth": {"token": "short"}},
            'previewAuth.token must be omitted, "auto", or a string of at least 16 characters',
        ),
        ({"secretStore": "vault"}, "secret store not found: vault"),
    ],
)
async def test_invalid_sizes_and_options_are_400_with_the_service_message(
    http: httpx.AsyncClient, created: list[str], body: dict[str, object], message: str
) -> None:
    response = await _create(http, created, **body)
    assert response.status_code == 400
    assert response.json() == {"error": message}


@pytest.mark.parametrize("body", [{"cpuCount": 2}, {"memoryMB": 16384, "cpuCount": 4}, {"diskMB": 40960}])
async def test_valid_tiers_are_accepted(
    http: httpx.AsyncClient, created: list[str], body: dict[str, object]
) -> None:
    assert (await _create(http, created, **body)).status_code == 201


async def test_preview_auth_auto_returns_a_generated_token_once(
    http: httpx.AsyncClient, created: list[str]
) -> None:
    body = (await _create(http, created, previewAuth={"scheme": "bearer", "token": "auto"})).json()
    assert re.match(r"^[A-Za-z0-9_-]{43}$", body["previewAuthToken"])
    assert "previewAuthToken" not in (await http.get(f"/sandboxes/{body['sandboxID']}")).json()
    own = (await _create(http, created, previewAuth={"token": "x" * 16})).json()
    assert own["previewAuthToken"] == "x" * 16


async def test_create_from_an_unknown_snapshot_is_400_and_creates_nothing(
    http: httpx.AsyncClient, created: list[str]
) -> None:
    before = len((await http.get("/sandboxes")).json())
    response = await _create(http, created, snapshot="no-such-snapshot")
    assert response.status_code == 400
    assert response.json()["error"].startswith('snapshot "no-such-snapshot" not found')
    assert len((await http.get("/sandboxes")).json()) == before


async def test_malformed_body_is_400_invalid_request_body(http: httpx.AsyncClient) -> None:
    response = await http.post("/sandboxes", content=b"{", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("invalid request body")
    response = await http.post("/sandboxes", json={"timeout": "soon"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("invalid request body")


async def test_negative_timeout_is_normalised_not_refused(
    http: httpx.AsyncClient, created: list[str]
) -> None:
    assert (await _create(http, created, timeout=-5)).status_code == 201


async def test_list_shows_every_status_newest_first_in_the_hosted_edge_shape(
    http: httpx.AsyncClient, created: list[str]
) -> None:
    running = (await _create(http, created)).json()["sandboxID"]
    sleeping = (await _create(http, created)).json()["sandboxID"]
    killed = (await _create(http, created)).json()["sandboxID"]
    assert (await http.post(f"/sandboxes/{sleeping}/hibernate")).status_code == 200
    assert (await http.delete(f"/sandboxes/{killed}")).status_code == 204
    listed = (await http.get("/sandboxes")).json()
    statuses = {item["sandboxID"]: item["status"] for item in listed}
    assert statuses[running] == "running"
    assert statuses[sleeping] == "hibernated"
    assert statuses[killed] == "stopped"
    ids = [item["sandboxID"] for item in listed]
    assert ids.index(killed) < ids.index(sleeping) < ids.index(running)  # newest first
    by_id = {item["sandboxID"]: item for item in listed}
    assert set(by_id[running]) == {
        "sandboxID",
        "templateID",
        "cellID",
        "workerID",
        "status",
        "cpuCount",
        "memoryMB",
        "startedAt",
        "endAt",
    }
    assert by_id[running]["endAt"] == "0001-01-01T00:00:00Z"
    assert by_id[killed]["endAt"] != "0001-01-01T00:00:00Z"
    assert by_id[running]["templateID"] == "base"
    assert (by_id[running]["cpuCount"], by_id[running]["memoryMB"]) == (1, 4096)


def test_list_holds_the_newest_200_and_never_an_unacknowledged_create(tmp_path: Path) -> None:
    backend = LocalBackend(
        LocalServerConfig(data_dir=tmp_path, api_key="k"), StandinRuntime(tmp_path / "runtime")
    )
    store = StateStore(tmp_path / "state.db")
    backend.core.open(store)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(205):
        status: SandboxStatus = "pending" if n == 204 else "stopped"
        store.save_sandbox(
            SandboxRecord(f"sb-{n:08x}", status, "base", 0, 1, 4096, 20480, "t", start + timedelta(seconds=n))
        )
    listed = [record.id for record in backend.sandboxes.listed()]
    assert len(listed) == 200
    assert listed[0] == f"sb-{203:08x}" and listed[-1] == f"sb-{4:08x}"
    store.close()


async def test_kill_is_204_repeatable_and_get_then_reports_stopped(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    assert (await http.delete(f"/sandboxes/{sandbox}")).status_code == 204
    assert (await http.delete(f"/sandboxes/{sandbox}")).status_code == 204
    response = await http.get(f"/sandboxes/{sandbox}")
    assert response.status_code == 200
    assert response.json()["status"] == "stopped"
    listed = {item["sandboxID"]: item["status"] for item in (await http.get("/sandboxes")).json()}
    assert listed[sandbox] == "stopped"  # the hosted list keeps killed sandboxes


async def test_unknown_sandbox_is_404_everywhere(http: httpx.AsyncClient) -> None:
    for response in (
        await http.get("/sandboxes/sb-00000000"),
        await http.delete("/sandboxes/sb-00000000"),
        await http.post("/sandboxes/sb-00000000/exec/run", json={"cmd": "true"}),
        await http.post("/sandboxes/sb-00000000/hibernate"),
    ):
        assert response.status_code == 404
        assert response.json() == {"error": "sandbox not found"}


async def test_data_calls_on_a_killed_sandbox_are_410(http: httpx.AsyncClient, sandbox: str) -> None:
    await http.delete(f"/sandboxes/{sandbox}")
    gone = {"error": f"sandbox {sandbox} has been stopped"}
    for response in (
        await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": "true"}),
        await http.get(f"/sandboxes/{sandbox}/files", params={"path": "/etc/hostname"}),
        await http.post(f"/sandboxes/{sandbox}/timeout", json={"timeout": 10}),
    ):
        assert response.status_code == 410
        assert response.json() == gone


async def test_set_timeout_accepts_zero_and_refuses_negative(http: httpx.AsyncClient, sandbox: str) -> None:
    assert (await http.post(f"/sandboxes/{sandbox}/timeout", json={"timeout": 0})).status_code == 204
    assert (await http.post(f"/sandboxes/{sandbox}/timeout", json={"timeout": 300})).status_code == 204
    response = await http.post(f"/sandboxes/{sandbox}/timeout", json={"timeout": -1})
    assert response.status_code == 400
    assert response.json() == {"error": "timeout must be non-negative (0 = no timeout)"}


async def test_hibernate_and_wake_are_idempotent(http: httpx.AsyncClient, sandbox: str) -> None:
    for _ in range(2):
        response = await http.post(f"/sandboxes/{sandbox}/hibernate")
        assert response.status_code == 200
        assert response.json() == {"sandboxID": sandbox, "status": "hibernated"}
    body = (await http.get(f"/sandboxes/{sandbox}")).json()
    assert body["status"] == "hibernated"
    assert "token" not in body
    assert "workerID" not in body
    for _ in range(2):
        response = await http.post(f"/sandboxes/{sandbox}/wake", json={"timeout": 30})
        assert response.status_code == 200
        assert response.json() == {"sandboxID": sandbox, "status": "running"}
    assert await _status(http, sandbox) == "running"


async def test_hibernate_or_wake_a_killed_sandbox_is_400(http: httpx.AsyncClient, sandbox: str) -> None:
    await http.delete(f"/sandboxes/{sandbox}")
    response = await http.post(f"/sandboxes/{sandbox}/hibernate")
    assert (response.status_code, response.json()) == (400, {"error": "sandbox is not running"})
    response = await http.post(f"/sandboxes/{sandbox}/wake")
    assert (response.status_code, response.json()) == (400, {"error": "sandbox is not hibernated"})


async def test_hibernation_pauses_processes_and_wake_resumes_them(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    run = await http.post(
        f"/sandboxes/{sandbox}/exec/run",
        json={"cmd": "echo kept > note.txt; nohup sleep 1000 >/dev/null 2>&1 &"},
    )
    assert run.json()["exitCode"] == 0
    await http.post(f"/sandboxes/{sandbox}/hibernate")
    # Any data call wakes it: no explicit wake needed.
    after = await http.post(
        f"/sandboxes/{sandbox}/exec/run", json={"cmd": 'cat note.txt; pgrep -cf "slee[p] 1000" || true'}
    )
    # Like the hosted pause: the background process kept its memory and runs again after the wake.
    assert after.json()["stdout"] == "kept\n1\n"
    assert await _status(http, sandbox) == "running"


@pytest.mark.slow
async def test_idle_timeout_hibernates_and_a_data_call_wakes_with_files_intact(
    http: httpx.AsyncClient, created: list[str]
) -> None:
    sandbox_id = (await _create(http, created, timeout=1)).json()["sandboxID"]
    await http.put(f"/sandboxes/{sandbox_id}/files", params={"path": "state.txt"}, content=b"before sleep")
    for _ in range(40):
        if await _status(http, sandbox_id) == "hibernated":
            break
        await asyncio.sleep(0.1)
    assert await _status(http, sandbox_id) == "hibernated"
    read = await http.get(f"/sandboxes/{sandbox_id}/files", params={"path": "state.txt"})
    assert read.content == b"before sleep"
    assert await _status(http, sandbox_id) == "running"


@pytest.mark.slow
async def test_a_running_command_keeps_the_idle_timer_from_expiring(
    http: httpx.AsyncClient, created: list[str]
) -> None:
    sandbox_id = (await _create(http, created, timeout=1)).json()["sandboxID"]
    run = await http.post(f"/sandboxes/{sandbox_id}/exec/run", json={"cmd": "sleep 2.5; echo done"})
    assert run.json() == {"exitCode": 0, "stdout": "done\n", "stderr": ""}
    assert await _status(http, sandbox_id) == "running"


@pytest.mark.slow
async def test_zero_timeout_never_hibernates(http: httpx.AsyncClient, sandbox: str) -> None:
    await asyncio.sleep(1.5)
    assert await _status(http, sandbox) == "running"


async def test_tags_replace_read_back_and_clear(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await http.put(f"/sandboxes/{sandbox}/tags", json={"team": "data", "flow-run:id": "abc.1"})
    assert response.status_code == 200
    body = response.json()
    assert body["tags"] == {"team": "data", "flow-run:id": "abc.1"}
    assert RFC3339_MILLIS.match(body["tagsLastUpdatedAt"])
    assert (await http.get(f"/sandboxes/{sandbox}/tags")).json() == body
    assert (await http.get(f"/sandboxes/{sandbox}")).json()["tags"] == body["tags"]
    cleared = (await http.put(f"/sandboxes/{sandbox}/tags", json={})).json()
    assert cleared["tags"] == {}
    assert cleared["tagsLastUpdatedAt"] is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (["a"], "request body must be a flat { key: string } map"),
        ({"k": 1}, 'tag "k": value must be a string'),
        ({"k": {"nested": "x"}}, 'tag "k": value must be a string'),
        ({"bad key": "v"}, 'tag key "bad key" contains invalid characters'),
        ({"oc:owner": "v"}, 'tag key prefix "oc:" is reserved'),
        ({"k" * 129: "v"}, f'tag key "{"k" * 129}": length must be 1..128'),
        ({"k": "v" * 257}, 'tag value for "k": length must be <= 256'),
        ({f"k{i}": "v" for i in range(51)}, "max 50 tags per sandbox, got 51"),
    ],
)
async def test_invalid_tags_are_400_with_the_service_message(
    http: httpx.AsyncClient, sandbox: str, body: object, message: str
) -> None:
    response = await http.put(f"/sandboxes/{sandbox}/tags", json=body)
    assert response.status_code == 400
    assert response.json() == {"error": message}


async def test_tag_keys_count_sandboxes_and_values(http: httpx.AsyncClient, created: list[str]) -> None:
    first = (await _create(http, created)).json()["sandboxID"]
    second = (await _create(http, created)).json()["sandboxID"]
    await http.put(f"/sandboxes/{first}/tags", json={"tagkeys-test": "a"})
    await http.put(f"/sandboxes/{second}/tags", json={"tagkeys-test": "b"})
    keys = (await http.get("/tags")).json()["keys"]
    assert {"key": "tagkeys-test", "sandboxCount": 2, "valueCount": 2} in keys


async def test_tags_of_an_unknown_sandbox_are_404(http: httpx.AsyncClient) -> None:
    assert (await http.get("/sandboxes/sb-00000000/tags")).status_code == 404
    assert (await http.put("/sandboxes/sb-00000000/tags", json={})).status_code == 404
