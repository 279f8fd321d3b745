"""Typed async client for the OpenComputer API: `async with OpenComputerClient() as oc: ...`."""

from prefect_opencomputer.client._attach import ExecAttachment
from prefect_opencomputer.client._checkpoints import Checkpoints
from prefect_opencomputer.client._client import OpenComputerClient
from prefect_opencomputer.client._errors import (
    APIError,
    BadRequestError,
    BuildFailedError,
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
    SnapshotFailedError,
    TransportError,
    UnauthorizedError,
)
from prefect_opencomputer.client._exec import Exec
from prefect_opencomputer.client._files import Files
from prefect_opencomputer.client._images import Image, ImageStep
from prefect_opencomputer.client._models import (
    AsyncRun,
    BuildLog,
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
    Snapshot,
    TagKey,
)
from prefect_opencomputer.client._patches import Patches
from prefect_opencomputer.client._previews import Previews
from prefect_opencomputer.client._sandboxes import Sandboxes
from prefect_opencomputer.client._snapshots import Snapshots
from prefect_opencomputer.client._sse import BuildLogHandler
from prefect_opencomputer.client._transport import RetryPolicy, resolve_api_base

__all__ = [
    "APIError",
    "AsyncRun",
    "BadRequestError",
    "BuildFailedError",
    "BuildLog",
    "BuildLogHandler",
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
    "Image",
    "ImageStep",
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
    "Snapshot",
    "SnapshotFailedError",
    "Snapshots",
    "TagKey",
    "TransportError",
    "UnauthorizedError",
    "resolve_api_base",
]
