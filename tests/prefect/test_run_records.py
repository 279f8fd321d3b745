"""The in-process record of flow runs stays bounded in a process that runs flow after flow."""

from __future__ import annotations

from collections import OrderedDict
from uuid import uuid4

import pytest
from prefect import flow
from prefect.context import get_run_context

from prefect_opencomputer.tasks import run_registry, run_report


@pytest.fixture
def few_runs(monkeypatch: pytest.MonkeyPatch) -> int:
    """A process that keeps five run records, starting with none (the session's own runs put aside)."""
    monkeypatch.setattr(run_registry, "MAX_RUNS", 5)
    monkeypatch.setattr(run_registry, "_runs", OrderedDict())
    return 5


def test_old_quiet_records_go_and_those_with_something_to_clean_up_stay(few_runs: int) -> None:
    @flow
    def holds_a_sandbox() -> str:
        run_report.record("sandbox", "sb-held", "created", "running")
        return str(get_run_context().flow_run.id)  # type: ignore[union-attr]

    holding = holds_a_sandbox()
    quiet = [str(uuid4()) for _ in range(few_runs * 3)]
    for flow_run_id in quiet:
        run_registry.is_new_attempt(flow_run_id, 0)

    assert len(run_registry._runs) == few_runs
    assert run_registry.live_sandboxes(holding) == {"sb-held"}  # the oldest, but its cleanup still needs it
    assert list(run_registry._runs)[1:] == quiet[-(few_runs - 1) :]  # then the most recent quiet ones


def test_a_record_in_use_is_kept_over_older_ones(few_runs: int) -> None:
    first, *others = [str(uuid4()) for _ in range(few_runs)]
    for flow_run_id in (first, *others):
        run_registry.is_new_attempt(flow_run_id, 0)
    run_registry.is_new_attempt(first, 0)  # used again: now the most recent
    run_registry.is_new_attempt(str(uuid4()), 0)

    assert first in run_registry._runs and others[0] not in run_registry._runs
    assert not run_registry.is_new_attempt(first, 0)  # its attempt count survived
