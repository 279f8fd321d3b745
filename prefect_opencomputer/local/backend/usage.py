"""Usage as the hosted service reports it: allocated and used memory over time, per sandbox and by tag.

Allocated memory is the sandbox's tier integrated over the time it ran (its running intervals:
opened when its processes start or thaw, closed when they stop, freeze for hibernation or die with
a kill), so hibernated and stopped time cost nothing, as hosted. Used memory is its cgroup's
charge, sampled every ``sample_seconds``, at every stop and before a sandbox's usage is read.
Everything is in GiB-seconds (2**30 bytes for one second): a 1024 MB sandbox running one second
is 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.core import SandboxCore

import asyncio
import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prefect_opencomputer.local.backend.records import (
    MemorySample,
    RunningInterval,
    SandboxRecord,
    utc_now,
)
from prefect_opencomputer.local.backend.startup import cancel_and_wait
from prefect_opencomputer.local.backend.state import StateStore
from prefect_opencomputer.local.errors import Invalid

logger = logging.getLogger(__name__)

GIB = 1024**3
BUCKET = timedelta(minutes=1)
# The hosted service's windows and page sizes.
DEFAULT_ORG_WINDOW = timedelta(days=30)
MAX_ORG_WINDOW = timedelta(days=90)
DEFAULT_SANDBOX_WINDOW = timedelta(hours=1)
MAX_SANDBOX_WINDOW = timedelta(days=30)
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
# Disk within this allowance is free; above it, every GB counts for the sandbox's whole life.
DISK_FREE_ALLOWANCE_MB = 20480
SORTS = {"": "memory", "-memoryGbSeconds": "memory", "-diskOverageGbSeconds": "disk"}

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# -- what a query asks -------------------------------------------------------------------------


def parse_timestamp(name: str, text: str) -> datetime:
    """An ISO date (UTC midnight) or an RFC3339 timestamp with its offset; 400 for anything else."""
    try:
        if _DATE.match(text):
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        moment = datetime.fromisoformat(text)
        if "T" in text.upper() and moment.tzinfo is not None:
            return moment.astimezone(UTC)
    except ValueError:
        pass
    raise Invalid(f"`{name}` must be an ISO date (YYYY-MM-DD) or RFC3339 timestamp")


@dataclass(frozen=True)
class TagFilter:
    """``filter[tag:<key>]``: the sandbox has ``key`` with one of ``values``; no values = lacks ``key``."""

    key: str
    values: tuple[str, ...]

    def matches(self, tags: dict[str, str]) -> bool:
        if not self.values:
            return self.key not in tags
        return tags.get(self.key) in self.values


@dataclass(frozen=True)
class UsageQuery:
    start: datetime
    end: datetime
    group_by: str  # "sandbox" or "tag:<key>"
    sort: str  # "memory" or "disk"
    limit: int
    cursor: tuple[float, str] | None
    filters: tuple[TagFilter, ...] = ()

    @property
    def tag_key(self) -> str | None:
        return self.group_by.split(":", 1)[1] if self.group_by.startswith("tag:") else None


def usage_query(params: Sequence[tuple[str, str]], now: datetime) -> UsageQuery:
    """Validate ``GET /usage``'s query string as the hosted service does (same 400 messages)."""
    single: dict[str, str] = {}
    filters: dict[str, list[str]] = {}
    for key, value in params:
        if key.startswith("filter[") and key.endswith("]"):
            filters.setdefault(key, []).append(value)
        else:
            single.setdefault(key, value)
    start = parse_timestamp("from", single["from"]) if single.get("from") else now - DEFAULT_ORG_WINDOW
    end = parse_timestamp("to", single["to"]) if single.get("to") else now
    group_by = single.get("groupBy", "")
    if not group_by:
        raise Invalid("`groupBy` is required")
    sort = single.get("sort", "")
    if sort not in SORTS:
        raise Invalid(f'unsupported sort "{sort}"')
    limit = DEFAULT_LIMIT
    if single.get("limit"):
        try:
            limit = int(single["limit"])
        except ValueError:
            limit = 0
        if limit <= 0:
            raise Invalid("`limit` must be a positive integer")
    tag_filters = []
    for raw_key, values in filters.items():
        if len(values) > 1:
            raise Invalid(
                f'filter "{raw_key}" was passed more than once; use comma-separated values within one param'
            )
        dimension = raw_key[len("filter[") : -1]
        if not dimension.startswith("tag:"):
            raise Invalid(f'filter dimension "{dimension}" not supported (only tag:<key> in v1)')
        key = dimension[len("tag:") :]
        if not key:
            raise Invalid("filter tag key is empty")
        wanted = tuple(value.strip() for value in values[0].split(",") if value.strip())
        tag_filters.append(TagFilter(key, wanted))
    if group_by != "sandbox":
        if not group_by.startswith("tag:"):
            raise Invalid(f'unsupported groupBy "{group_by}"')
        if group_by == "tag:":
            raise Invalid("groupBy tag:<key> requires a key")
    if limit > MAX_LIMIT:
        raise Invalid(f"limit must be <= {MAX_LIMIT}")
    if end - start > MAX_ORG_WINDOW:
        raise Invalid(f"query window must be <= {MAX_ORG_WINDOW.days} days")
    if end <= start:
        raise Invalid("`to` must be after `from`")
    cursor = _decode_cursor(single["cursor"]) if single.get("cursor") else None
    return UsageQuery(start, end, group_by, SORTS[sort], limit, cursor, tuple(tag_filters))


def sandbox_window(from_: str | None, to: str | None, now: datetime) -> tuple[datetime, datetime]:
    """``[from, to)`` of a sandbox's usage: the last hour by default, at most 30 days."""
    start = parse_timestamp("from", from_) if from_ else now - DEFAULT_SANDBOX_WINDOW
    end = parse_timestamp("to", to) if to else now
    if end <= start:
        raise Invalid("`to` must be after `from`")
    if end - start > MAX_SANDBOX_WINDOW:
        raise Invalid(f"query window must be <= {MAX_SANDBOX_WINDOW.days} days")
    return start, end


def _encode_cursor(value: float, key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"v": value, "t": key}).encode()).decode()


def _decode_cursor(text: str) -> tuple[float, str]:
    try:
        payload = json.loads(base64.urlsafe_b64decode(text.encode()))
        return float(payload["v"]), str(payload["t"])
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise Invalid(f"invalid cursor: {error}") from None


# -- what the answers hold -----------------------------------------------------------------------


@dataclass(frozen=True)
class UsagePoint:
    """One UTC minute of a sandbox: integrals add up across points, the megabytes are for charts."""

    ts: datetime
    memory_allocated_gb_seconds: float
    memory_used_gb_seconds: float
    uptime_seconds: int
    allocated_memory_mb: int
    used_memory_mb_avg: int
    used_memory_mb_peak: int
    allocated_memory_peak_mb: int


@dataclass(frozen=True)
class SandboxUsageTotals:
    memory_allocated_gb_seconds: float = 0.0
    memory_used_gb_seconds: float = 0.0
    uptime_seconds: int = 0
    memory_allocated_peak_mb: int = 0
    memory_used_peak_mb: int = 0


@dataclass(frozen=True)
class SandboxUsage:
    sandbox_id: str
    start: datetime
    end: datetime
    points: list[UsagePoint]
    totals: SandboxUsageTotals


@dataclass
class UsageRow:
    """One sandbox's or one tag value's usage over the window."""

    key: str  # the sandbox id, or the tag value
    memory_gb_seconds: float = 0.0
    disk_overage_gb_seconds: float = 0.0
    sandbox_count: int = 0
    record: SandboxRecord | None = None  # for rows by sandbox

    def sort_value(self, sort: str) -> float:
        return self.disk_overage_gb_seconds if sort == "disk" else self.memory_gb_seconds


@dataclass
class UsageReport:
    query: UsageQuery
    total: UsageRow
    items: list[UsageRow]
    next_cursor: str | None
    untagged: UsageRow | None = None
    sandbox_ids: list[str] = field(default_factory=list)


# -- the arithmetic ------------------------------------------------------------------------------


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())


def _interval_end(interval: RunningInterval, now: datetime) -> datetime:
    return interval.ended_at if interval.ended_at is not None else now


def sandbox_points(
    intervals: Iterable[RunningInterval],
    samples: Iterable[MemorySample],
    start: datetime,
    end: datetime,
    now: datetime,
) -> list[UsagePoint]:
    """One point per UTC minute touching ``[start, end)``; the edge minutes count only their overlap."""
    intervals = list(intervals)
    by_minute: dict[datetime, list[MemorySample]] = {}
    for sample in samples:
        by_minute.setdefault(sample.sampled_at.replace(second=0, microsecond=0), []).append(sample)
    points = []
    minute = start.replace(second=0, microsecond=0)
    while minute < end:
        low, high = max(minute, start), min(minute + BUCKET, end)
        allocated = weighted_mb = uptime = 0.0
        allocated_peak = 0
        for interval in intervals:
            overlap = _seconds(max(interval.started_at, low), min(_interval_end(interval, now), high))
            if overlap > 0:
                allocated += interval.memory_mb / 1024 * overlap
                weighted_mb += interval.memory_mb * overlap / BUCKET.total_seconds()
                uptime += overlap
                allocated_peak = max(allocated_peak, interval.memory_mb)
        in_minute = by_minute.get(minute, [])
        used_avg = sum(s.memory_bytes for s in in_minute) / len(in_minute) if in_minute else 0.0
        used_peak = max((s.peak_bytes for s in in_minute), default=0)
        points.append(
            UsagePoint(
                ts=minute,
                memory_allocated_gb_seconds=allocated,
                # The average charge over the seconds it ran in this minute (hosted: over all 60).
                memory_used_gb_seconds=used_avg / GIB * uptime,
                uptime_seconds=round(uptime),
                allocated_memory_mb=int(weighted_mb),
                used_memory_mb_avg=int(used_avg // (1024 * 1024)),
                used_memory_mb_peak=used_peak // (1024 * 1024),
                allocated_memory_peak_mb=allocated_peak,
            )
        )
        minute += BUCKET
    return points


def totals_of(points: Sequence[UsagePoint]) -> SandboxUsageTotals:
    """The points summed in order, so a client summing them gets exactly these figures."""
    allocated = used = 0.0
    uptime = 0
    for point in points:
        allocated += point.memory_allocated_gb_seconds
        used += point.memory_used_gb_seconds
        uptime += point.uptime_seconds
    return SandboxUsageTotals(
        memory_allocated_gb_seconds=allocated,
        memory_used_gb_seconds=used,
        uptime_seconds=uptime,
        memory_allocated_peak_mb=max((p.allocated_memory_peak_mb for p in points), default=0),
        memory_used_peak_mb=max((p.used_memory_mb_peak for p in points), default=0),
    )


def allocated_gb_seconds(
    intervals: Iterable[RunningInterval], start: datetime, end: datetime, now: datetime
) -> float:
    return sum(
        interval.memory_mb
        / 1024
        * _seconds(max(interval.started_at, start), min(_interval_end(interval, now), end))
        for interval in intervals
    )


def disk_overage_gb_seconds(record: SandboxRecord, start: datetime, end: datetime, now: datetime) -> float:
    """Disk above the free allowance, for every second the sandbox existed (running or hibernated)."""
    over_mb = record.disk_mb - DISK_FREE_ALLOWANCE_MB
    if over_mb <= 0:
        return 0.0
    gone = record.stopped_at or now
    return over_mb / 1024 * _seconds(max(record.started_at, start), min(gone, end))


def _page(rows: list[UsageRow], query: UsageQuery) -> tuple[list[UsageRow], str | None]:
    """Largest first (ties by key), from after the cursor, at most ``limit``; the cursor of the next page."""
    rows.sort(key=lambda row: (-row.sort_value(query.sort), row.key))
    if query.cursor is not None:
        after_value, after_key = query.cursor
        rows = [
            row
            for row in rows
            if row.sort_value(query.sort) < after_value
            or (row.sort_value(query.sort) == after_value and row.key > after_key)
        ]
    page = rows[: query.limit]
    if len(rows) > query.limit:
        last = page[-1]
        return page, _encode_cursor(last.sort_value(query.sort), last.key)
    return page, None


# -- the service ---------------------------------------------------------------------------------


class UsageService:
    """Answers the usage routes from the state store; samples memory of the running sandboxes."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def sandbox_usage(self, record: SandboxRecord, start: datetime, end: datetime) -> SandboxUsage:
        now = utc_now()
        intervals = self.store.running_intervals(start, end, sandbox_id=record.id)
        samples = self.store.memory_samples(record.id, start, end)
        points = sandbox_points(intervals, samples, start, end, now)
        return SandboxUsage(record.id, start, end, points, totals_of(points))

    def report(self, query: UsageQuery, sandboxes: Iterable[SandboxRecord]) -> UsageReport:
        now = utc_now()
        intervals: dict[str, list[RunningInterval]] = {}
        for interval in self.store.running_intervals(query.start, query.end):
            intervals.setdefault(interval.sandbox_id, []).append(interval)
        by_sandbox: list[UsageRow] = []
        for record in sandboxes:
            if not all(f.matches(record.tags) for f in query.filters):
                continue
            row = UsageRow(
                record.id,
                allocated_gb_seconds(intervals.get(record.id, []), query.start, query.end, now),
                disk_overage_gb_seconds(record, query.start, query.end, now),
                1,
                record,
            )
            if row.memory_gb_seconds > 0 or row.disk_overage_gb_seconds > 0:
                by_sandbox.append(row)
        total = UsageRow(
            "",
            sum(row.memory_gb_seconds for row in by_sandbox),
            sum(row.disk_overage_gb_seconds for row in by_sandbox),
            len(by_sandbox),
        )
        tag_key = query.tag_key
        if tag_key is None:
            items, cursor = _page(by_sandbox, query)
            return UsageReport(query, total, items, cursor)
        groups: dict[str, UsageRow] = {}
        untagged = UsageRow("")
        for row in by_sandbox:
            assert row.record is not None
            value = row.record.tags.get(tag_key)
            group = untagged if value is None else groups.setdefault(value, UsageRow(value))
            group.memory_gb_seconds += row.memory_gb_seconds
            group.disk_overage_gb_seconds += row.disk_overage_gb_seconds
            group.sandbox_count += 1
        items, cursor = _page(list(groups.values()), query)
        return UsageReport(query, total, items, cursor, untagged)


class MemorySampler:
    """Samples every running sandbox's memory every ``interval`` seconds, in one write per round."""

    def __init__(self, sample: Callable[[], None], interval: float) -> None:
        self._sample = sample
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="memory-sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self._sample()
            except Exception:  # a failed round must not end sampling for good
                logger.exception("sampling sandbox memory failed")


class Usage:
    """The usage resource: a sandbox's points and the report over every sandbox."""

    def __init__(self, core: SandboxCore) -> None:
        self._core = core

    def for_sandbox(self, sandbox_id: str, from_: str | None, to: str | None) -> SandboxUsage:
        """Its 1-minute points over ``[from, to)`` (the last hour by default), sampled fresh first."""
        record = self._core.sandbox(sandbox_id)
        start, end = sandbox_window(from_, to, utc_now())
        sample = self._core.memory_sample(sandbox_id) if record.status == "running" else None
        if sample is not None:
            self._core.store.record_samples([sample])
        return UsageService(self._core.store).sandbox_usage(record, start, end)

    def report(self, params: Sequence[tuple[str, str]]) -> UsageReport:
        """``GET /usage``: every sandbox's (or tag value's) usage over the window, largest first."""
        query = usage_query(params, utc_now())
        created = [record for record in self._core.store.sandboxes() if record.status != "pending"]
        return UsageService(self._core.store).report(query, created)
