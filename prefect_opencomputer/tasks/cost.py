"""A run's sandbox cost, estimated: each sandbox's running time and memory GiB-seconds, priced per GB-hour.

The integration counts what it saw itself: a sandbox runs from the create (or fork, or wake) this run
recorded to the kill (or hibernate) it recorded, at the memory tier it asked for. The service meters the
same thing about a minute behind; where its figure has caught up with ours, the report shows the
service's and says so. Either way the cost is an estimate: plans, reservations and discounts are the
invoice's business.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from prefect_opencomputer._settings import DEFAULT_USD_PER_GB_HOUR, USD_PER_GB_HOUR_ENV

# The service's tier when a create does not name one.
DEFAULT_MEMORY_MB = 4096
# The service's figure is shown once it reaches this share of what the integration counted.
CAUGHT_UP = 0.9

RUNNING_COLUMN = "running s"
MEMORY_COLUMN = "memory GiB-s"
COST_COLUMN = "cost USD (estimate)"
COST_COLUMNS = (RUNNING_COLUMN, MEMORY_COLUMN, COST_COLUMN)

_STARTS = frozenset({"sandbox", "fork", "wake"})
_STOPS = frozenset({"kill", "hibernate"})


class MeteredEntry(Protocol):
    """What the run report records of an operation (`run_registry.ReportEntry`)."""

    @property
    def kind(self) -> str: ...

    @property
    def sandbox_id(self) -> str: ...

    @property
    def at(self) -> datetime: ...


def usd_per_gb_hour() -> float:
    """The rate from `OPENCOMPUTER_USD_PER_GB_HOUR`, else the hosted on-demand rate."""
    text = os.environ.get(USD_PER_GB_HOUR_ENV, "").strip()
    if not text:
        return DEFAULT_USD_PER_GB_HOUR
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not rate >= 0:
        raise ValueError(
            f"{USD_PER_GB_HOUR_ENV} must be a non-negative number of US dollars per GB-hour, not {text!r}"
        )
    return rate


@dataclass(frozen=True)
class SandboxMeter:
    """What the run saw one sandbox run: seconds at a memory tier (still running: counted up to now)."""

    sandbox_id: str
    memory_mb: int
    running_seconds: float

    @property
    def gb_seconds(self) -> float:
        return self.memory_mb / 1024 * self.running_seconds


def meters(
    entries: Iterable[MeteredEntry], memory_mb: Mapping[str, int], now: datetime
) -> list[SandboxMeter]:
    """Each sandbox the run created, in order of creation, with the seconds it ran as the run saw it."""
    running_since: dict[str, datetime] = {}
    seconds: dict[str, float] = {}
    for entry in entries:
        sandbox_id = entry.sandbox_id
        if entry.kind in ("sandbox", "fork"):
            seconds.setdefault(sandbox_id, 0.0)
        if sandbox_id not in seconds:
            continue  # not created by this run: not its cost
        if entry.kind in _STARTS:
            running_since.setdefault(sandbox_id, entry.at)
        elif entry.kind in _STOPS and sandbox_id in running_since:
            seconds[sandbox_id] += (entry.at - running_since.pop(sandbox_id)).total_seconds()
    for sandbox_id, since in running_since.items():
        seconds[sandbox_id] += max(0.0, (now - since).total_seconds())
    return [
        SandboxMeter(sandbox_id, memory_mb.get(sandbox_id, DEFAULT_MEMORY_MB), ran)
        for sandbox_id, ran in seconds.items()
    ]


def cost_rows(
    entries: Sequence[MeteredEntry],
    memory_mb: Mapping[str, int],
    service_gb_seconds: Mapping[str, float] | None,
    *,
    now: datetime | None = None,
    rate: float | None = None,
) -> list[dict[str, str]]:
    """A row per sandbox the run created and a total row: running seconds, GiB-seconds, estimated cost.

    `service_gb_seconds` is the service's own figure per sandbox (None when it could not be asked).
    """
    now = now or datetime.now(UTC)
    rate = usd_per_gb_hour() if rate is None else rate
    rows: list[dict[str, str]] = []
    total_seconds = total_gb_seconds = 0.0
    for meter in meters(entries, memory_mb, now):
        gb_seconds, source = meter.gb_seconds, "counted by the run"
        service = (service_gb_seconds or {}).get(meter.sandbox_id)
        if service is not None and service >= CAUGHT_UP * meter.gb_seconds:
            gb_seconds, source = service, "metered by the service"
        elif service_gb_seconds is not None:
            source = f"counted by the run (service so far: {service or 0.0:.1f})"
        total_seconds += meter.running_seconds
        total_gb_seconds += gb_seconds
        rows.append(
            _row(
                now,
                "usage",
                meter.sandbox_id,
                f"{meter.memory_mb} MB",
                source,
                meter.running_seconds,
                gb_seconds,
                rate,
            )
        )
    if rows:
        rows.append(
            _row(
                now,
                "usage total",
                f"all {len(rows)}",
                f"at ${rate:.3f}/GB-hour",
                "estimate",
                total_seconds,
                total_gb_seconds,
                rate,
            )
        )
    return rows


def with_cost_columns(
    rows: Sequence[Mapping[str, str]], cost: Sequence[Mapping[str, str]]
) -> list[dict[str, str]]:
    """The report's rows with the cost columns (empty on operation rows), then the cost rows."""
    return [{**row, **dict.fromkeys(COST_COLUMNS, "")} for row in rows] + [dict(row) for row in cost]


def _row(
    now: datetime,
    kind: str,
    sandbox: str,
    subject: str,
    outcome: str,
    running_seconds: float,
    gb_seconds: float,
    rate: float,
) -> dict[str, str]:
    return {
        "time": now.strftime("%H:%M:%S"),
        "kind": kind,
        "sandbox": sandbox,
        "subject": subject,
        "outcome": outcome,
        RUNNING_COLUMN: f"{running_seconds:.1f}",
        MEMORY_COLUMN: f"{gb_seconds:.1f}",
        COST_COLUMN: f"{gb_seconds / 3600 * rate:.4f}",
    }
