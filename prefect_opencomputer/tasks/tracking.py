"""What ties a sandbox to the Prefect run that made it, and what that run can see of it.

Three records of one fact, each for a different reader:
- ownership tags on the sandbox (cleanup hooks and the reaper find it from any process);
- Prefect events `opencomputer.*` (automations react; the reaper finds what the list no longer shows);
- this process's run report (a table artifact at the end of the run, and the run's own cleanup list of
  sandboxes and checkpoints it made and has not removed).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.artifacts import TableArtifact, acreate_table_artifact, create_table_artifact
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import emit_event
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.logging.loggers import LoggingAdapter, get_logger

from prefect_opencomputer.tasks import cost, leases

if TYPE_CHECKING:
    from prefect.flows import Flow, FlowStateHook

    from prefect_opencomputer.blocks.credentials import OpenComputerCredentials

# -- Ownership tags -------------------------------------------------------------------------------------

TAG_CREATED_BY = "prefect.created_by"
TAG_FLOW_RUN = "prefect.flow_run_id"
TAG_TASK_RUN = "prefect.task_run_id"
TAG_DEPLOYMENT = "prefect.deployment_id"
# The flow run an `opencomputer` worker runs in the sandbox. Not TAG_FLOW_RUN: the flow's own cleanup hooks
# kill every sandbox tagged with its run, and would kill the one they run in.
TAG_WORKER_FLOW_RUN = "prefect.worker.flow_run_id"
# A sandbox meant to outlive its flow run (say, the one holding a golden checkpoint): hooks and the reaper
# leave it alone whatever the value.
TAG_RETAIN = "prefect.retain"
CREATED_BY = "prefect-opencomputer"

# Idle timeout (seconds) given to every sandbox this integration creates: an orphan hibernates, never
# runs forever. 0 would mean "persistent", which only a caller who asks for it gets.
DEFAULT_IDLE_TIMEOUT = 600


def ownership_tags() -> dict[str, str]:
    """Tags naming the current flow run, task run and deployment (whichever exist), and the lease this
    process renews while it lives (so the reaper knows when the owner is gone)."""
    tags = {TAG_CREATED_BY: CREATED_BY, leases.TAG_OWNER_LEASE: leases.held_lease()}
    task_context = TaskRunContext.get()
    flow_context = FlowRunContext.get()
    if task_context is not None:
        tags[TAG_TASK_RUN] = str(task_context.task_run.id)
        if task_context.task_run.flow_run_id is not None:
            tags[TAG_FLOW_RUN] = str(task_context.task_run.flow_run_id)
    flow_run = flow_context.flow_run if flow_context is not None else None
    if flow_run is not None:
        tags.setdefault(TAG_FLOW_RUN, str(flow_run.id))
        if flow_run.deployment_id is not None:
            tags[TAG_DEPLOYMENT] = str(flow_run.deployment_id)
    return tags


def current_flow_run_id() -> str | None:
    flow_context = FlowRunContext.get()
    if flow_context is not None and flow_context.flow_run is not None:
        return str(flow_context.flow_run.id)
    task_context = TaskRunContext.get()
    if task_context is not None and task_context.task_run.flow_run_id is not None:
        return str(task_context.task_run.flow_run_id)
    return None


def is_ours(tags: dict[str, str]) -> bool:
    return tags.get(TAG_CREATED_BY) == CREATED_BY


def is_retained(tags: dict[str, str]) -> bool:
    return TAG_RETAIN in tags


def run_logger() -> logging.Logger | LoggingAdapter:
    """The run logger inside a flow or task run (logs reach the UI), a plain logger elsewhere (hooks)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("opencomputer")


# -- Events ---------------------------------------------------------------------------------------------

SANDBOX_CREATED = "opencomputer.sandbox.created"
SANDBOX_KILLED = "opencomputer.sandbox.killed"
SANDBOX_FORKED = "opencomputer.sandbox.forked"
CHECKPOINT_CREATED = "opencomputer.checkpoint.created"
CHECKPOINT_DELETED = "opencomputer.checkpoint.deleted"
SANDBOX_RESOURCE_PREFIX = "opencomputer.sandbox."


def sandbox_resource_id(sandbox_id: str) -> str:
    return f"{SANDBOX_RESOURCE_PREFIX}{sandbox_id}"


def checkpoint_resource_id(checkpoint_id: str) -> str:
    return f"opencomputer.checkpoint.{checkpoint_id}"


def emit_sandbox_event(
    event: str,
    sandbox_id: str,
    *,
    payload: dict[str, Any] | None = None,
    checkpoint_id: str | None = None,
    source_sandbox_id: str | None = None,
    flow_run_id: str | None = None,
) -> None:
    """Emit `event` about one sandbox; the checkpoint, source sandbox and flow run, when given, are related.

    Inside a run Prefect relates the run itself; `flow_run_id` covers hooks that run outside it.
    """
    related: list[dict[str, str]] = []
    if checkpoint_id is not None:
        related.append(
            {
                "prefect.resource.id": checkpoint_resource_id(checkpoint_id),
                "prefect.resource.role": "checkpoint",
            }
        )
    if source_sandbox_id is not None:
        related.append(
            {
                "prefect.resource.id": sandbox_resource_id(source_sandbox_id),
                "prefect.resource.role": "source-sandbox",
            }
        )
    if flow_run_id is not None and current_flow_run_id() is None:
        related.append(
            {"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}
        )
    emit_event(
        event=event,
        resource={
            "prefect.resource.id": sandbox_resource_id(sandbox_id),
            "prefect.resource.name": sandbox_id,
        },
        related=related or None,
        payload=payload,
    )


# -- The run report -------------------------------------------------------------------------------------

# A flow run that loops forever must not grow this without bound.
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


def record(
    kind: str,
    sandbox_id: str,
    subject: str,
    outcome: str,
    *,
    cleanup: bool = True,
    memory_mb: int | None = None,
) -> None:
    """Add a row to the current flow run's report; outside a flow run there is no report.

    A created sandbox (`kind` "sandbox" or "fork") is also remembered for the run's cleanup unless
    `cleanup` is False (it is meant to outlive the run); `memory_mb`, its tier, prices its running time.
    """
    with _lock:
        run = _current_record()
        if run is None:
            return
        if len(run.entries) < MAX_ENTRIES_PER_RUN:
            run.entries.append(ReportEntry(kind, sandbox_id, subject, outcome))
        if memory_mb:
            run.memory_mb[sandbox_id] = memory_mb
        if kind in ("sandbox", "fork") and cleanup:
            run.sandboxes.add(sandbox_id)
        elif kind == "kill":
            run.sandboxes.discard(sandbox_id)
    if kind in ("sandbox", "fork"):
        _publish_report_at_the_end()


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


_REPORT_DESCRIPTION = (
    "Sandboxes, commands and checkpoints of this flow run, then each sandbox's running time, memory "
    "GiB-seconds and estimated cost."
)
# Kinds of rows that change what became of a sandbox, and what it became.
_FATES = {
    "sandbox": "left running",
    "fork": "left running",
    "wake": "left running",
    "hibernate": "hibernated",
    "retain": "retained (left running)",
}


def _fates(run_entries: list[ReportEntry]) -> dict[str, str]:
    """What became of each sandbox the report names, by its last row that says so."""
    fates: dict[str, str] = {}
    for entry in run_entries:
        if entry.kind == "kill":
            fates[entry.sandbox_id] = "killed" if entry.outcome == "killed" else "gone"
        elif entry.kind in _FATES and not fates.get(entry.sandbox_id, "").startswith("retained"):
            fates[entry.sandbox_id] = _FATES[entry.kind]
    return fates


def _report_rows(
    flow_run_id: str | None, service_gb_seconds: dict[str, float] | None = None, *, final: bool = False
) -> list[dict[str, str]]:
    """The operation rows, each created sandbox's outcome what became of it (`final`: at the run's
    end), then the cost rows (`cost.with_cost_columns` adds their columns to all)."""
    if flow_run_id is None:
        return []
    with _lock:
        run = _runs.get(flow_run_id)
        recorded, memory = (list(run.entries), dict(run.memory_mb)) if run else ([], {})
    if not recorded:
        return []
    fates = _fates(recorded)
    rows = [entry.row() for entry in recorded]
    for entry, row in zip(recorded, rows, strict=True):
        if entry.kind in ("sandbox", "fork") and entry.sandbox_id in fates:
            fate = fates[entry.sandbox_id]
            # Before the run's end a sandbox it has not killed is still in use, not left.
            row["outcome"] = fate if final else fate.replace("left running", "running")
    return cost.with_cost_columns(rows, cost.cost_rows(recorded, memory, service_gb_seconds))


async def _aservice_gb_seconds(flow_run_id: str | None) -> dict[str, float] | None:
    """The service's memory GiB-seconds of the run's sandboxes (by their flow-run tag); None if unknown."""
    credentials = run_credentials(flow_run_id) if flow_run_id else None
    if credentials is None or flow_run_id is None:
        return None
    try:
        async with credentials.get_client() as client:
            items = await client.usage.all_by_sandbox(tags={TAG_FLOW_RUN: flow_run_id})
    except Exception as error:  # usage is a nicety of the report: the run's own count stands
        run_logger().debug("Service usage not available for the report: %s", error)
        return None
    return {item.sandbox_id: item.memory_gb_seconds for item in items}


def _service_gb_seconds(flow_run_id: str | None) -> dict[str, float] | None:
    credentials = run_credentials(flow_run_id) if flow_run_id else None
    if credentials is None or flow_run_id is None:
        return None
    try:
        with credentials.get_sync_client() as client:
            items = client.usage.all_by_sandbox(tags={TAG_FLOW_RUN: flow_run_id})
    except Exception as error:
        run_logger().debug("Service usage not available for the report: %s", error)
        return None
    return {item.sandbox_id: item.memory_gb_seconds for item in items}


def _mark_published(flow_run_id: str, rows: int) -> None:
    with _lock:
        if (run := _runs.get(flow_run_id)) is not None:
            run.published_entries = rows


def report_key(flow_name: str) -> str:
    """The Artifacts page files each flow's reports under one key, a version per run."""
    slug = "".join(char if char.isalnum() else "-" for char in flow_name.lower()).strip("-")
    return f"opencomputer-{slug or 'flow'}"[:100]


async def apublish_run_report(key: str | None = None, description: str | None = None) -> UUID | None:
    """Publish the current flow run's report now, as a table artifact; None when nothing was recorded.

    Every flow run that touched a sandbox publishes it at its end anyway; call this for a report mid-run.

    Args:
        key: Files the table under the Artifacts page, one version per run (lowercase letters, digits,
            dashes); default: `opencomputer-<flow name>`.
        description: Shown above the table.

    Returns:
        The artifact's id, or None outside a flow run or when the run did nothing with sandboxes.
    """
    flow_run_id = current_flow_run_id()
    rows = _report_rows(flow_run_id, await _aservice_gb_seconds(flow_run_id))
    if not rows or flow_run_id is None:
        return None
    artifact_id = await acreate_table_artifact(
        table=rows, key=key or _current_report_key(), description=description or _REPORT_DESCRIPTION
    )
    _mark_published(flow_run_id, len(rows))
    return artifact_id


@async_dispatch(apublish_run_report)
def publish_run_report(key: str | None = None, description: str | None = None) -> UUID | None:
    """Publish the current flow run's report now (`apublish_run_report` in async code)."""
    flow_run_id = current_flow_run_id()
    rows = _report_rows(flow_run_id, _service_gb_seconds(flow_run_id))
    if not rows or flow_run_id is None:
        return None
    # Prefect types this dispatching function as value-or-coroutine; called from sync code it is a value.
    artifact_id = cast(
        UUID,
        create_table_artifact(
            table=rows, key=key or _current_report_key(), description=description or _REPORT_DESCRIPTION
        ),
    )
    _mark_published(flow_run_id, len(rows))
    return artifact_id


def _current_report_key() -> str:
    flow_context = FlowRunContext.get()
    return report_key(flow_context.flow.name if flow_context and flow_context.flow else "flow")


async def publish_report_hook(flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]) -> None:
    """At the end of a flow run that touched a sandbox: its report, with what became of each sandbox."""
    flow_run_id = str(flow_run.id)
    rows = _report_rows(flow_run_id, await _aservice_gb_seconds(flow_run_id), final=True)
    with _lock:
        run = _runs.get(flow_run_id)
        unchanged = run is not None and run.published_entries == len(rows) and not run.sandboxes
    if not rows or unchanged:
        return
    try:
        await TableArtifact(
            key=report_key(flow.name),
            table=rows,
            description=(
                f"Sandboxes, commands and checkpoints of flow run {flow_run.name} ({state.name}), then "
                "each sandbox's running time, memory GiB-seconds and estimated cost."
            ),
            flow_run_id=flow_run.id,
        ).acreate()
    except Exception as exc:  # the run's own outcome matters more than its report
        run_logger().warning("Could not publish the sandbox report of %s: %s", flow_run.name, exc)
        return
    _mark_published(flow_run_id, len(rows))


def _publish_report_at_the_end() -> None:
    """Make the current flow publish its report whenever one of its runs ends (once per flow object)."""
    flow_context = FlowRunContext.get()
    flow = flow_context.flow if flow_context is not None else None
    if flow is None:
        return
    with _lock:
        for hooks in (
            flow.on_completion_hooks,
            flow.on_failure_hooks,
            flow.on_crashed_hooks,
            flow.on_cancellation_hooks,
        ):
            if publish_report_hook not in hooks:
                hooks.append(cast("FlowStateHook[..., Any]", publish_report_hook))


def is_retry_attempt() -> bool:
    """Whether the current task run is on its second attempt or later."""
    context = TaskRunContext.get()
    return context is not None and context.task_run.run_count > 1
