"""Wire models: snake_case in Python, camelCase on the wire, tolerant of every shape the service sends.

The control plane, the hosted front door and the combined dev server disagree on a few spellings
(`template` vs `templateID`, `sandboxID` vs `sandboxId`), send JSON `null` for empty collections and the Go
zero time for "not set"; the annotated types below absorb that once, so nothing downstream has to.
Serialising with `by_alias=True` gives the control-plane spelling.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, SecretStr


def _none_if_unset(value: object) -> object:
    # Go marshals an unset time.Time as its zero value; the edge sends it for live sandboxes' endAt.
    if value is None or value == "" or (isinstance(value, str) and value.startswith("0001-01-01")):
        return None
    return value


def _empty_if_null(value: object) -> object:
    return {} if value is None else value


def _list_if_null(value: object) -> object:
    return [] if value is None else value


Timestamp = Annotated[datetime | None, BeforeValidator(_none_if_unset)]
StringMap = Annotated[dict[str, str], BeforeValidator(_empty_if_null)]
JsonObject = Annotated[dict[str, JsonValue], BeforeValidator(_empty_if_null)]
StringList = Annotated[list[str], BeforeValidator(_list_if_null)]


class WireModel(BaseModel):
    """Base of every response model: unknown fields are ignored, Python names are accepted too."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")


# Sandboxes


class Sandbox(WireModel):
    """A sandbox as the service reports it; fields it did not send are None (shapes differ per route)."""

    sandbox_id: str = Field(
        validation_alias=AliasChoices("sandboxID", "sandboxId", "sandbox_id"), serialization_alias="sandboxID"
    )
    status: str = "running"
    template: str = Field(
        default="", validation_alias=AliasChoices("template", "templateID"), serialization_alias="template"
    )
    region: str | None = None
    worker_id: str | None = Field(default=None, alias="workerID")
    started_at: Timestamp = Field(default=None, alias="startedAt")
    end_at: Timestamp = Field(default=None, alias="endAt")
    sandbox_domain: str | None = Field(default=None, alias="sandboxDomain")
    patch_error: str | None = Field(default=None, alias="patchError")
    tags: StringMap = Field(default_factory=dict)
    tags_last_updated_at: Timestamp = Field(default=None, alias="tagsLastUpdatedAt")
    from_checkpoint_id: str | None = Field(default=None, alias="fromCheckpointId")
    memory_mb: int | None = Field(default=None, alias="memoryMB")
    cpu_count: int | None = Field(default=None, alias="cpuCount")
    # Credentials: kept off repr and out of every dump, so a Sandbox can be a persisted task result.
    token: SecretStr | None = Field(default=None, repr=False, exclude=True)
    preview_auth_token: SecretStr | None = Field(
        default=None, alias="previewAuthToken", repr=False, exclude=True
    )

    @property
    def is_running(self) -> bool:
        return self.status == "running"

    def __getstate__(self) -> dict[Any, Any]:
        """Pickled (Prefect's default result serializer, cloudpickle) without the tokens, as JSON is."""
        state: dict[Any, Any] = super().__getstate__()
        state["__dict__"] = {**state["__dict__"], **dict.fromkeys(_SANDBOX_SECRETS)}
        state["__pydantic_fields_set__"] = state["__pydantic_fields_set__"] - _SANDBOX_SECRETS
        return state


_SANDBOX_SECRETS = frozenset({"token", "preview_auth_token"})


class SandboxTags(WireModel):
    """The full tag map of a sandbox and when it last changed."""

    tags: StringMap = Field(default_factory=dict)
    tags_last_updated_at: Timestamp = Field(default=None, alias="tagsLastUpdatedAt")


class TagKey(WireModel):
    """A tag key in use: how many sandboxes carry it and how many distinct values it has."""

    key: str
    sandbox_count: int = Field(default=0, alias="sandboxCount")
    value_count: int = Field(default=0, alias="valueCount")


# Exec


class CommandResult(WireModel):
    """What a synchronous command produced; a non-zero exit or a timeout is a result, not an error."""

    exit_code: int = Field(alias="exitCode")
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def timed_out(self) -> bool:
        # The service kills the process group and reports -1 with this stderr suffix, still HTTP 200.
        return self.exit_code == -1 and self.stderr.rstrip().endswith("Process timed out")


class AsyncRun(WireModel):
    """An async run (`exec/run-async` and its `result` polls): running, or finished with its output.

    `exec_id` is None when the service answered inline because the command ended at once. The output
    is the session's 1 MB scrollback: `truncated` says the beginning was lost. `error` reports a run
    that could not happen (the sandbox failed to wake), with `exit_code` -1.
    """

    exec_id: str | None = Field(default=None, alias="execId")
    running: bool = False
    exit_code: int | None = Field(default=None, alias="exitCode")
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    error: str | None = None
    started_at: Timestamp = Field(default=None, alias="startedAt")


class ExecSession(WireModel):
    """A background exec session: its output can be attached to over a WebSocket while it runs."""

    session_id: str = Field(
        validation_alias=AliasChoices("sessionID", "sessionId", "session_id"), serialization_alias="sessionID"
    )
    sandbox_id: str = Field(
        default="",
        validation_alias=AliasChoices("sandboxID", "sandboxId", "sandbox_id"),
        serialization_alias="sandboxID",
    )
    command: str = ""
    args: StringList = Field(default_factory=list)
    running: bool = True
    exit_code: int | None = Field(default=None, alias="exitCode")
    started_at: Timestamp = Field(default=None, alias="startedAt")
    attached_clients: int = Field(default=0, alias="attachedClients")


@dataclass(frozen=True, slots=True)
class ExecOutput:
    """A chunk of output from an attached exec session, as raw bytes (may split UTF-8 sequences)."""

    stream: Literal["stdout", "stderr"]
    data: bytes


@dataclass(frozen=True, slots=True)
class ExecScrollbackEnd:
    """Everything before this event was replayed from the session's scrollback; after it is live."""


@dataclass(frozen=True, slots=True)
class ExecExit:
    """The session's process ended; -1 when it was killed, timed out or the exit code is unknown."""

    exit_code: int


ExecEvent = ExecOutput | ExecScrollbackEnd | ExecExit


# Files


class FileEntry(WireModel):
    """One entry of a directory listing."""

    name: str
    path: str = ""
    is_dir: bool = Field(default=False, alias="isDir")
    size: int = 0


class SignedURL(WireModel):
    """A pre-signed URL that reads or writes one file without an API key until it expires."""

    url: str
    expires_at: Timestamp = Field(default=None, alias="expiresAt")


# Checkpoints and patches


class RetentionPolicy(WireModel):
    """How the service makes room for a new checkpoint when the sandbox already holds `max_count`."""

    mode: Literal["none", "delete_oldest"] = "delete_oldest"
    max_count: int | None = Field(default=None, alias="maxCount")


class Checkpoint(WireModel):
    """A named snapshot of a sandbox; the stored sandbox config (with its envs) is deliberately dropped."""

    id: str
    sandbox_id: str = Field(
        default="",
        validation_alias=AliasChoices("sandboxId", "sandboxID", "sandbox_id"),
        serialization_alias="sandboxId",
    )
    org_id: str | None = Field(default=None, alias="orgId")
    name: str
    kind: str = "full"
    status: str = "processing"
    size_bytes: int = Field(default=0, alias="sizeBytes")
    is_public: bool = Field(default=False, alias="isPublic")
    created_at: Timestamp = Field(default=None, alias="createdAt")
    error_msg: str | None = Field(default=None, alias="errorMsg")
    failed_at: Timestamp = Field(default=None, alias="failedAt")
    promotion_status: str | None = Field(default=None, alias="promotionStatus")
    promotion_error: str | None = Field(default=None, alias="promotionError")
    promoted_checkpoint_id: str | None = Field(default=None, alias="promotedCheckpointId")

    @property
    def is_ready(self) -> bool:
        return self.status == "ready"


class CheckpointRestore(WireModel):
    """Acknowledgement that a restore started; the sandbox blocks data calls until it is done."""

    sandbox_id: str = Field(
        validation_alias=AliasChoices("sandboxId", "sandboxID", "sandbox_id"), serialization_alias="sandboxId"
    )
    checkpoint_id: str = Field(
        validation_alias=AliasChoices("checkpointId", "checkpointID", "checkpoint_id"),
        serialization_alias="checkpointId",
    )
    status: str = "restoring"


class CheckpointPatch(WireModel):
    """A bash script that runs, in `sequence` order, in every sandbox forked from its checkpoint."""

    id: str
    checkpoint_id: str = Field(
        validation_alias=AliasChoices("checkpointId", "checkpointID", "checkpoint_id"),
        serialization_alias="checkpointId",
    )
    sequence: int
    script: str
    description: str = ""
    strategy: str = "on_wake"
    created_at: Timestamp = Field(default=None, alias="createdAt")


# Preview URLs


class PreviewURL(WireModel):
    """A public hostname that routes to one port of a sandbox."""

    id: str
    sandbox_id: str = Field(
        validation_alias=AliasChoices("sandboxId", "sandboxID", "sandbox_id"), serialization_alias="sandboxId"
    )
    org_id: str | None = Field(default=None, alias="orgId")
    hostname: str
    port: int
    ssl_status: str | None = Field(default=None, alias="sslStatus")
    auth_config: JsonObject = Field(default_factory=dict, alias="authConfig")
    created_at: Timestamp = Field(default=None, alias="createdAt")

    @property
    def url(self) -> str:
        # The hosted service terminates TLS; a local server answers plain HTTP on loopback names and ports.
        host = urlsplit(f"//{self.hostname}").hostname or ""
        plain = ":" in self.hostname.rsplit("]", 1)[-1] or host == "localhost" or host.endswith(".localhost")
        return f"{'http' if plain else 'https'}://{self.hostname}"


# Images and snapshots


class BuildLog(WireModel):
    """One line of an image build: `step` 0 is the service's own bookkeeping, 1..N the manifest's steps."""

    step: int = 0
    type: str = ""
    message: str = ""


class Snapshot(WireModel):
    """A built image in the service's cache; a named one is a snapshot that sandboxes can start from."""

    id: str
    org_id: str | None = Field(default=None, alias="orgId")
    name: str | None = None
    content_hash: str = Field(default="", alias="contentHash")
    checkpoint_id: str | None = Field(default=None, alias="checkpointId")
    manifest: JsonObject = Field(default_factory=dict)
    status: str = "building"
    created_at: Timestamp = Field(default=None, alias="createdAt")
    last_used_at: Timestamp = Field(default=None, alias="lastUsedAt")

    @property
    def is_ready(self) -> bool:
        return self.status == "ready"


# Usage (every *_gb_seconds is GiB-seconds: a 1024 MB sandbox running one second is 1)


class UsageTotals(WireModel):
    """Usage summed over every row the query matched, not only the page."""

    memory_gb_seconds: float = Field(default=0.0, alias="memoryGbSeconds")
    disk_overage_gb_seconds: float = Field(default=0.0, alias="diskOverageGbSeconds")


class UntaggedUsage(UsageTotals):
    """Usage of the sandboxes that lack the tag key a query groups by."""

    sandbox_count: int = Field(default=0, alias="sandboxCount")


class SandboxUsageItem(UsageTotals):
    """One sandbox's usage over the window, with its status and tags now."""

    sandbox_id: str = Field(alias="sandboxId")
    status: str | None = None
    alias: str | None = None
    tags: StringMap = Field(default_factory=dict)
    tags_last_updated_at: Timestamp = Field(default=None, alias="tagsLastUpdatedAt")


class TagUsageItem(UsageTotals):
    """The usage of the sandboxes carrying one value of a tag key."""

    tag_key: str = Field(alias="tagKey")
    tag_value: str = Field(alias="tagValue")
    sandbox_count: int = Field(default=0, alias="sandboxCount")


class UsageBySandbox(WireModel):
    """A page of ``GET /usage?groupBy=sandbox``: largest first; `next_cursor` fetches the next page."""

    from_: datetime = Field(alias="from")
    to: datetime
    total: UsageTotals
    items: Annotated[list[SandboxUsageItem], BeforeValidator(_list_if_null)] = Field(default_factory=list)
    next_cursor: str | None = Field(default=None, alias="nextCursor")


class UsageByTag(WireModel):
    """A page of ``GET /usage?groupBy=tag:<key>``, with the sandboxes lacking the key in `untagged`."""

    from_: datetime = Field(alias="from")
    to: datetime
    group_by: str = Field(alias="groupBy")
    total: UsageTotals
    untagged: UntaggedUsage = Field(default_factory=lambda: UntaggedUsage())
    items: Annotated[list[TagUsageItem], BeforeValidator(_list_if_null)] = Field(default_factory=list)
    next_cursor: str | None = Field(default=None, alias="nextCursor")


class _UsageIntegrals(WireModel):
    """What a span of time consumed: these add up across spans (a point's minute, or the totals)."""

    memory_allocated_gb_seconds: float = Field(default=0.0, alias="memoryAllocatedGbSeconds")
    memory_used_gb_seconds: float = Field(default=0.0, alias="memoryUsedGbSeconds")
    uptime_seconds: int = Field(default=0, alias="uptimeSeconds")


class SandboxUsagePoint(_UsageIntegrals):
    """One UTC minute: the integrals add up across points, the megabytes are for charts."""

    ts: datetime
    allocated_memory_mb: int = Field(default=0, alias="allocatedMemoryMb")
    used_memory_mb_avg: int = Field(default=0, alias="usedMemoryMbAvg")
    used_memory_mb_peak: int = Field(default=0, alias="usedMemoryMbPeak")


class SandboxUsageTotals(_UsageIntegrals):
    """The points summed (and the peaks over them)."""

    memory_allocated_peak_mb: int = Field(default=0, alias="memoryAllocatedPeakMb")
    memory_used_peak_mb: int = Field(default=0, alias="memoryUsedPeakMb")


class SandboxUsage(WireModel):
    """``GET /sandboxes/{id}/usage``: 1-minute points over ``[from, to)`` and their totals."""

    sandbox_id: str = Field(alias="sandboxId")
    from_: datetime = Field(alias="from")
    to: datetime
    alias: str | None = None
    totals: SandboxUsageTotals = Field(default_factory=lambda: SandboxUsageTotals())
    points: Annotated[list[SandboxUsagePoint], BeforeValidator(_list_if_null)] = Field(default_factory=list)
