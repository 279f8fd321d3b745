"""Every exception the client raises, in one flat hierarchy under `OpenComputerError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect_opencomputer.client._models import BuildLog, Checkpoint, Snapshot


class OpenComputerError(Exception):
    """Base class of every error raised by the OpenComputer client."""


# Answers from the service: the request reached it and it said no.


class APIError(OpenComputerError):
    """Raised when the service answers with an error status (or an error body)."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after
        self.method = method
        self.path = path
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f"{self.method} {self.path}: " if self.method and self.path else ""
        code = f" [{self.code}]" if self.code else ""
        return f"{where}HTTP {self.status_code}{code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, message={self.message!r})"


class BadRequestError(APIError):
    """Raised on 400: the request failed validation or the sandbox is in the wrong state."""


class UnauthorizedError(APIError):
    """Raised on 401: the API key is missing (or, at the hosted front door, invalid)."""


class PaymentRequiredError(APIError):
    """Raised on 402: credits exhausted or the plan does not allow the request."""


class ForbiddenError(APIError):
    """Raised on 403: invalid API key, another organisation's resource, or an org limit."""


class NotFoundError(APIError):
    """Raised on 404: unknown sandbox, checkpoint, patch, template or preview URL."""


class ConflictError(APIError):
    """Raised on 409: a checkpoint (or snapshot) with that name already exists."""


class GoneError(APIError):
    """Raised on 410: the sandbox has been stopped."""


class RateLimitedError(APIError):
    """Raised on 429: the organisation reached its concurrent-sandbox limit."""


class ServerError(APIError):
    """Raised on 5xx, or when a long command's 200 response carries an error body."""


# Failures of the connection itself: no answer from the service.


class TransportError(OpenComputerError):
    """Raised when the network failed; `ambiguous` is True when the request may have taken effect."""

    def __init__(self, message: str, *, ambiguous: bool) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


# Outcomes of long-running operations.


class CheckpointFailedError(OpenComputerError):
    """Raised by `checkpoints.wait_ready` when the checkpoint ends in status "failed"."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        reason = checkpoint.error_msg or "no reason given"
        super().__init__(f"checkpoint {checkpoint.name!r} ({checkpoint.id}) failed: {reason}")


class BuildFailedError(OpenComputerError):
    """Raised when an image build ends in failure; the message names the step and its output.

    `logs` holds the last lines of the build log the service streamed before it failed.
    """

    def __init__(self, message: str, *, logs: tuple[BuildLog, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.logs = logs


class SnapshotFailedError(OpenComputerError):
    """Raised by `snapshots.wait_ready` when the snapshot's build ends in status "failed"."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        super().__init__(f"snapshot {snapshot.name!r} failed to build")


class CommandTimedOutError(OpenComputerError):
    """Never raised by the client (a timed-out command is a `CommandResult`); tasks raise it."""
