"""Errors raised by tasks and example flows (the client's own are in `prefect_opencomputer.client`)."""

from __future__ import annotations

from prefect_opencomputer.client import CommandResult, OpenComputerError


def _tail(text: str, limit: int = 800) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


class CommandFailedError(OpenComputerError):
    """Raised by `run_command` (with `check=True`) when the command exits with a non-zero code."""

    def __init__(self, sandbox_id: str, command: str, result: CommandResult) -> None:
        self.sandbox_id = sandbox_id
        self.command = command
        self.result = result
        detail = _tail(result.stderr) or _tail(result.stdout) or "no output"
        super().__init__(f"command {command!r} in {sandbox_id} exited with code {result.exit_code}: {detail}")


class PatchFailedError(OpenComputerError):
    """Raised when a fork's checkpoint patches did not all apply (the service reports `patchError`)."""

    def __init__(self, sandbox_id: str, checkpoint_id: str, patch_error: str) -> None:
        self.sandbox_id = sandbox_id
        self.checkpoint_id = checkpoint_id
        self.patch_error = patch_error
        super().__init__(f"patches of checkpoint {checkpoint_id} failed in fork {sandbox_id}: {patch_error}")
