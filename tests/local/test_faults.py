"""Fault injection: error statuses, delays and dropped connections, before or after the operation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from prefect_opencomputer.local import LocalServer


@pytest.fixture
async def control(local_server: LocalServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=local_server.url, headers={"X-API-Key": local_server.api_key}, timeout=60
    ) as client:
        yield client
        await client.delete("/_test/faults")


async def inject(control: httpx.AsyncClient, **fault: object) -> int:
    response = await control.post("/_test/faults", json=fault)
    assert response.status_code == 201, response.text
    fault_id: int = response.json()["id"]
    return fault_id


async def sandbox_ids(http: httpx.AsyncClient) -> set[str]:
    response = await http.get("/sandboxes")
    assert response.status_code == 200
    return {sandbox["sandboxID"] for sandbox in response.json()}


async def test_status_fault_answers_503_with_retry_after_then_expires(
    control: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    await inject(control, method="GET", path="/api/sandboxes", status=503, retryAfter=2)

    faulted = await http.get("/sandboxes")
    assert faulted.status_code == 503
    assert faulted.headers["Retry-After"] == "2"
    assert faulted.json() == {"error": "injected fault", "retryable": True}

    assert (await http.get("/sandboxes")).status_code == 200
    assert (await control.get("/_test/faults")).json() == []


async def test_fault_matches_method_and_path_glob_only(
    control: httpx.AsyncClient, http: httpx.AsyncClient, sandbox: str
) -> None:
    await inject(control, method="POST", path="/api/sandboxes/*/exec/run", status=429)

    assert (await http.get(f"/sandboxes/{sandbox}")).status_code == 200
    faulted = await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": "true"})
    assert faulted.status_code == 429
    assert faulted.json()["retryable"] is True


async def test_fault_without_retryable_status_has_no_retryable_flag(
    control: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    await inject(control, path="/api/sandboxes", status=500)
    faulted = await http.get("/sandboxes")
    assert faulted.status_code == 500
    assert faulted.json() == {"error": "injected fault"}


async def test_times_zero_hits_every_request_until_cleared(
    control: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    await inject(control, path="/api/sandboxes", status=503, times=0)
    assert [(await http.get("/sandboxes")).status_code for _ in range(3)] == [503, 503, 503]
    listed = (await control.get("/_test/faults")).json()
    assert listed[0]["hits"] == 3

    assert (await control.delete("/_test/faults")).status_code == 204
    assert (await http.get("/sandboxes")).status_code == 200


async def test_times_counts_down_across_requests(control: httpx.AsyncClient, http: httpx.AsyncClient) -> None:
    await inject(control, path="/api/sandboxes", status=503, times=2)
    assert [(await http.get("/sandboxes")).status_code for _ in range(3)] == [503, 503, 200]


async def test_delay_fault_slows_the_request_and_then_serves_it(
    control: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    await inject(control, method="GET", path="/api/sandboxes", delay=0.5)
    started = time.monotonic()
    response = await http.get("/sandboxes")
    assert time.monotonic() - started >= 0.45
    assert response.status_code == 200


async def test_drop_before_closes_the_connection_and_nothing_happens(
    control: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    before = await sandbox_ids(http)
    await inject(control, method="POST", path="/api/sandboxes", drop=True)

    with pytest.raises(httpx.TransportError):
        await http.post("/sandboxes", json={"templateID": "base"})

    assert await sandbox_ids(http) == before


async def test_drop_after_loses_the_response_but_the_operation_took_effect(
    control: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    before = await sandbox_ids(http)
    await inject(control, method="POST", path="/api/sandboxes", drop=True, when="after")

    with pytest.raises(httpx.TransportError):
        await http.post("/sandboxes", json={"templateID": "base"})

    created = await sandbox_ids(http) - before
    assert len(created) == 1
    for sandbox_id in created:
        await http.delete(f"/sandboxes/{sandbox_id}")


async def test_status_after_reports_failure_of_a_write_that_landed(
    control: httpx.AsyncClient, http: httpx.AsyncClient, sandbox: str
) -> None:
    await inject(control, method="PUT", path="/api/sandboxes/*/files", status=503, when="after")

    written = await http.put(f"/sandboxes/{sandbox}/files", params={"path": "note.txt"}, content=b"landed")
    assert written.status_code == 503

    read = await http.get(f"/sandboxes/{sandbox}/files", params={"path": "note.txt"})
    assert read.status_code == 200
    assert read.content == b"landed"


async def test_faults_never_hit_the_control_routes(control: httpx.AsyncClient) -> None:
    await inject(control, path="*", status=503, times=0)
    assert (await control.get("/_test/faults")).status_code == 200
    assert (await control.delete("/_test/faults")).status_code == 204


@pytest.mark.parametrize(
    "fault",
    [
        {"path": "/api/*"},
        {"path": "/api/*", "status": 503, "drop": True},
        {"path": "/api/*", "status": 200},
        {"path": "/api/*", "status": 503, "when": "later"},
        {"status": 503},
    ],
)
async def test_a_fault_that_cannot_work_is_rejected_with_400(
    control: httpx.AsyncClient, fault: dict[str, object]
) -> None:
    response = await control.post("/_test/faults", json=fault)
    assert response.status_code == 400
    assert response.json()["error"].startswith("invalid request body: ")
