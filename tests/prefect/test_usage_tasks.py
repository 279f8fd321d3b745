"""Usage tasks: a sandbox's usage, and a flow run's usage found by the flow-run tag this integration sets."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from prefect import flow

from prefect_opencomputer._settings import USD_PER_GB_HOUR_ENV
from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import SandboxUsage, SandboxUsageItem
from prefect_opencomputer.tasks import (
    apublish_run_report,
    cost,
    get_flow_run_usage,
    get_sandbox_usage,
    open_sandbox,
)
from prefect_opencomputer.tasks.run_registry import ReportEntry


async def test_a_flow_run_reads_the_usage_of_the_sandboxes_it_ran(
    credentials: OpenComputerCredentials, control: Any
) -> None:
    @flow
    async def two_sandboxes() -> tuple[list[str], list[SandboxUsageItem], SandboxUsage]:
        ids = []
        for _ in range(2):
            async with open_sandbox(memory_mb=1024, credentials=credentials) as sandbox:
                ids.append(sandbox.sandbox_id)
                await asyncio.sleep(1)
        run_usage = await get_flow_run_usage(credentials=credentials)
        one = await get_sandbox_usage(ids[0], credentials=credentials)
        return ids, run_usage, one

    ids, run_usage, one = await two_sandboxes()

    assert sorted(item.sandbox_id for item in run_usage) == sorted(ids)
    assert all(item.status == "stopped" and item.memory_gb_seconds >= 1 for item in run_usage)
    assert one.sandbox_id == ids[0]
    assert one.totals.memory_allocated_peak_mb == 1024
    assert one.totals.uptime_seconds >= 1


async def test_the_run_report_shows_usage_and_an_estimated_cost_per_sandbox_and_in_total(
    credentials: OpenComputerCredentials, control: Any, records: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv(USD_PER_GB_HOUR_ENV, "0.5")

    @flow
    async def two_sandboxes() -> list[str]:
        ids = []
        for _ in range(2):
            async with open_sandbox(memory_mb=1024, credentials=credentials) as sandbox:
                ids.append(sandbox.sandbox_id)
                await asyncio.sleep(1)
        await apublish_run_report(key="two-sandboxes")
        return ids

    state = await two_sandboxes(return_state=True)
    ids = await state.result()
    [table] = [
        a for a in await records.artifacts(state.state_details.flow_run_id) if a.key == "two-sandboxes"
    ]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data

    usage = {row["sandbox"]: row for row in rows if row["kind"] == "usage"}
    assert sorted(usage) == sorted(ids)
    for row in usage.values():
        assert row["subject"] == "1024 MB"
        assert row["outcome"] == "metered by the service"  # the local server meters to the second
        assert float(row["running s"]) >= 1 and float(row["memory GiB-s"]) >= 1
        assert float(row["cost USD (estimate)"]) == pytest.approx(
            float(row["memory GiB-s"]) / 3600 * 0.5, abs=1e-4
        )
    [total] = [row for row in rows if row["kind"] == "usage total"]
    assert total["subject"] == "at $0.500/GB-hour"
    assert float(total["memory GiB-s"]) == pytest.approx(
        sum(float(r["memory GiB-s"]) for r in usage.values()), abs=0.11
    )
    # Operation rows carry the columns too, empty.
    assert all(row["cost USD (estimate)"] == "" for row in rows if row["kind"] in ("sandbox", "kill"))


def _entry(kind: str, sandbox_id: str, second: int) -> ReportEntry:
    return ReportEntry(kind, sandbox_id, "", "", at=datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC))


def test_the_run_counts_running_time_without_hibernation_and_shows_the_service_once_it_caught_up() -> None:
    entries = [
        _entry("sandbox", "sb-a", 0),
        _entry("hibernate", "sb-a", 10),
        _entry("wake", "sb-a", 20),
        _entry("kill", "sb-a", 30),
        _entry("fork", "sb-b", 0),
        _entry("command", "sb-other", 5),  # not created by the run: not its cost
    ]
    now = datetime(2026, 1, 1, 0, 0, 40, tzinfo=UTC)
    rows = cost.cost_rows(entries, {"sb-a": 1024, "sb-b": 2048}, {"sb-a": 5.0}, now=now, rate=0.06)

    a, b, total = rows
    assert (a["sandbox"], a["running s"], a["memory GiB-s"]) == ("sb-a", "20.0", "20.0")
    assert a["outcome"] == "counted by the run (service so far: 5.0)"
    # sb-b is still running: counted up to now, at its 2 GiB tier; the service had not seen it.
    assert (b["running s"], b["memory GiB-s"]) == ("40.0", "80.0")
    assert (total["kind"], total["memory GiB-s"], total["outcome"]) == ("usage total", "100.0", "estimate")
    assert total["cost USD (estimate)"] == f"{100 / 3600 * 0.06:.4f}"

    caught_up = cost.cost_rows(entries[:4], {"sb-a": 1024}, {"sb-a": 20.4}, now=now, rate=0.06)
    assert (caught_up[0]["memory GiB-s"], caught_up[0]["outcome"]) == ("20.4", "metered by the service")


def test_a_bad_rate_setting_says_what_it_wants(monkeypatch: Any) -> None:
    monkeypatch.setenv(USD_PER_GB_HOUR_ENV, "cheap")
    with pytest.raises(ValueError, match="OPENCOMPUTER_USD_PER_GB_HOUR must be a non-negative number"):
        cost.usd_per_gb_hour()
    monkeypatch.delenv(USD_PER_GB_HOUR_ENV)
    assert cost.usd_per_gb_hour() == 0.06
