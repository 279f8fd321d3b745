"""`client.usage` against the local server: typed pages by sandbox and by tag, one sandbox's points."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from prefect_opencomputer.client import BadRequestError, NotFoundError, OpenComputerClient


async def test_usage_by_sandbox_and_tag_and_points_of_a_killed_sandbox(oc: OpenComputerClient) -> None:
    run = uuid.uuid4().hex
    sandbox = await oc.sandboxes.create(template="base", timeout=0, memory_mb=1024)
    try:
        await oc.sandboxes.set_tags(sandbox.sandbox_id, {"usage-run": run, "team": "data"})
        await asyncio.sleep(2)
    finally:
        await oc.sandboxes.kill(sandbox.sandbox_id)

    usage = await oc.usage.for_sandbox(sandbox.sandbox_id)
    assert usage.sandbox_id == sandbox.sandbox_id
    assert usage.totals.memory_allocated_peak_mb == 1024
    assert usage.totals.memory_allocated_gb_seconds == sum(
        p.memory_allocated_gb_seconds for p in usage.points
    )
    assert usage.totals.memory_allocated_gb_seconds >= 2
    assert usage.to - usage.from_ == timedelta(hours=1)

    [item] = await oc.usage.all_by_sandbox(tags={"usage-run": run})
    assert (item.sandbox_id, item.status, item.tags["team"]) == (sandbox.sandbox_id, "stopped", "data")
    assert item.memory_gb_seconds == pytest.approx(usage.totals.memory_allocated_gb_seconds)

    by_team = await oc.usage.by_tag(
        "team", tags={"usage-run": run}, from_=datetime.now(UTC) - timedelta(days=1)
    )
    assert [(i.tag_value, i.sandbox_count) for i in by_team.items] == [("data", 1)]
    assert by_team.untagged.sandbox_count == 0


async def test_usage_mistakes_are_typed_errors(oc: OpenComputerClient) -> None:
    with pytest.raises(BadRequestError, match="query window must be <= 90 days"):
        await oc.usage.by_sandbox(from_="2026-01-01", to="2026-06-01")
    with pytest.raises(NotFoundError):
        await oc.usage.for_sandbox("sb-00000000")
    with pytest.raises(ValueError, match="time zone"):
        await oc.usage.by_sandbox(from_=datetime(2026, 1, 1))
