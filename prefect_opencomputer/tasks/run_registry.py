"""This process's record of each flow run: what it made and has not removed, and what its report shows.

The run's cleanup hooks read what it made (sandboxes and checkpoints, also those the service no longer
lists); the run report reads its rows. A record lives in memory only, bounded per run and in runs.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.logging.loggers import LoggingAdapter, get_logger

if TYPE_CHECKING:
    from prefect_opencomputer.blocks.credentials import OpenComputerCredentials


def current_flow_run_id() -> str | None:
    flow_context = FlowRunContext.get()
    if flow_context is not None and flow_context.flow_run is not None:
        return str(flow_context.flow_run.id)
    task_context = TaskRunContext.get()
    if task_context is not None and task_context.task_run.flow_run_id is not None:
        return str(task_context.task_run.flow_run_id)
    return None


def run_logger() -> logging.Logger | LoggingAdapter:
    """The run logger inside a flow or task run (logs reach the UI), a plain logger elsewhere (hooks)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("opencomputer")


def is_retry_attempt() -> bool:
    """Whether the current task run is on its second attempt or later."""
    context = TaskRunContext.get()
    return context is not None and context.task_run.run_count > 1


MAX_ENTRIES_PER_RUN = 1000
# Nor a long-lived process that runs flow after flow: past this many run records, the least recently
# used ones that hold nothing left to clean up are dropped.
MAX_RUNS = 256


@dataclass(frozen=True)
class ReportEntry:
    """One row of the report: what happened (`kind`) to which sandbox, and how it ended."""

    kind: str
    sandbox_id: str
    subject: str
    outcome: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def creates_sandbox(self) -> bool:
        return self.kind in ("sandbox", "fork")

    def row(self) -> dict[str, str]:
        return {
            "time": self.at.strftime("%H:%M:%S"),
            "kind": self.kind,
            "sandbox": self.sandbox_id,
            "subject": self.subject,
            "outcome": self.outcome,
        }


@dataclass
class _RunRecord:
    entries: list[ReportEntry] = field(default_factory=list)
    sandboxes: set[str] = field(default_factory=set)
    # (sandbox id, checkpoint id) of checkpoints the run made and has not deleted.
    checkpoints: set[tuple[str, str]] = field(default_factory=set)
    # The flow run's `run_count` when it last entered Running in this process: a change is a new attempt.
    attempt: int | None = None
    # How many task runs of each label (`fork[cp-…]`) the run has named.
    numbers: dict[str, int] = field(default_factory=dict)
    credentials: OpenComputerCredentials | None = None
    # The memory tier of each sandbox the run created, for its cost estimate.
    memory_mb: dict[str, int] = field(default_factory=dict)
    # How many entries the last published report showed: the end-of-run report is skipped if unchanged.
    published_entries: int | None = None

    def holds_resources(self) -> bool:
        return bool(self.sandboxes or self.checkpoints)


_lock = threading.Lock()
# Least recently used first; callers hold _lock.
_runs: OrderedDict[str, _RunRecord] = OrderedDict()


def _record_of(flow_run_id: str) -> _RunRecord:
    """The run's record, made on first use and marked as the most recently used."""
    run = _runs.get(flow_run_id)
    if run is None:
        _make_room()
        run = _runs[flow_run_id] = _RunRecord()
    else:
        _runs.move_to_end(flow_run_id)
    return run


def _make_room() -> None:
    """Room for one more record within MAX_RUNS, never dropping one with something left to clean up."""
    excess = len(_runs) + 1 - MAX_RUNS
    if excess > 0:
        quiet = [key for key, run in _runs.items() if not run.holds_resources()]
        for flow_run_id in quiet[:excess]:
            del _runs[flow_run_id]


def _current_record() -> _RunRecord | None:
    flow_run_id = current_flow_run_id()
    if flow_run_id is None:
        return None
    return _record_of(flow_run_id)


def add_entry(entry: ReportEntry, *, cleanup: bool, memory_mb: int | None) -> None:
    """Add a row to the current flow run's record; outside a flow run there is none.

    A created sandbox (`kind` "sandbox" or "fork") is also remembered for the run's cleanup unless
    `cleanup` is False (it is meant to outlive the run); `memory_mb`, its tier, prices its running time.
    """
    with _lock:
        run = _current_record()
        if run is None:
            return
        if len(run.entries) < MAX_ENTRIES_PER_RUN:
            run.entries.append(entry)
        if memory_mb:
            run.memory_mb[entry.sandbox_id] = memory_mb
        if entry.creates_sandbox and cleanup:
            run.sandboxes.add(entry.sandbox_id)
        elif entry.kind == "kill":
            run.sandboxes.discard(entry.sandbox_id)


def memory_of(sandbox_id: str | None) -> int | None:
    """The memory tier the current run recorded for a sandbox it created (None: not known)."""
    with _lock:
        run = _current_record()
        return None if run is None or sandbox_id is None else run.memory_mb.get(sandbox_id)


def next_number(label: str) -> int:
    """1, 2, 3, ... for successive task runs of the current flow run named `label`."""
    with _lock:
        run = _current_record()
        if run is None:
            return 1
        run.numbers[label] = run.numbers.get(label, 0) + 1
        return run.numbers[label]


def remember_checkpoint(sandbox_id: str, checkpoint_id: str) -> None:
    """The current run made this checkpoint: a failed run deletes it."""
    with _lock:
        if (run := _current_record()) is not None:
            run.checkpoints.add((sandbox_id, checkpoint_id))


def forget_checkpoint(sandbox_id: str, checkpoint_id: str) -> None:
    with _lock:
        for run in _runs.values():
            run.checkpoints.discard((sandbox_id, checkpoint_id))


def remember_credentials(credentials: OpenComputerCredentials) -> None:
    """The credentials the run's tasks used, so its cleanup hooks reach the same service."""
    with _lock:
        if (run := _current_record()) is not None:
            run.credentials = credentials


def release(sandbox_id: str) -> None:
    """Stop counting a sandbox as the current run's to clean up (it is meant to outlive the run)."""
    with _lock:
        if (run := _current_record()) is not None:
            run.sandboxes.discard(sandbox_id)
            run.checkpoints = {pair for pair in run.checkpoints if pair[0] != sandbox_id}


def live_sandboxes(flow_run_id: str) -> set[str]:
    """Sandboxes this process created for the flow run and has not killed."""
    with _lock:
        run = _runs.get(flow_run_id)
        return set(run.sandboxes) if run else set()


def live_checkpoints(flow_run_id: str) -> set[tuple[str, str]]:
    """(sandbox id, checkpoint id) of checkpoints this process made for the flow run and did not delete."""
    with _lock:
        run = _runs.get(flow_run_id)
        return set(run.checkpoints) if run else set()


def is_new_attempt(flow_run_id: str, run_count: int) -> bool:
    """Whether the flow run entering Running with `run_count` starts a retry (not its first attempt, nor
    a resume after a pause)."""
    with _lock:
        run = _record_of(flow_run_id)
        previous, run.attempt = run.attempt, run_count
    return run_count != previous if previous is not None else run_count > 0


def run_credentials(flow_run_id: str) -> OpenComputerCredentials | None:
    with _lock:
        run = _runs.get(flow_run_id)
        return run.credentials if run else None


def entries(flow_run_id: str) -> list[ReportEntry]:
    with _lock:
        run = _runs.get(flow_run_id)
        return list(run.entries) if run else []


def forget(flow_run_id: str) -> None:
    """Drop a finished run's record (its sandboxes are gone; its table is published)."""
    with _lock:
        _runs.pop(flow_run_id, None)


def report_inputs(flow_run_id: str) -> tuple[list[ReportEntry], dict[str, int]]:
    """The run's report rows and the memory tier of each sandbox it created."""
    with _lock:
        run = _runs.get(flow_run_id)
        return (list(run.entries), dict(run.memory_mb)) if run else ([], {})


def mark_published(flow_run_id: str, rows: int) -> None:
    with _lock:
        if (run := _runs.get(flow_run_id)) is not None:
            run.published_entries = rows


def is_published(flow_run_id: str, rows: int) -> bool:
    """Whether the run's last published report had `rows` rows and the run has no sandbox left to report."""
    with _lock:
        run = _runs.get(flow_run_id)
        return run is not None and run.published_entries == rows and not run.sandboxes
