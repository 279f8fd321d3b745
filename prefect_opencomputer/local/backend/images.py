"""Declarative images and named snapshots: builds, the build cache, and sandboxes started from them.

An image is built once per content hash, in a throwaway builder sandbox, into a checkpoint; concurrent
requests for the same image share one build (a late joiner gets the log so far, then the rest live). A
sandbox from an image or a snapshot is a fork of that checkpoint through the ordinary fork path, so the
checkpoint's patches run and the image's env reaches every command. A failed build leaves nothing behind:
no cache row, no checkpoint, no builder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from prefect_opencomputer.local.backend import preview_auth, sizing
from prefect_opencomputer.local.backend.image_build import BuildFailed, build_image
from prefect_opencomputer.local.backend.image_catalog import ImageCatalog, ImageRecord
from prefect_opencomputer.local.backend.image_manifest import ImageManifest, parse_manifest
from prefect_opencomputer.local.backend.records import (
    CheckpointRecord,
    SandboxRecord,
    new_token,
    new_uuid,
    utc_now,
)
from prefect_opencomputer.local.backend.startup import started
from prefect_opencomputer.local.errors import Invalid

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.checkpoints import Checkpoints
    from prefect_opencomputer.local.backend.core import SandboxCore

logger = logging.getLogger(__name__)

# (step, step type, message): what a build log line is; step 0 is bookkeeping, 1..N the manifest's steps.
BuildLogSink = Callable[[int, str, str], None]

# The memory floor of an image's sandboxes; a create may ask for more.
IMAGE_MEMORY_MB: Final = 1024
# How much of a running build's log a request that joins it late is replayed.
_REPLAYED_LINES: Final = 2000


class ImageBuildError(Exception):
    """An image could not be built; the message is what the client is told."""


@dataclass(frozen=True)
class SandboxSource:
    """Where a sandbox create with `image` or `snapshot` starts from, checked before anything runs."""

    manifest: ImageManifest | None = None
    snapshot: str = ""


@dataclass
class _Build:
    """One build in flight, shared by every request for the same content."""

    history: deque[tuple[int, str, str]] = field(default_factory=lambda: deque(maxlen=_REPLAYED_LINES))
    listeners: set[BuildLogSink] = field(default_factory=set)
    task: asyncio.Task[str] | None = None

    def emit(self, step: int, step_type: str, message: str) -> None:
        self.history.append((step, step_type, message))
        for listener in list(self.listeners):
            listener(step, step_type, message)


class Images:
    """Image and snapshot behaviour over the sandboxes core."""

    def __init__(self, backend: SandboxCore, checkpoints: Checkpoints) -> None:
        self._backend = backend
        self._checkpoints = checkpoints
        self._catalog: ImageCatalog | None = None
        self._builds: dict[str, _Build] = {}
        self._background: set[asyncio.Task[None]] = set()

    def listed(self) -> list[ImageRecord]:
        """Every cached image, unnamed builds and named snapshots alike, newest first."""
        return self.catalog.all()

    @property
    def catalog(self) -> ImageCatalog:
        return started(self._catalog)

    # -- server lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Open the catalog; a build the last run did not finish is forgotten (a snapshot's: failed)."""
        self._catalog = ImageCatalog(self._backend.config.data_dir / "state.db")
        for image in self.catalog.all():
            if image.status == "building":
                if image.name is None and image.checkpoint_id is not None:
                    await self._drop_checkpoint(image.checkpoint_id)
                self._forget_failed(image, keep_named=True)
            elif image.status == "ready" and not self._checkpoint_ready(image.checkpoint_id):
                self._forget_failed(image, keep_named=True)

    async def close(self) -> None:
        await self._cancel_builds()
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    async def reset(self) -> None:
        """Stop every build and forget every image (their checkpoints go with the backend's reset)."""
        await self._cancel_builds()
        self.catalog.forget_everything()

    # -- sandboxes from images and snapshots -------------------------------------------------

    def source(self, image: Mapping[str, object] | None, snapshot: str) -> SandboxSource:
        """Check a create's `image` / `snapshot` (400 for a bad manifest, an unknown or unready snapshot)."""
        if image is not None and snapshot:
            raise Invalid("image and snapshot cannot both be given")
        if image is not None:
            return SandboxSource(manifest=parse_manifest(image))
        self._ready_snapshot(snapshot)
        return SandboxSource(snapshot=snapshot)

    async def create_sandbox(
        self,
        source: SandboxSource,
        *,
        envs: Mapping[str, str],
        metadata: Mapping[str, str],
        memory_mb: int,
        secret_store: str,
        preview: tuple[str, str] | None,
        log: BuildLogSink,
    ) -> tuple[SandboxRecord, str | None]:
        """Build or find the image (or resolve the snapshot), then fork a sandbox from its checkpoint.

        Returns the sandbox and its preview token when one was asked for. Envs given here win over the
        image's; the idle timeout is 0 (persistent), as for every fork.
        """
        if memory_mb:
            sizing.resolve_tier(0, memory_mb)
        if secret_store:
            raise Invalid(f"secret store not found: {secret_store}")
        token: str | None = None
        token_hash: str | None = None
        if preview is not None:
            token, token_hash = preview_auth.issue(*preview)
        if source.manifest is not None:
            checkpoint_id = await self.checkpoint_for(source.manifest, log)
        else:
            log(0, "resolve", f"Resolving snapshot '{source.snapshot}'...")
            checkpoint_id = self._ready_snapshot(source.snapshot)
        log(0, "create", "Creating sandbox from image...")
        record = await self._checkpoints.fork(
            checkpoint_id,
            envs=envs,
            metadata=metadata,
            memory_mb=max(memory_mb, 0),
            secret_store="",
        )
        if token_hash is not None:
            record.preview_auth_hash = token_hash
            self._backend.store.save_sandbox(record)
        return record, token

    def in_background(self, work: Coroutine[object, object, None], name: str) -> None:
        """Run ``work`` as a task that closing or resetting the server cancels with the builds."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- builds ------------------------------------------------------------------------------

    async def checkpoint_for(self, manifest: ImageManifest, log: BuildLogSink) -> str:
        """The checkpoint of `manifest`'s build: from the cache, from a build in flight, or built now."""
        cached = self.catalog.build_cache(manifest.content_hash)
        if cached is not None and cached.status == "ready" and self._checkpoint_ready(cached.checkpoint_id):
            assert cached.checkpoint_id is not None
            cached.last_used_at = utc_now()
            self.catalog.save(cached)
            log(0, "cache_hit", f"Image found in cache (hash={manifest.content_hash[:12]})")
            return cached.checkpoint_id
        build = self._builds.get(manifest.content_hash)
        if build is None:
            if cached is not None:
                self._forget_failed(cached, keep_named=False)
            build = self._start_build(manifest)
        else:
            log(0, "build", "Joining a build of the same image that is already running")
        for line in build.history:
            log(*line)
        build.listeners.add(log)
        assert build.task is not None
        try:
            # Shielded: a request that goes away does not stop a build others may be waiting for.
            return await asyncio.shield(build.task)
        finally:
            build.listeners.discard(log)

    def _start_build(self, manifest: ImageManifest) -> _Build:
        build = _Build()
        self._builds[manifest.content_hash] = build
        build.task = asyncio.create_task(
            self._build(manifest, build), name=f"image-{manifest.content_hash[:12]}"
        )
        build.task.add_done_callback(lambda _: self._builds.pop(manifest.content_hash, None))
        # Waiters see the failure through their own await; this only keeps asyncio from calling it unread.
        build.task.add_done_callback(lambda task: task.cancelled() or task.exception())
        return build

    async def _build(self, manifest: ImageManifest, build: _Build) -> str:
        backend = self._backend
        store = backend.store
        now = utc_now()
        builder = SandboxRecord(
            id=backend.admit_sandbox(),
            # Never handed out: a builder left by a crash is removed with the next start's recovery.
            status="pending",
            template=manifest.base,
            timeout=0,
            cpu_count=sizing.DEFAULT_CPU_COUNT,
            memory_mb=manifest.builder_memory_mb or sizing.DEFAULT_MEMORY_MB,
            disk_mb=sizing.MIN_DISK_MB,
            token=new_token(),
            started_at=now,
        )
        checkpoint = CheckpointRecord(
            id=new_uuid(),
            sandbox_id=builder.id,
            name=f"_image_build_{manifest.content_hash[:12]}",
            kind="full",
            status="processing",
            # The builder's settings, but the image's memory floor: what a sandbox of the image gets.
            sandbox_config={**builder.config(), "memoryMB": IMAGE_MEMORY_MB},
            created_at=now,
        )
        image = ImageRecord(
            id=new_uuid(),
            content_hash=manifest.content_hash,
            name=None,
            checkpoint_id=checkpoint.id,
            manifest=dict(manifest.raw),
            status="building",
            created_at=now,
            last_used_at=now,
        )
        store.save_sandbox(builder)
        store.insert_checkpoint(checkpoint)
        self.catalog.insert(image)
        try:
            built = await build_image(
                backend, manifest, builder_id=builder.id, checkpoint_id=checkpoint.id, log=build.emit
            )
        except BaseException as error:
            store.delete_checkpoint(checkpoint.id)
            self.catalog.delete(image.id)
            store.delete_sandbox(builder.id)
            if isinstance(error, BuildFailed):
                raise ImageBuildError(f"image build failed: {error.message}") from error
            if isinstance(error, Exception):
                logger.warning("image %s: build failed: %r", manifest.content_hash[:12], error)
                raise ImageBuildError(f"image build failed: {error}") from error
            raise
        checkpoint.status = "ready"
        checkpoint.size_bytes = built.size_bytes
        store.save_checkpoint(checkpoint)
        image.status = "ready"
        self.catalog.save(image)
        store.delete_sandbox(builder.id)
        logger.info("image %s built (%d steps)", manifest.content_hash[:12], len(manifest.steps))
        return checkpoint.id

    async def _cancel_builds(self) -> None:
        tasks = [
            *self._background,
            *(build.task for build in self._builds.values() if build.task is not None),
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    # -- internals ---------------------------------------------------------------------------

    def _ready_snapshot(self, name: str) -> str:
        snapshot = self.catalog.named(name)
        if snapshot is None:
            raise Invalid(f'snapshot "{name}" not found')
        if snapshot.status != "ready" or snapshot.checkpoint_id is None:
            raise Invalid(f'snapshot "{name}" is not ready (status: {snapshot.status})')
        if not self._checkpoint_ready(snapshot.checkpoint_id):
            raise Invalid(f'snapshot "{name}" has no checkpoint')
        snapshot.last_used_at = utc_now()
        self.catalog.save(snapshot)
        return snapshot.checkpoint_id

    def _checkpoint_ready(self, checkpoint_id: str | None) -> bool:
        if checkpoint_id is None:
            return False
        checkpoint = self._backend.store.checkpoint(checkpoint_id)
        return checkpoint is not None and checkpoint.status == "ready"

    def _forget_failed(self, image: ImageRecord, *, keep_named: bool) -> None:
        """Drop a build-cache row that cannot serve; a snapshot is kept as "failed" when `keep_named`."""
        if image.name is not None and keep_named:
            image.status = "failed"
            self.catalog.save(image)
        else:
            self.catalog.delete(image.id)

    async def _drop_checkpoint(self, checkpoint_id: str) -> None:
        self._backend.store.delete_checkpoint(checkpoint_id)
        await self._backend.remove_checkpoint(checkpoint_id)
