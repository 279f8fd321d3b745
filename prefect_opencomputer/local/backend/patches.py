"""Patches: scripts that every fork of a checkpoint (or of a named snapshot) runs before it is handed out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_opencomputer.local.backend.checkpoints import require_uuid
from prefect_opencomputer.local.backend.records import PatchRecord, new_uuid, utc_now
from prefect_opencomputer.local.errors import Invalid, NotFound

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.core import SandboxCore
    from prefect_opencomputer.local.backend.snapshots import Snapshots


class Patches:
    """One method per wire action on a checkpoint's patches, and on a snapshot's (by its name)."""

    def __init__(self, core: SandboxCore, snapshots: Snapshots) -> None:
        self._core = core
        self._snapshots = snapshots

    def create(self, checkpoint_id: str, script: str, description: str) -> PatchRecord:
        store = self._core.store
        require_uuid(checkpoint_id, "checkpoint")
        checkpoint = store.checkpoint(checkpoint_id)
        if checkpoint is None:
            raise NotFound("checkpoint not found")
        if checkpoint.status != "ready":
            raise Invalid("checkpoint is not ready")
        if not script:
            raise Invalid("script is required")
        return store.insert_patch(checkpoint_id, new_uuid(), script, description, utc_now())

    def listed(self, checkpoint_id: str) -> list[PatchRecord]:
        require_uuid(checkpoint_id, "checkpoint")
        if self._core.store.checkpoint(checkpoint_id) is None:
            raise NotFound("checkpoint not found")
        return self._core.store.patches(checkpoint_id)

    def delete(self, checkpoint_id: str, patch_id: str) -> None:
        require_uuid(checkpoint_id, "checkpoint")
        require_uuid(patch_id, "patch")
        if not self._core.store.delete_patch(checkpoint_id, patch_id):
            raise NotFound("patch not found")

    def create_for_snapshot(self, name: str, script: str, description: str) -> PatchRecord:
        return self.create(self._snapshots.checkpoint_of(name), script, description)

    def list_for_snapshot(self, name: str) -> list[PatchRecord]:
        return self.listed(self._snapshots.checkpoint_of(name))

    def delete_for_snapshot(self, name: str, patch_id: str) -> None:
        self.delete(self._snapshots.checkpoint_of(name), patch_id)
