"""Prefect events `opencomputer.*`: automations react to them; the reaper finds what the list no longer
shows."""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

from prefect_opencomputer.tasks.run_registry import current_flow_run_id

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
