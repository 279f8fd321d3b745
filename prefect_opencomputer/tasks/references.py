"""How tasks accept a sandbox or a checkpoint: as its id or as the model a previous task returned."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from prefect_opencomputer.client import Checkpoint, Sandbox

SandboxRef: TypeAlias = Sandbox | str
CheckpointRef: TypeAlias = Checkpoint | str


def sandbox_id_of(sandbox: SandboxRef) -> str:
    return sandbox.sandbox_id if isinstance(sandbox, Sandbox) else sandbox


def checkpoint_id_of(checkpoint: CheckpointRef) -> str:
    return checkpoint.id if isinstance(checkpoint, Checkpoint) else checkpoint


def short_checkpoint_id(checkpoint: CheckpointRef) -> str:
    """`cp-1a2b3c4d`: checkpoint ids are UUIDs, too long for a task run name."""
    return f"cp-{checkpoint_id_of(checkpoint)[:8]}"


def short_command(command: str | Sequence[str], limit: int = 48) -> str:
    text = command if isinstance(command, str) else " ".join(command)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
