"""Task run names a person can read in the UI: `run[sb-1a2b3c4d]: pytest -q`, `fork[cp-5e6f7a8b]`."""

from __future__ import annotations

from typing import Any, cast

from prefect.tasks import TaskRunNameCallbackWithParameters

from prefect_opencomputer.tasks.references import (
    sandbox_id_of,
    short_checkpoint_id,
    short_command,
)

# Every task of this integration carries this tag: filter on it in the UI, or cap it with a concurrency limit.
TASK_TAG = "opencomputer"

RunName = TaskRunNameCallbackWithParameters


def on_sandbox(verb: str, detail: str | None = None) -> RunName:
    """`verb[sb-…]`, followed by `: <parameter detail>` when that parameter is set."""

    def name(parameters: dict[str, Any]) -> str:
        label = f"{verb}[{sandbox_id_of(parameters['sandbox'])}]"
        value = parameters.get(detail) if detail else None
        return f"{label}: {short_command(str(value))}" if value not in (None, "") else label

    return cast(RunName, name)


def on_checkpoint(verb: str) -> RunName:
    def name(parameters: dict[str, Any]) -> str:
        return f"{verb}[{short_checkpoint_id(parameters['checkpoint'])}]"

    return cast(RunName, name)


def _command_run_name(parameters: dict[str, Any]) -> str:
    return f"run[{sandbox_id_of(parameters['sandbox'])}]: {short_command(parameters['command'])}"


command_run_name = cast(RunName, _command_run_name)
