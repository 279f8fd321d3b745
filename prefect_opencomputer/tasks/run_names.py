"""Task run names a person can read: `run[sb-1a2b3c4d]: pytest -q`, `fork[cp-5e6f7a8b] #2`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from prefect.tasks import TaskRunNameCallbackWithParameters

from prefect_opencomputer.tasks import run_registry
from prefect_opencomputer.tasks.references import CheckpointRef, checkpoint_id_of, sandbox_id_of

RunName = TaskRunNameCallbackWithParameters


def short_checkpoint_id(checkpoint: CheckpointRef) -> str:
    """`cp-1a2b3c4d`: checkpoint ids are UUIDs, too long for a task run name."""
    return f"cp-{checkpoint_id_of(checkpoint)[:8]}"


def short_command(command: str | Sequence[str], limit: int = 48) -> str:
    text = command if isinstance(command, str) else " ".join(command)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def on_sandbox(verb: str, detail: str | None = None) -> RunName:
    """`verb[sb-…]`, followed by `: <parameter detail>` when that parameter is set."""

    def name(parameters: dict[str, Any]) -> str:
        label = f"{verb}[{sandbox_id_of(parameters['sandbox'])}]"
        value = parameters.get(detail) if detail else None
        return f"{label}: {short_command(str(value))}" if value not in (None, "") else label

    return cast(RunName, name)


def on_checkpoint(verb: str, *, numbered: bool = False) -> RunName:
    """`verb[cp-…]`; `numbered` adds ` #n`, counted per flow run, so N forks of one checkpoint differ."""

    def name(parameters: dict[str, Any]) -> str:
        label = f"{verb}[{short_checkpoint_id(parameters['checkpoint'])}]"
        return f"{label} #{run_registry.next_number(label)}" if numbered else label

    return cast(RunName, name)
