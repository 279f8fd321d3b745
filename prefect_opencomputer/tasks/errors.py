"""Errors raised by tasks and example flows (the client's own are in `prefect_opencomputer.client`)."""

from __future__ import annotations

from prefect_opencomputer._settings import API_KEY_ENV, API_URL_ENV, CREDENTIALS_BLOCK_ENV
from prefect_opencomputer.client import CommandResult, OpenComputerError

# How much of each stream a failure message carries: the end, where the reason usually is.
TAIL_CHARS = 800


def tail(text: str, limit: int = TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


class CommandFailedError(OpenComputerError):
    """Raised by `run_command` (with `check=True`) when the command exits with a non-zero code.

    `stdout_tail` and `stderr_tail` hold the end of each stream (the message shows both); `result` has all
    the task kept.
    """

    def __init__(self, sandbox_id: str, command: str, result: CommandResult) -> None:
        self.sandbox_id = sandbox_id
        self.command = command
        self.result = result
        self.exit_code = result.exit_code
        self.stdout_tail = tail(result.stdout)
        self.stderr_tail = tail(result.stderr)
        streams = [
            f"{name}:\n{text}"
            for name, text in (("stderr", self.stderr_tail), ("stdout", self.stdout_tail))
            if text
        ]
        detail = "\n".join(streams) or "no output"
        super().__init__(f"command {command!r} in {sandbox_id} exited with code {result.exit_code}\n{detail}")


class PatchFailedError(OpenComputerError):
    """Raised when a fork's checkpoint patches did not all apply (the service reports `patchError`)."""

    def __init__(self, sandbox_id: str, checkpoint_id: str, patch_error: str) -> None:
        self.sandbox_id = sandbox_id
        self.checkpoint_id = checkpoint_id
        self.patch_error = patch_error
        super().__init__(f"patches of checkpoint {checkpoint_id} failed in fork {sandbox_id}: {patch_error}")


class ConcurrencyLimitMissingError(OpenComputerError):
    """Raised by a create with `concurrency_strict=True` when its Prefect concurrency limit does not exist."""

    def __init__(self, limit: str) -> None:
        self.limit = limit
        super().__init__(
            f"Prefect concurrency limit {limit!r} does not exist: create it with "
            f"`prefect gcl create {limit} --limit 50` (the service's running-sandbox quota), "
            "or drop concurrency_strict to create sandboxes without it"
        )


class MissingCredentialsError(OpenComputerError):
    """Raised by a task given no credentials block when neither an API key nor a URL is set anywhere."""

    def __init__(self) -> None:
        super().__init__(
            f"no OpenComputer credentials: set {API_KEY_ENV} (and {API_URL_ENV} for another endpoint than "
            "the hosted service) in the environment of the process running the flow, pass an "
            "OpenComputerCredentials block as credentials= (or name a saved one in "
            f"{CREDENTIALS_BLOCK_ENV}), or start the local server (`prefect-opencomputer local serve`) "
            f"and point {API_URL_ENV} and {API_KEY_ENV} at it"
        )
