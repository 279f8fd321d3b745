"""Usage on the local server, in the hosted shapes: through the official SDK's `Usage` and raw HTTP."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from opencomputer import Usage

from prefect_opencomputer.local import LocalServer, LocalServerConfig
from prefect_opencomputer.local.backend.records import MemorySample, RunningInterval
from prefect_opencomputer.local.backend.usage import sandbox_points, totals_of

pytestmark = pytest.mark.slow

HOLD_500_MB = "nohup python3 -c 'import time; held = b\"x\" * (500 << 20); time.sleep(600)' >/dev/null 2>&1 &"


async def _create(http: httpx.AsyncClient, created: list[str], tags: dict[str, str]) -> str:
    response = await http.post("/sandboxes", json={"templateID": "base", "memoryMB": 1024, "timeout": 0})
    assert response.status_code == 201, response.text
    sandbox_id: str = response.json()["sandboxID"]
    created.append(sandbox_id)
    if tags:
        assert (await http.put(f"/sandboxes/{sandbox_id}/tags", json=tags)).status_code == 200
    return sandbox_id


@pytest.fixture
async def usage(local_server: LocalServer) -> AsyncIterator[Usage]:
    """The official SDK's usage resource over its own client, as `Sandbox` builds one."""
    client = httpx.AsyncClient(
        base_url=local_server.api_url, headers={"X-API-Key": local_server.api_key}, timeout=30
    )
    try:
        yield Usage._from_client(client)
    finally:
        await client.aclose()


async def test_a_1024_mb_sandbox_alive_60_s_holding_500_mb_reports_it_through_the_sdk(
    http: httpx.AsyncClient, created: list[str], usage: Usage
) -> None:
    run = uuid.uuid4().hex
    sandbox_id = await _create(http, created, {"usage-run": run, "team": "payments"})
    alive_since = time.monotonic()
    held = await http.post(f"/sandboxes/{sandbox_id}/exec/run", json={"cmd": HOLD_500_MB})
    assert held.json()["exitCode"] == 0, held.text
    await asyncio.sleep(60 - (time.monotonic() - alive_since))
    assert (await http.delete(f"/sandboxes/{sandbox_id}")).status_code == 204

    # Killed: its usage stays.
    report = await usage.for_sandbox(sandbox_id)
    assert report.sandbox_id == sandbox_id
    assert 57 <= report.totals.memory_allocated_gb_seconds <= 63
    assert report.totals.memory_allocated_peak_mb == 1024
    assert 470 <= report.totals.memory_used_peak_mb <= 620
    assert 0 < report.totals.memory_used_gb_seconds < report.totals.memory_allocated_gb_seconds
    points = report.points
    assert sum(p.memory_allocated_gb_seconds for p in points) == report.totals.memory_allocated_gb_seconds
    assert sum(p.memory_used_gb_seconds for p in points) == report.totals.memory_used_gb_seconds
    assert sum(p.uptime_seconds for p in points) == report.totals.uptime_seconds
    assert max(p.used_memory_mb_peak for p in points) == report.totals.memory_used_peak_mb
    assert all(p.ts.endswith(":00Z") for p in points)

    by_sandbox = await usage.by_sandbox(filter={"tag:usage-run": run})
    [item] = by_sandbox.items
    assert (item.sandbox_id, item.status, item.tags["team"]) == (sandbox_id, "stopped", "payments")
    assert item.memory_gb_seconds == pytest.approx(report.totals.memory_allocated_gb_seconds)
    assert by_sandbox.total.memory_gb_seconds == item.memory_gb_seconds
    assert by_sandbox.next_cursor is None

    by_team = await usage.by_tag("team", filter={"tag:usage-run": run})
    assert [(i.tag_value, i.sandbox_count) for i in by_team.items] == [("payments", 1)]
    assert by_team.untagged.sandbox_count == 0


async def test_usage_by_tag_counts_the_untagged_and_pages_by_sandbox(
    http: httpx.AsyncClient, created: list[str]
) -> None:
    run = uuid.uuid4().hex
    ids = [
        await _create(http, created, {"usage-run": run, "team": "a"}),
        await _create(http, created, {"usage-run": run, "team": "a"}),
        await _create(http, created, {"usage-run": run}),
    ]
    await asyncio.sleep(1)
    for sandbox_id in ids:
        await http.delete(f"/sandboxes/{sandbox_id}")

    by_team = (await http.get("/usage", params={"groupBy": "tag:team", "filter[tag:usage-run]": run})).json()
    assert set(by_team) == {"from", "to", "groupBy", "total", "items", "untagged", "nextCursor"}
    assert by_team["groupBy"] == "tag:team"
    [team_a] = by_team["items"]
    assert (team_a["tagKey"], team_a["tagValue"], team_a["sandboxCount"]) == ("team", "a", 2)
    assert by_team["untagged"]["sandboxCount"] == 1
    assert by_team["total"]["memoryGbSeconds"] == pytest.approx(
        team_a["memoryGbSeconds"] + by_team["untagged"]["memoryGbSeconds"]
    )
    lacking = {"groupBy": "sandbox", "filter[tag:usage-run]": run, "filter[tag:team]": ""}
    assert [i["sandboxId"] for i in (await http.get("/usage", params=lacking)).json()["items"]] == [ids[2]]

    params = {"groupBy": "sandbox", "filter[tag:usage-run]": run, "limit": "2"}
    first = (await http.get("/usage", params=params)).json()
    assert len(first["items"]) == 2 and first["nextCursor"]
    second = (await http.get("/usage", params={**params, "cursor": first["nextCursor"]})).json()
    assert len(second["items"]) == 1 and second["nextCursor"] is None
    pages = first["items"] + second["items"]
    assert sorted(i["sandboxId"] for i in pages) == sorted(ids)
    gb_seconds = [i["memoryGbSeconds"] for i in pages]
    assert gb_seconds == sorted(gb_seconds, reverse=True) and all(value > 0 for value in gb_seconds)


async def test_hibernated_time_counts_no_allocated_memory(
    http: httpx.AsyncClient, created: list[str]
) -> None:
    sandbox_id = await _create(http, created, {})
    assert (await http.post(f"/sandboxes/{sandbox_id}/hibernate")).status_code == 200
    await asyncio.sleep(6)
    assert (await http.post(f"/sandboxes/{sandbox_id}/wake", json={})).status_code == 200
    await http.delete(f"/sandboxes/{sandbox_id}")

    totals = (await http.get(f"/sandboxes/{sandbox_id}/usage")).json()["totals"]
    assert totals["uptimeSeconds"] <= 3
    assert totals["memoryAllocatedGbSeconds"] < 3


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "`groupBy` is required"),
        ({"groupBy": "region"}, 'unsupported groupBy "region"'),
        ({"groupBy": "tag:"}, "groupBy tag:<key> requires a key"),
        ({"groupBy": "sandbox", "sort": "name"}, 'unsupported sort "name"'),
        ({"groupBy": "sandbox", "limit": "0"}, "`limit` must be a positive integer"),
        ({"groupBy": "sandbox", "limit": "501"}, "limit must be <= 500"),
        ({"groupBy": "sandbox", "from": "2026-01-01", "to": "2026-06-01"}, "query window must be <= 90 days"),
        ({"groupBy": "sandbox", "from": "2026-01-02", "to": "2026-01-01"}, "`to` must be after `from`"),
        (
            {"groupBy": "sandbox", "from": "2026-01-01T10:00:00"},
            "`from` must be an ISO date (YYYY-MM-DD) or RFC3339 timestamp",
        ),
        (
            {"groupBy": "sandbox", "filter[region]": "x"},
            'filter dimension "region" not supported (only tag:<key> in v1)',
        ),
        ({"groupBy": "sandbox", "cursor": "not a cursor"}, None),
    ],
)
async def test_usage_query_mistakes_are_400_with_the_hosted_messages(
    http: httpx.AsyncClient, params: dict[str, str], message: str | None
) -> None:
    response = await http.get("/usage", params=params)
    assert response.status_code == 400, response.text
    if message is None:
        assert response.json()["error"].startswith("invalid cursor")
    else:
        assert response.json() == {"error": message}


async def test_a_repeated_filter_and_a_bad_sandbox_window_are_400_and_an_unknown_sandbox_404(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    repeated = await http.get("/usage?groupBy=sandbox&filter[tag:a]=1&filter[tag:a]=2")
    assert repeated.status_code == 400
    assert "was passed more than once" in repeated.json()["error"]
    too_long = await http.get(
        f"/sandboxes/{sandbox}/usage", params={"from": "2026-01-01", "to": "2026-03-01"}
    )
    assert too_long.json() == {"error": "query window must be <= 30 days"}
    assert (await http.get("/sandboxes/sb-00000000/usage")).status_code == 404


def test_points_are_utc_minutes_whose_edges_count_only_their_overlap() -> None:
    def at(minute: int, second: int) -> datetime:
        return datetime(2026, 5, 27, 0, minute, second, tzinfo=UTC)

    running = [RunningInterval("sb-1", 1024, at(0, 30), at(2, 10))]
    samples = [MemorySample("sb-1", at(1, 5), 512 << 20, 600 << 20)]
    points = sandbox_points(running, samples, at(0, 0), at(3, 0), now=at(5, 0))

    assert [p.memory_allocated_gb_seconds for p in points] == [30, 60, 10]
    assert [p.uptime_seconds for p in points] == [30, 60, 10]
    assert [p.allocated_memory_mb for p in points] == [512, 1024, 170]
    assert [(p.used_memory_mb_avg, p.used_memory_mb_peak) for p in points] == [(0, 0), (512, 600), (0, 0)]
    assert points[1].memory_used_gb_seconds == 30
    totals = totals_of(points)
    assert (totals.memory_allocated_gb_seconds, totals.uptime_seconds, totals.memory_used_peak_mb) == (
        100,
        100,
        600,
    )

    # A window starting mid-minute counts only from there.
    clipped = sandbox_points(running, [], at(1, 30), at(2, 0), now=at(5, 0))
    assert [p.memory_allocated_gb_seconds for p in clipped] == [30]


def test_usage_survives_a_restart_and_a_running_sandbox_counts_nothing_while_the_server_is_down(
    tmp_path: Path,
) -> None:
    data_dir, key = tmp_path / "state", "osb_" + "u" * 64
    with LocalServer(LocalServerConfig(data_dir=data_dir, api_key=key)) as server:
        api = httpx.Client(base_url=server.api_url, headers={"X-API-Key": key}, timeout=60)
        killed = api.post("/sandboxes", json={"memoryMB": 1024}).json()["sandboxID"]
        running = api.post("/sandboxes", json={"memoryMB": 1024}).json()["sandboxID"]
        time.sleep(1)
        api.delete(f"/sandboxes/{killed}")
        before = {sid: api.get(f"/sandboxes/{sid}/usage").json()["totals"] for sid in (killed, running)}
    time.sleep(3)  # the server is down: nothing runs, nothing counts
    with LocalServer(LocalServerConfig(data_dir=data_dir, api_key=key)) as server:
        api = httpx.Client(base_url=server.api_url, headers={"X-API-Key": key}, timeout=60)
        after = {sid: api.get(f"/sandboxes/{sid}/usage").json()["totals"] for sid in (killed, running)}
        items = api.get("/usage", params={"groupBy": "sandbox"}).json()["items"]

    assert after[killed] == before[killed]
    assert after[killed]["memoryAllocatedGbSeconds"] >= 1
    # The running one came back hibernated: its time ended when the server stopped.
    assert after[running]["memoryAllocatedGbSeconds"] == pytest.approx(
        before[running]["memoryAllocatedGbSeconds"], abs=0.5
    )
    assert {item["sandboxId"]: item["status"] for item in items} == {killed: "stopped", running: "hibernated"}
