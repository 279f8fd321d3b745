"""Prefect events about sandboxes, so automations can react to what this integration does."""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

SANDBOX_CREATED = "opencomputer.sandbox.created"
SANDBOX_KILLED = "opencomputer.sandbox.killed"
SANDBOX_FORKED = "opencomputer.sandbox.forked"
CHECKPOINT_CREATED = "opencomputer.checkpoint.created"
SANDBOX_RESOURCE_PREFIX = "opencomputer.sandbox."


def sandbox_resource_id(sandbox_id: str) -> str:
    return f"{SANDBOX_RESOURCE_PREFIX}{sandbox_id}"


def emit_sandbox_event(
    event: str,
    sandbox_id: str,
    *,
    payload: dict[str, Any] | None = None,
    checkpoint_id: str | None = None,
    source_sandbox_id: str | None = None,
) -> None:
    """Emit `event` about one sandbox; the checkpoint and source sandbox, when given, are related."""
    related: list[dict[str, str]] = []
    if checkpoint_id is not None:
        related.append(
            {
                "prefect.resource.id": f"opencomputer.checkpoint.{checkpoint_id}",
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
    emit_event(
        event=event,
        resource={
            "prefect.resource.id": sandbox_resource_id(sandbox_id),
            "prefect.resource.name": sandbox_id,
        },
        related=related or None,
        payload=payload,
    )
