"""Named snapshots: an image built once (or found in the build cache) and kept under a name."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from prefect_opencomputer.local.backend.image_catalog import ImageRecord
from prefect_opencomputer.local.backend.image_manifest import parse_manifest
from prefect_opencomputer.local.backend.images import BuildLogSink, ImageBuildError
from prefect_opencomputer.local.backend.records import new_uuid, utc_now
from prefect_opencomputer.local.errors import Invalid, NotFound

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.images import Images


class Snapshots:
    """One method per wire action on ``/snapshots``; the builds themselves are the images'."""

    def __init__(self, images: Images) -> None:
        self._images = images

    def create_in_background(self, name: object, image: object) -> ImageRecord:
        """Claim the name and build in the background; the caller polls the snapshot's status."""
        snapshot = self.reserve(name, image)

        def ignore(step: int, step_type: str, message: str) -> None:
            return None

        async def finish() -> None:
            with contextlib.suppress(ImageBuildError):
                await self.finish(snapshot, ignore, keep_failed=True)

        self._images.in_background(finish(), name=f"snapshot-{snapshot.id}")
        return snapshot

    def reserve(self, name: object, image: object) -> ImageRecord:
        """Check the request and claim the name with a "building" row (the first half of a create)."""
        if not isinstance(name, str) or not name:
            raise Invalid("name is required")
        if image is None or image == {}:
            raise Invalid("image is required")
        manifest = parse_manifest(image)
        now = utc_now()
        snapshot = ImageRecord(
            id=new_uuid(),
            content_hash=manifest.content_hash,
            name=name,
            checkpoint_id=None,
            manifest=dict(manifest.raw),
            status="building",
            created_at=now,
            last_used_at=now,
        )
        self._images.catalog.insert(snapshot)  # NameTaken when a snapshot already has the name
        return snapshot

    async def finish(self, snapshot: ImageRecord, log: BuildLogSink, *, keep_failed: bool) -> None:
        """Build the reserved snapshot's image and mark it ready; a failure is kept if ``keep_failed``."""
        catalog = self._images.catalog
        try:
            checkpoint_id = await self._images.checkpoint_for(parse_manifest(snapshot.manifest), log)
        except BaseException:
            if keep_failed:
                snapshot.status = "failed"
                catalog.save(snapshot)
            else:
                catalog.delete(snapshot.id)
            raise
        snapshot.checkpoint_id = checkpoint_id
        snapshot.status = "ready"
        snapshot.last_used_at = utc_now()
        catalog.save(snapshot)

    def listed(self) -> list[ImageRecord]:
        return self._images.catalog.all(named_only=True)

    def get(self, name: str) -> ImageRecord:
        snapshot = self._images.catalog.named(name)
        if snapshot is None:
            raise NotFound("snapshot not found")
        return snapshot

    def delete(self, name: str) -> None:
        """Forget the name; the build it pointed at stays cached, and its sandboxes keep running."""
        self._images.catalog.delete(self.get(name).id)

    def checkpoint_of(self, name: str) -> str:
        """The checkpoint behind a ready snapshot (for its patch routes)."""
        checkpoint_id = self.get(name).checkpoint_id
        if checkpoint_id is None:
            raise Invalid(f"snapshot {name!r} is not ready")
        return checkpoint_id
