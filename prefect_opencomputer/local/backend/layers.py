"""Sandbox and checkpoint layers on disk.

A sandbox's root is an overlay: its template's root filesystem read-only below, the sandbox's own
``upper`` directory above, where every write lands. A layer belongs to the sandbox's root (an
unprivileged host id), so the overlay is mounted from inside the sandbox's user namespace. A
checkpoint is a copy of an upper directory (owners, whiteouts and overlay xattrs kept); a fork
copies it back.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from prefect_opencomputer.local.sandbox import copying, ids


class LayerStore:
    """Where the layers live: ``sandboxes/<id>/{upper,work,merged}`` and ``checkpoints/<id>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # -- paths -----------------------------------------------------------------------------

    def sandbox_dirs(self, sandbox_id: str) -> tuple[Path, Path]:
        base = self.root / "sandboxes" / sandbox_id
        return base / "upper", base / "work"

    def mountpoint(self, sandbox_id: str) -> Path:
        return self.root / "sandboxes" / sandbox_id / "merged"

    def checkpoint_dir(self, checkpoint_id: str) -> Path:
        return self.root / "checkpoints" / checkpoint_id

    def sandbox_exists(self, sandbox_id: str) -> bool:
        return self.sandbox_dirs(sandbox_id)[0].is_dir()

    def checkpoint_exists(self, checkpoint_id: str) -> bool:
        return self.checkpoint_dir(checkpoint_id).is_dir()

    # -- lifecycle -------------------------------------------------------------------------

    def create_sandbox(self, sandbox_id: str) -> None:
        """A fresh, empty layer: the sandbox sees its template as it was built."""
        base = self.root / "sandboxes" / sandbox_id
        base.mkdir(parents=True)
        _owned_dir(base / "upper", 0o755)
        _owned_dir(base / "work", 0o700)

    def reset_workdir(self, sandbox_id: str) -> None:
        """Overlayfs needs an empty work directory on the same filesystem as the upper one."""
        _, work = self.sandbox_dirs(sandbox_id)
        if work.exists():
            shutil.rmtree(work)
        _owned_dir(work, 0o700)

    async def snapshot(self, sandbox_id: str, checkpoint_id: str) -> int:
        """Copy the sandbox's layer into a checkpoint; returns its size in bytes."""
        upper, _ = self.sandbox_dirs(sandbox_id)
        target = self.checkpoint_dir(checkpoint_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        await copying.copy_tree(upper, target)
        return await asyncio.to_thread(copying.tree_size, target)

    async def fork(self, checkpoint_id: str, sandbox_id: str) -> None:
        """A new sandbox layer holding what the checkpoint holds."""
        upper, work = self.sandbox_dirs(sandbox_id)
        upper.parent.mkdir(parents=True, exist_ok=True)
        await copying.copy_tree(self.checkpoint_dir(checkpoint_id), upper)
        _owned_dir(work, 0o700)

    async def restore(self, checkpoint_id: str, sandbox_id: str) -> None:
        """Replace a stopped sandbox's layer with the checkpoint's (swap, then drop the old one)."""
        upper, _ = self.sandbox_dirs(sandbox_id)
        incoming = upper.with_name("upper.restoring")
        outgoing = upper.with_name("upper.old")
        await copying.remove_tree(incoming)
        await copying.copy_tree(self.checkpoint_dir(checkpoint_id), incoming)
        await copying.remove_tree(outgoing)
        upper.rename(outgoing)
        incoming.rename(upper)
        await copying.remove_tree(outgoing)
        self.reset_workdir(sandbox_id)

    async def remove_sandbox(self, sandbox_id: str) -> None:
        await copying.remove_tree(self.root / "sandboxes" / sandbox_id)

    async def remove_checkpoint(self, checkpoint_id: str) -> None:
        await copying.remove_tree(self.checkpoint_dir(checkpoint_id))


def _owned_dir(path: Path, mode: int) -> None:
    """A directory of the sandbox's root (it mounts the overlay, so it must own upper and work)."""
    path.mkdir(mode=mode, exist_ok=True)
    os.chown(path, *ids.ROOT_OWNER)
    os.chmod(path, mode)
