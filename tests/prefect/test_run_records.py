"""The in-process record of flow runs stays bounded in a process that runs flow after flow."""

from __future__ import annotations

from collections import OrderedDict
from uuid import uuid4

import pytest
from prefect import flow
from prefect.context import get_run_context

from prefect_opencomputer.tasks import tracking


@pytest.fixture
def few_runs(monkeypatch: pytest.MonkeyPatch) -> int:
    """A process that keeps five run records, starting with none (the session's own runs put aside)."""
    monkeypatch.setattr(tracking, "MAX_RUNS", 5)
    monkeypatch.setattr(tracking, "_runs", OrderedDict())
    return 5


def test_old_quiet_records_go_and_those_with_something_to_clean_up_stay(few_runs: int) -> None:
    @flow
    def holds_a_sandbox() -> str:
        tracking.record("sandbox", "sb-held", "created", "running")
        return str(get_run_context().flow_run.id)  # type: ignore[union-attr]

    holding = holds_a_sandbox()
    quiet = [str(uuid4()) for _ in range(few_runs * 3)]
    for flow_run_id in quiet:
        tracking.is_new_attempt(flow_run_id, 0)

    assert len(tracking._runs) == few_runs
    assert tracking.live_sandboxes(holding) == {"sb-held"}  # the oldest, but its cleanup still needs it
    assert list(tracking._runs)[1:] == quiet[-(few_runs - 1) :]  # then the most recent quiet ones


def test_a_record_in_use_is_kept_over_older_ones(few_runs: int) -> None:
    first, *others = [str(uuid4()) for _ in range(few_runs)]
    for flow_run_id in (first, *others):
        tracking.is_new_attempt(flow_run_id, 0)
    tracking.is_new_attempt(first, 0)  # used again: now the most recent
    tracking.is_new_attempt(str(uuid4()), 0)

    assert first in tracking._runs and others[0] not in tracking._runs
    assert not tracking.is_new_attempt(first, 0)  # its attempt count survived
