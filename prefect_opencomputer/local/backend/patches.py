"""Patches: scripts that every fork of a checkpoint (or of a named snapshot) runs before it is handed out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from prefect_opencomputer.local.backend.checkpoints import require_uuid
from prefect_opencomputer.local.backend.records import PatchRecord, new_uuid, utc_now
from prefect_opencomputer.local.errors import Invalid, NotFound

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.core import SandboxCore
    from prefect_opencomputer.local.backend.snapshots import Snapshots


@dataclass(frozen=True)
class PatchParent:
    """What a patch hangs on: a checkpoint by its id, or a named snapshot (its checkpoint's patches)."""

    kind: Literal["checkpoint", "snapshot"]
    key: str


class Patches:
    """One method per wire action on the patches of a checkpoint or of a snapshot."""

    def __init__(self, core: SandboxCore, snapshots: Snapshots) -> None:
        self._core = core
        self._snapshots = snapshots

    def create(self, parent: PatchParent, script: str, description: str) -> PatchRecord:
        store = self._core.store
        checkpoint_id = self._checkpoint_id(parent)
        checkpoint = store.checkpoint(checkpoint_id)
        if checkpoint is None:
            raise NotFound("checkpoint not found")
        if checkpoint.status != "ready":
            raise Invalid("checkpoint is not ready")
        if not script:
            raise Invalid("script is required")
        return store.insert_patch(checkpoint_id, new_uuid(), script, description, utc_now())

    def listed(self, parent: PatchParent) -> list[PatchRecord]:
        checkpoint_id = self._checkpoint_id(parent)
        if self._core.store.checkpoint(checkpoint_id) is None:
            raise NotFound("checkpoint not found")
        return self._core.store.patches(checkpoint_id)

    def delete(self, parent: PatchParent, patch_id: str) -> None:
        checkpoint_id = self._checkpoint_id(parent)
        require_uuid(patch_id, "patch")
        if not self._core.store.delete_patch(checkpoint_id, patch_id):
            raise NotFound("patch not found")

    def _checkpoint_id(self, parent: PatchParent) -> str:
        """The checkpoint the patches belong to (a snapshot's must be ready); 404 for a malformed id."""
        checkpoint_id = self._snapshots.checkpoint_of(parent.key) if parent.kind == "snapshot" else parent.key
        require_uuid(checkpoint_id, "checkpoint")
        return checkpoint_id
