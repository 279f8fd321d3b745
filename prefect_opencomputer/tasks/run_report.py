"""The run report: a table artifact of a flow run's sandboxes, commands and checkpoints, and their cost.

Every flow run that touched a sandbox publishes it at its end; `publish_run_report` publishes it mid-run.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from prefect.artifacts import TableArtifact, acreate_table_artifact
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import FlowRunContext

from prefect_opencomputer._sync import run_sync
from prefect_opencomputer.tasks import cost, run_registry
from prefect_opencomputer.tasks.ownership import TAG_FLOW_RUN
from prefect_opencomputer.tasks.run_registry import (
    ReportEntry,
    current_flow_run_id,
    run_credentials,
    run_logger,
)

if TYPE_CHECKING:
    from prefect.flows import Flow, FlowStateHook

# Flows are shared by every thread that runs them: one hook list is changed at a time.
_hooks_lock = threading.Lock()


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
    `cleanup` is False (it is meant to outlive the run), and makes the run publish its report when it ends;
    `memory_mb`, its tier, prices its running time.
    """
    entry = ReportEntry(kind, sandbox_id, subject, outcome)
    run_registry.add_entry(entry, cleanup=cleanup, memory_mb=memory_mb)
    if entry.creates_sandbox:
        _publish_report_at_the_end()


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
    recorded, memory = run_registry.report_inputs(flow_run_id)
    if not recorded:
        return []
    fates = _fates(recorded)
    rows = [entry.row() for entry in recorded]
    for entry, row in zip(recorded, rows, strict=True):
        if entry.creates_sandbox and entry.sandbox_id in fates:
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
    run_registry.mark_published(flow_run_id, len(rows))
    return artifact_id


def publish_run_report(key: str | None = None, description: str | None = None) -> UUID | None:
    """Publish the current flow run's report now, from `def` code (`apublish_run_report` in async code)."""
    return run_sync(apublish_run_report(key, description))


def _current_report_key() -> str:
    flow_context = FlowRunContext.get()
    return report_key(flow_context.flow.name if flow_context and flow_context.flow else "flow")


async def publish_report_hook(flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]) -> None:
    """At the end of a flow run that touched a sandbox: its report, with what became of each sandbox."""
    flow_run_id = str(flow_run.id)
    rows = _report_rows(flow_run_id, await _aservice_gb_seconds(flow_run_id), final=True)
    if not rows or run_registry.is_published(flow_run_id, len(rows)):
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
    run_registry.mark_published(flow_run_id, len(rows))


def _publish_report_at_the_end() -> None:
    """Make the current flow publish its report whenever one of its runs ends (once per flow object)."""
    flow_context = FlowRunContext.get()
    flow = flow_context.flow if flow_context is not None else None
    if flow is None:
        return
    with _hooks_lock:
        for hooks in (
            flow.on_completion_hooks,
            flow.on_failure_hooks,
            flow.on_crashed_hooks,
            flow.on_cancellation_hooks,
        ):
            if publish_report_hook not in hooks:
                hooks.append(cast("FlowStateHook[..., Any]", publish_report_hook))
