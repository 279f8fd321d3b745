"""What the local server remembers about each resource: plain records, persisted by `state`.

Records carry no behaviour and no wire shape: the service decides what they mean, the routers
decide how they look on the wire.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

SandboxStatus = Literal["pending", "running", "hibernated", "stopped", "error"]
CheckpointStatus = Literal["processing", "ready", "failed"]
CheckpointKind = Literal["full", "disk_only"]

# One organisation owns everything on a local server; the wire still names it.
LOCAL_ORG_ID = "00000000-0000-4000-8000-000000000001"
WORKER_ID = "local"


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """Microsecond RFC3339 in UTC, the way the control plane marshals its times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339_millis(moment: datetime) -> str:
    """Millisecond RFC3339 in UTC: the format of ``tagsLastUpdatedAt``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def rfc3339_seconds(moment: datetime) -> str:
    """Whole-second RFC3339 in UTC (Go's ``time.RFC3339``): the usage routes' windows."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_sandbox_id() -> str:
    return "sb-" + uuid.uuid4().hex[:8]


def new_session_id() -> str:
    return uuid.uuid4().hex[:8]


def new_uuid() -> str:
    return str(uuid.uuid4())


def new_token() -> str:
    """A 256-bit URL-safe token (43 characters)."""
    return secrets.token_urlsafe(32)


@dataclass
class SandboxRecord:
    id: str
    status: SandboxStatus
    template: str
    timeout: int
    cpu_count: int
    memory_mb: int
    disk_mb: int
    token: str
    started_at: datetime
    envs: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    preview_auth_hash: str | None = None
    stopped_at: datetime | None = None
    tags: dict[str, str] = field(default_factory=dict)
    tags_updated_at: datetime | None = None
    patch_error: str | None = None
    based_on_checkpoint_id: str | None = None
    last_patch_sequence: int = 0
    network_enabled: bool = True

    def config(self) -> dict[str, object]:
        """The sandbox's creation settings as the control plane persists them (``SandboxConfig``)."""
        config: dict[str, object] = {
            "templateID": self.template,
            "cpuCount": self.cpu_count,
            "memoryMB": self.memory_mb,
            "diskMB": self.disk_mb,
            "networkEnabled": self.network_enabled,
        }
        if self.timeout:
            config["timeout"] = self.timeout
        if self.envs:
            config["envs"] = dict(self.envs)
        if self.metadata:
            config["metadata"] = dict(self.metadata)
        return config


@dataclass
class ScalingRecord:
    """A sandbox's scaling settings (``PUT /autoscale``, ``PUT /scaling-lock``); all off by default."""

    sandbox_id: str
    autoscale_enabled: bool = False
    min_memory_mb: int = 0
    max_memory_mb: int = 0
    locked: bool = False


@dataclass
class CheckpointRecord:
    id: str
    sandbox_id: str
    name: str
    kind: CheckpointKind
    status: CheckpointStatus
    sandbox_config: dict[str, object]
    created_at: datetime
    size_bytes: int = 0
    error_msg: str | None = None
    failed_at: datetime | None = None


@dataclass
class PatchRecord:
    id: str
    checkpoint_id: str
    sequence: int
    script: str
    description: str
    created_at: datetime


@dataclass
class PreviewRecord:
    id: str
    sandbox_id: str
    port: int
    hostname: str
    auth_config: object
    created_at: datetime


@dataclass
class RunningInterval:
    """A stretch of time a sandbox ran at ``memory_mb``: what allocated memory is billed on.

    ``ended_at`` is None while it runs; hibernated and stopped time lies between intervals.
    """

    sandbox_id: str
    memory_mb: int
    started_at: datetime
    ended_at: datetime | None = None


@dataclass
class MemorySample:
    """The sandbox's cgroup memory at ``sampled_at``, and the most it held since the sample before."""

    sandbox_id: str
    sampled_at: datetime
    memory_bytes: int
    peak_bytes: int
