"""Typed async client for the OpenComputer API: `async with OpenComputerClient() as oc: ...`."""

from prefect_opencomputer.client._attach import ExecAttachment
from prefect_opencomputer.client._checkpoints import Checkpoints
from prefect_opencomputer.client._client import OpenComputerClient
from prefect_opencomputer.client._errors import (
    APIError,
    BadRequestError,
    CheckpointFailedError,
    CommandTimedOutError,
    ConflictError,
    ForbiddenError,
    GoneError,
    NotFoundError,
    OpenComputerError,
    PaymentRequiredError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnauthorizedError,
)
from prefect_opencomputer.client._exec import Exec
from prefect_opencomputer.client._files import Files
from prefect_opencomputer.client._models import (
    Checkpoint,
    CheckpointPatch,
    CheckpointRestore,
    CommandResult,
    ExecEvent,
    ExecExit,
    ExecOutput,
    ExecScrollbackEnd,
    ExecSession,
    FileEntry,
    PreviewURL,
    RetentionPolicy,
    Sandbox,
    SandboxTags,
    SignedURL,
)
from prefect_opencomputer.client._patches import Patches
from prefect_opencomputer.client._previews import Previews
from prefect_opencomputer.client._sandboxes import Sandboxes
from prefect_opencomputer.client._transport import RetryPolicy

__all__ = [
    "APIError",
    "BadRequestError",
    "Checkpoint",
    "CheckpointFailedError",
    "CheckpointPatch",
    "CheckpointRestore",
    "Checkpoints",
    "CommandResult",
    "CommandTimedOutError",
    "ConflictError",
    "Exec",
    "ExecAttachment",
    "ExecEvent",
    "ExecExit",
    "ExecOutput",
    "ExecScrollbackEnd",
    "ExecSession",
    "FileEntry",
    "Files",
    "ForbiddenError",
    "GoneError",
    "NotFoundError",
    "OpenComputerClient",
    "OpenComputerError",
    "Patches",
    "PaymentRequiredError",
    "PreviewURL",
    "Previews",
    "RateLimitedError",
    "RetentionPolicy",
    "RetryPolicy",
    "Sandbox",
    "SandboxTags",
    "Sandboxes",
    "ServerError",
    "SignedURL",
    "TransportError",
    "UnauthorizedError",
]
