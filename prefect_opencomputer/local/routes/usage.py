"""Usage routes: ``GET /usage`` (by sandbox or by tag) and ``GET /sandboxes/{id}/usage`` (1-minute points)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from prefect_opencomputer.local.backend.records import rfc3339_seconds
from prefect_opencomputer.local.backend.usage import SandboxUsage, UsagePoint, UsageReport, UsageRow
from prefect_opencomputer.local.routes.deps import BackendDep

router = APIRouter()


@router.get("/usage")
async def get_usage(request: Request, backend: BackendDep) -> dict[str, object]:
    return _report_body(backend.usage.report(list(request.query_params.multi_items())))


@router.get("/sandboxes/{sandbox_id}/usage")
async def get_sandbox_usage(sandbox_id: str, backend: BackendDep, request: Request) -> dict[str, object]:
    params = request.query_params
    return _sandbox_usage_body(backend.usage.for_sandbox(sandbox_id, params.get("from"), params.get("to")))


def _report_body(report: UsageReport) -> dict[str, object]:
    query = report.query
    body: dict[str, object] = {
        "from": rfc3339_seconds(query.start),
        "to": rfc3339_seconds(query.end),
        "groupBy": query.group_by,
        "total": {
            "memoryGbSeconds": report.total.memory_gb_seconds,
            "diskOverageGbSeconds": report.total.disk_overage_gb_seconds,
        },
        "nextCursor": report.next_cursor,
    }
    if query.tag_key is None:
        body["items"] = [_sandbox_item(row) for row in report.items]
        return body
    untagged = report.untagged or UsageRow("")
    body["untagged"] = {
        "memoryGbSeconds": untagged.memory_gb_seconds,
        "diskOverageGbSeconds": untagged.disk_overage_gb_seconds,
        "sandboxCount": untagged.sandbox_count,
    }
    body["items"] = [
        {
            "tagKey": query.tag_key,
            "tagValue": row.key,
            "memoryGbSeconds": row.memory_gb_seconds,
            "diskOverageGbSeconds": row.disk_overage_gb_seconds,
            "sandboxCount": row.sandbox_count,
        }
        for row in report.items
    ]
    return body


def _sandbox_item(row: UsageRow) -> dict[str, object]:
    assert row.record is not None
    record = row.record
    return {
        "sandboxId": record.id,
        "memoryGbSeconds": row.memory_gb_seconds,
        "diskOverageGbSeconds": row.disk_overage_gb_seconds,
        "status": record.status,
        "tags": dict(record.tags),
        "tagsLastUpdatedAt": (
            None if record.tags_updated_at is None else rfc3339_seconds(record.tags_updated_at)
        ),
    }


def _sandbox_usage_body(usage: SandboxUsage) -> dict[str, object]:
    totals = usage.totals
    return {
        "sandboxId": usage.sandbox_id,
        "from": rfc3339_seconds(usage.start),
        "to": rfc3339_seconds(usage.end),
        "totals": {
            "memoryAllocatedGbSeconds": totals.memory_allocated_gb_seconds,
            "memoryUsedGbSeconds": totals.memory_used_gb_seconds,
            "uptimeSeconds": totals.uptime_seconds,
            "memoryAllocatedPeakMb": totals.memory_allocated_peak_mb,
            "memoryUsedPeakMb": totals.memory_used_peak_mb,
        },
        "points": [_point(point) for point in usage.points],
    }


def _point(point: UsagePoint) -> dict[str, object]:
    return {
        "ts": rfc3339_seconds(point.ts),
        "memoryAllocatedGbSeconds": point.memory_allocated_gb_seconds,
        "memoryUsedGbSeconds": point.memory_used_gb_seconds,
        "uptimeSeconds": point.uptime_seconds,
        "allocatedMemoryMb": point.allocated_memory_mb,
        "usedMemoryMbAvg": point.used_memory_mb_avg,
        "usedMemoryMbPeak": point.used_memory_mb_peak,
    }
