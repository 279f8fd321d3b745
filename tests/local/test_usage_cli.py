"""``prefect-opencomputer usage``: a flow run's or a day's sandbox usage as a table, with a cost estimate."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import httpx
import pytest

from prefect_opencomputer.local import LocalServer

pytestmark = pytest.mark.slow

USAGE = [sys.executable, "-m", "prefect_opencomputer.cli", "usage"]


def _run(local_server: LocalServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "OPENCOMPUTER_API_URL": local_server.url,
        "OPENCOMPUTER_API_KEY": local_server.api_key,
        "OPENCOMPUTER_USD_PER_GB_HOUR": "0.36",
        "COLUMNS": "200",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run([*USAGE, *args], env=env, capture_output=True, text=True, timeout=120)


async def test_usage_of_a_flow_run_and_of_today_print_each_sandbox_and_a_total(
    http: httpx.AsyncClient, created: list[str], local_server: LocalServer
) -> None:
    flow_run_id = str(uuid.uuid4())
    for _ in range(2):
        response = await http.post("/sandboxes", json={"memoryMB": 1024, "timeout": 0})
        sandbox_id = response.json()["sandboxID"]
        created.append(sandbox_id)
        await http.put(f"/sandboxes/{sandbox_id}/tags", json={"prefect.flow_run_id": flow_run_id})
    await asyncio.sleep(1)
    for sandbox_id in created:
        await http.delete(f"/sandboxes/{sandbox_id}")

    by_run = await asyncio.to_thread(_run, local_server, "--flow-run", flow_run_id)
    assert by_run.returncode == 0, by_run.stderr
    for sandbox_id in created:
        assert sandbox_id in by_run.stdout
    assert "total: 2" in by_run.stdout
    assert "cost USD (estimate)" in by_run.stdout
    assert "$0.360 per GB-hour" in by_run.stdout

    today = await asyncio.to_thread(_run, local_server)
    assert today.returncode == 0, today.stderr
    assert all(sandbox_id in today.stdout for sandbox_id in created)


def test_usage_mistakes_say_what_to_do_without_a_traceback(local_server: LocalServer) -> None:
    both = _run(local_server, "--flow-run", "x", "--day", "2026-01-01")
    assert both.returncode == 2 and "give --flow-run or --day, not both" in both.stderr
    bad_day = _run(local_server, "--day", "yesterday")
    assert bad_day.returncode == 2 and "--day must be a date, YYYY-MM-DD" in bad_day.stderr
    for result in (both, bad_day):
        assert "Traceback" not in result.stderr
