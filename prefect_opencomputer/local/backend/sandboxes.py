"""The sandboxes resource: create, list, kill, timeout, hibernate, wake and tags; and the host check.

`prepare_host` gets this machine ready before a server starts answering.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prefect_opencomputer.local.backend import preview_auth, sizing
from prefect_opencomputer.local.backend.core import SandboxCore
from prefect_opencomputer.local.backend.records import SandboxRecord, new_token, utc_now
from prefect_opencomputer.local.backend.tags import parse_tags
from prefect_opencomputer.local.config import LocalServerConfig
from prefect_opencomputer.local.errors import Failed, Invalid, Unsupported
from prefect_opencomputer.local.sandbox import rootfs
from prefect_opencomputer.local.sandbox.factory import ready_host

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.images import BuildLogSink, Images


def prepare_host(config: LocalServerConfig, progress: rootfs.Progress) -> str:
    """Get this machine ready to serve, before the server starts answering; returns the limits and
    disks lines for the start-up output.

    Compiles the sandbox helper, checks the cgroups, and builds the default template's root
    filesystem: minutes on the very first run (``progress`` hears about it), a cache hit after.
    Raises `RuntimeUnavailable` with a readable reason.
    """
    return ready_host(config, template=sizing.DEFAULT_TEMPLATE, progress=progress)


@dataclass(frozen=True)
class SandboxRequest:
    """What a client asks for when it creates a sandbox (``POST /sandboxes``)."""

    template: str = ""
    timeout: int = 0
    cpu_count: int = 0
    memory_mb: int = 0
    disk_mb: int = 0
    envs: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    secret_store: str = ""
    preview_auth: tuple[str, str] | None = None  # (scheme, token)
    image: Mapping[str, object] | None = None  # a declarative image manifest
    snapshot: str = ""
    webhooks: bool = False
    network_enabled: bool = True  # DNS and direct TCP to public addresses, like a VM


@dataclass(frozen=True)
class TagKeyStats:
    key: str
    sandbox_count: int
    value_count: int


class Sandboxes:
    """The sandboxes resource: one method per wire action on ``/sandboxes`` and ``/tags``."""

    def __init__(self, core: SandboxCore, images: Images) -> None:
        self._core = core
        self._images = images

    async def create(
        self, request: SandboxRequest, on_build_log: BuildLogSink | None = None
    ) -> tuple[SandboxRecord, str | None]:
        """Create and boot a sandbox; returns it and the preview token when one was asked for.

        With an image or a snapshot the sandbox is a fork of its build (built now unless cached), whose
        log lines go to ``on_build_log``.
        """
        if request.webhooks:
            raise Unsupported("sandbox webhooks are not supported by the local server yet")
        if request.image is not None or request.snapshot:
            return await self._images.create_sandbox(
                self._images.source(request.image, request.snapshot),
                envs=request.envs,
                metadata=request.metadata,
                memory_mb=request.memory_mb,
                secret_store=request.secret_store,
                preview=request.preview_auth,
                log=on_build_log or _no_build_log,
            )
        template = sizing.resolve_template(request.template)
        cpu_count, memory_mb = sizing.resolve_tier(request.cpu_count, request.memory_mb)
        disk_mb = sizing.resolve_disk(request.disk_mb)
        if request.secret_store:
            raise Invalid(f"secret store not found: {request.secret_store}")
        token: str | None = None
        token_hash: str | None = None
        if request.preview_auth is not None:
            token, token_hash = preview_auth.issue(*request.preview_auth)
        record = SandboxRecord(
            id=self._core.admit_sandbox(),
            status="pending",
            template=template,
            timeout=max(0, request.timeout),
            cpu_count=cpu_count,
            memory_mb=memory_mb,
            disk_mb=disk_mb,
            token=new_token(),
            started_at=utc_now(),
            envs=dict(request.envs),
            metadata=dict(request.metadata),
            preview_auth_hash=token_hash,
            network_enabled=request.network_enabled,
        )
        try:
            await self._core.launch(record)
        except Exception as error:
            raise Failed(f"worker create failed: {error}") from error
        return record, token

    def listed(self) -> list[SandboxRecord]:
        """What the hosted list shows: every status but in-flight creates, newest first, at most 200."""
        return [record for record in self._core.store.sandboxes() if record.status != "pending"][:200]

    async def kill(self, sandbox_id: str) -> None:
        """Stop it for good: processes, layer and preview URLs go; its record and checkpoints stay."""
        self._core.sandbox(sandbox_id)
        async with self._core.lifecycle_lock(sandbox_id):
            record = self._core.sandbox(sandbox_id)
            if record.status == "stopped":
                return
            record.status = "stopped"
            record.stopped_at = utc_now()
            self._core.store.save_sandbox(record)
            self._core.store.delete_previews(sandbox_id)
            await self._core.destroy(sandbox_id)

    async def set_timeout(self, sandbox_id: str, timeout: int) -> None:
        if timeout < 0:
            raise Invalid("timeout must be non-negative (0 = no timeout)")
        async with self._core.data_plane(sandbox_id) as record:
            record.timeout = timeout
            self._core.store.save_sandbox(record)
            self._core.idle.watch(sandbox_id, timeout)

    async def hibernate(self, sandbox_id: str) -> SandboxRecord:
        """Freeze its processes (exec sessions kept), as the service's pause; idempotent when hibernated."""
        self._core.sandbox(sandbox_id)
        async with self._core.lifecycle_lock(sandbox_id):
            record = self._core.sandbox(sandbox_id)
            if record.status == "running":
                await self._core.suspend(record)
            elif record.status != "hibernated":
                raise Invalid("sandbox is not running")
        return record

    async def wake(self, sandbox_id: str) -> SandboxRecord:
        """Boot a hibernated sandbox over its disk; idempotent for a running one."""
        self._core.sandbox(sandbox_id)
        async with self._core.lifecycle_lock(sandbox_id):
            record = self._core.sandbox(sandbox_id)
            if record.status not in ("running", "hibernated"):
                raise Invalid("sandbox is not hibernated")
            if not self._core.is_live(record):
                await self._core.wake_locked(record)
        return record

    def get(self, sandbox_id: str) -> SandboxRecord:
        """The sandbox, whatever its status; 404 when this server never had it."""
        return self._core.sandbox(sandbox_id)

    def require_live(self, sandbox_id: str) -> SandboxRecord:
        """Fail now (404/410) for a sandbox no data call can reach, without waking it."""
        return self._core.require_live(sandbox_id)

    def replace_tags(self, sandbox_id: str, body: object) -> SandboxRecord:
        record = self._core.sandbox(sandbox_id)
        record.tags = parse_tags(body)
        record.tags_updated_at = utc_now()
        self._core.store.save_sandbox(record)
        return record

    def tag_keys(self) -> list[TagKeyStats]:
        """Every tag key in use, with how many sandboxes carry it and how many values it has."""
        sandboxes: dict[str, int] = {}
        values: dict[str, set[str]] = {}
        for record in self._core.store.sandboxes():
            if record.status == "pending":
                continue
            for key, value in record.tags.items():
                sandboxes[key] = sandboxes.get(key, 0) + 1
                values.setdefault(key, set()).add(value)
        return [TagKeyStats(key, sandboxes[key], len(values[key])) for key in sorted(sandboxes)]


def _no_build_log(step: int, step_type: str, message: str) -> None:
    """Where the build log of a create that nobody streams goes."""
