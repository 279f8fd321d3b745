"""What a flow run did with sandboxes, kept in this process and published as one table artifact.

Tasks record as they go (sandbox created, command run, checkpoint made, sandbox killed); a flow calls
`publish_run_report()` once, at its end, to show the table in the UI. The same record tells the flow's
cleanup which sandboxes it created, even those the service's listing does not show.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from prefect.artifacts import acreate_table_artifact

from prefect_opencomputer.tasks.ownership import current_flow_run_id

# A flow run that loops forever must not grow this without bound.
MAX_ENTRIES_PER_RUN = 1000


@dataclass(frozen=True)
class ReportEntry:
    """One row of the report: what happened (`kind`) to which sandbox, and how it ended."""

    kind: str
    sandbox_id: str
    subject: str
    outcome: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def row(self) -> dict[str, str]:
        return {
            "time": self.at.strftime("%H:%M:%S"),
            "kind": self.kind,
            "sandbox": self.sandbox_id,
            "subject": self.subject,
            "outcome": self.outcome,
        }


_lock = threading.Lock()
_entries: dict[str, list[ReportEntry]] = {}
_created: dict[str, set[str]] = {}


def record(kind: str, sandbox_id: str, subject: str, outcome: str, *, cleanup: bool = True) -> None:
    """Add a row to the current flow run's report; outside a flow run there is no report.

    A created sandbox (`kind` "sandbox" or "fork") is also remembered for the run's cleanup unless
    `cleanup` is False (it is meant to outlive the run).
    """
    flow_run_id = current_flow_run_id()
    if flow_run_id is None:
        return
    entry = ReportEntry(kind, sandbox_id, subject, outcome)
    with _lock:
        rows = _entries.setdefault(flow_run_id, [])
        if len(rows) < MAX_ENTRIES_PER_RUN:
            rows.append(entry)
        live = _created.setdefault(flow_run_id, set())
        if kind in ("sandbox", "fork") and cleanup:
            live.add(sandbox_id)
        elif kind == "kill":
            live.discard(sandbox_id)


def release(sandbox_id: str) -> None:
    """Stop counting a sandbox as the current run's to clean up (it is meant to outlive the run)."""
    flow_run_id = current_flow_run_id()
    with _lock:
        if flow_run_id is not None and flow_run_id in _created:
            _created[flow_run_id].discard(sandbox_id)


def live_sandboxes(flow_run_id: str) -> set[str]:
    """Sandboxes this process created for the flow run and has not killed."""
    with _lock:
        return set(_created.get(flow_run_id, ()))


def entries(flow_run_id: str) -> list[ReportEntry]:
    with _lock:
        return list(_entries.get(flow_run_id, ()))


async def publish_run_report(key: str | None = None, description: str | None = None) -> UUID | None:
    """Publish the current flow run's report as a table artifact; None when nothing was recorded.

    `key` (lowercase letters, digits, dashes) files the table under the Artifacts page, one version per run.
    """
    flow_run_id = current_flow_run_id()
    if flow_run_id is None:
        return None
    rows = [entry.row() for entry in entries(flow_run_id)]
    if not rows:
        return None
    return await acreate_table_artifact(
        table=rows,
        key=key,
        description=description or "Sandboxes, commands and checkpoints of this flow run.",
    )


def forget(flow_run_id: str) -> None:
    """Drop a finished run's record (its sandboxes are gone; its table is published)."""
    with _lock:
        _entries.pop(flow_run_id, None)
        _created.pop(flow_run_id, None)
