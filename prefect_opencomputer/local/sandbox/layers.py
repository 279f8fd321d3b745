"""Sandbox disks and checkpoints: image files in the disk store, cloned, never walked.

A sandbox's root is an overlay: its template's root filesystem read-only below, the sandbox's own
``upper`` directory above, where every write lands. Upper and work live on the sandbox's own
disk: an ext4 image of its ``diskMB`` (see `sandbox.disk`) in the disk store (see `sandbox.store`),
so a full disk is the sandbox's ENOSPC and never the host's. The image is mounted only inside the
helper's private mount namespace while the sandbox runs.

A checkpoint is a clone of that image, taken with the sandbox's processes paused and its disk
synced; a fork's disk is a clone of the checkpoint, a restore puts one in place of the disk. Host
root copies image files as data and never resolves a path inside a sandbox's tree, so nothing a
sandbox plants (links, swapped directories) can steer it.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from prefect_opencomputer.local.sandbox import disk
from prefect_opencomputer.local.sandbox.store import DiskStore, allocated_bytes

logger = logging.getLogger(__name__)

LiveRoot = Callable[[str], Path | None]


def _never_live(sandbox_id: str) -> Path | None:
    return None


class LayerStore:
    """Sandbox disks and checkpoint images in the disk store, beside each sandbox's mount points.

    ``root`` holds, per sandbox, the directories the helper mounts on (``sandboxes/<id>/{disk,merged}``)
    and its boot log; the images themselves live in the store (``<root>/../disks``). ``helper`` gives
    the sandbox helper's path; ``live_root`` the directory through which the host sees a running
    sandbox's mounts (None when it is not running). ``max_disk_mb`` caps every sandbox's disk.
    """

    def __init__(
        self,
        root: Path,
        *,
        helper: Callable[[], str],
        live_root: LiveRoot = _never_live,
        max_disk_mb: int | None = None,
    ) -> None:
        self.root = root
        self.max_disk_mb = max_disk_mb
        self.store = DiskStore(root.with_name("disks"), helper=helper)
        self._live_root = live_root
        self._skeleton_ready = False
        self._skeleton_lock = threading.Lock()
        self._spares: disk.SpareImages | None = None

    # -- paths -----------------------------------------------------------------------------

    def layer_dir(self, sandbox_id: str) -> Path:
        return self.root / "sandboxes" / sandbox_id

    def disk_image(self, sandbox_id: str) -> Path:
        return self.store.path(f"sandboxes/{sandbox_id}.img")

    def disk_mount(self, sandbox_id: str) -> Path:
        """Where the disk is mounted in the helper's namespace; an empty directory on the host."""
        return self.layer_dir(sandbox_id) / "disk"

    def lower_mount(self, sandbox_id: str) -> Path:
        """Where its template's tree is mounted (idmapped) in the helper's namespace; empty on the host."""
        return self.layer_dir(sandbox_id) / "lower"

    def mountpoint(self, sandbox_id: str) -> Path:
        return self.layer_dir(sandbox_id) / "merged"

    def checkpoint_image(self, checkpoint_id: str) -> Path:
        return self.store.path(f"checkpoints/{checkpoint_id}.img")

    @property
    def skeleton(self) -> Path:
        return self.root / "skeleton"

    @property
    def spares(self) -> disk.SpareImages:
        if self._spares is None:
            size_mb = self.disk_size_mb(disk.DEFAULT_SIZE_MB)
            self._spares = disk.SpareImages(self.store.path("spares"), size_mb, self.skeleton)
        return self._spares

    def sandbox_exists(self, sandbox_id: str) -> bool:
        return self.disk_image(sandbox_id).is_file() or self._legacy_image(sandbox_id).is_file()

    def _legacy_image(self, sandbox_id: str) -> Path:
        return self.layer_dir(sandbox_id) / "disk.img"  # a disk made before the disk store

    def checkpoint_exists(self, checkpoint_id: str) -> bool:
        return self.checkpoint_image(checkpoint_id).is_file()

    def open_disk(self, sandbox_id: str) -> int:
        """The sandbox's disk image, open for the helper that mounts it (the caller closes it)."""
        return os.open(self.disk_image(sandbox_id), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)

    def upper_view(self, sandbox_id: str) -> Path | None:
        """A running sandbox's upper directory as the host can read it; None when it is not running."""
        mounted = self._mounted_disk(sandbox_id)
        return None if mounted is None else mounted / "upper"

    def _mounted_disk(self, sandbox_id: str) -> Path | None:
        live = self._live_root(sandbox_id)
        if live is None:
            return None
        return live / self.disk_mount(sandbox_id).relative_to("/")

    def disk_size_mb(self, requested_mb: int) -> int:
        """The size a sandbox asking for ``requested_mb`` gets: the server's cap, if lower."""
        if self.max_disk_mb is None:
            return requested_mb
        return min(requested_mb, self.max_disk_mb)

    # -- lifecycle -------------------------------------------------------------------------

    def create_sandbox(self, sandbox_id: str, disk_mb: int = disk.DEFAULT_SIZE_MB) -> None:
        """A fresh, empty layer on a disk of its own: the sandbox sees its template as it was built."""
        size_mb = self.disk_size_mb(disk_mb)
        self._mount_points(sandbox_id, size_mb)
        self._new_image(self.disk_image(sandbox_id), size_mb)

    def _mount_points(self, sandbox_id: str, size_mb: int) -> None:
        base = self.layer_dir(sandbox_id)
        base.parent.mkdir(parents=True, exist_ok=True)
        _check_room(base.parent, size_mb)
        base.mkdir()
        self.disk_mount(sandbox_id).mkdir(mode=0o700)
        self.lower_mount(sandbox_id).mkdir(mode=0o700)
        self.mountpoint(sandbox_id).mkdir()

    def ensure_disk(self, sandbox_id: str) -> bool:
        """Whether the sandbox has a disk, bringing one from a data dir older than the store in first.

        A disk the host went down with is checked and repaired first (`disk.repair_if_needed`).
        """
        image = self.disk_image(sandbox_id)
        legacy_image = self._legacy_image(sandbox_id)
        if not image.is_file() and legacy_image.is_file():
            self.store.import_file(legacy_image, image)
            legacy_image.unlink()
        if not image.is_file():
            return False
        if disk.repair_if_needed(image):
            logger.warning(f"the disk of {sandbox_id} was not unmounted cleanly: e2fsck repaired it")
        return True

    def _new_image(self, path: Path, size_mb: int) -> None:
        """An empty formatted image at ``path``: a spare one when one of this size is ready."""
        self._ensure_skeleton()
        spare = self.spares.take() if size_mb == self.spares.size_mb else None
        if spare is not None:
            try:
                spare.rename(path)
                return
            except FileNotFoundError:
                pass  # the spare went away with an earlier data dir; format one
        disk.make_image(path, size_mb, self.skeleton)

    def _ensure_skeleton(self) -> None:
        with self._skeleton_lock:
            if not self._skeleton_ready:
                disk.build_skeleton(self.skeleton)
                self._skeleton_ready = True

    async def snapshot(self, sandbox_id: str, checkpoint_id: str) -> int:
        """Clone the sandbox's disk into a checkpoint; returns the bytes it holds.

        A mounted disk is synced first, so every write made before is in the image; the clone is
        then the image at one instant, as a power cut would leave it, which the journal makes
        consistent when a fork mounts it (no check needed). The caller pauses the sandbox's
        processes around it where it can (`SandboxRuntime.checkpoint`).
        """
        source, target = self.disk_image(sandbox_id), self.checkpoint_image(checkpoint_id)
        mounted = self._mounted_disk(sandbox_id)
        if mounted is not None:
            await asyncio.to_thread(_sync_filesystem, mounted)
        await asyncio.to_thread(self.store.clone, source, target)
        return allocated_bytes(target)

    async def fork(self, checkpoint_id: str, sandbox_id: str, disk_mb: int = disk.DEFAULT_SIZE_MB) -> None:
        """A new sandbox whose disk is a clone of the checkpoint (of the checkpoint's size)."""
        image = self.checkpoint_image(checkpoint_id)
        await asyncio.to_thread(self._mount_points, sandbox_id, disk.image_size_mb(image))
        await asyncio.to_thread(self.store.clone, image, self.disk_image(sandbox_id))

    async def restore(self, checkpoint_id: str, sandbox_id: str) -> None:
        """Put a clone of the checkpoint in place of a stopped sandbox's disk, in one rename."""
        await asyncio.to_thread(
            self.store.clone, self.checkpoint_image(checkpoint_id), self.disk_image(sandbox_id)
        )

    async def remove_sandbox(self, sandbox_id: str) -> None:
        """Its image and its mount points go; nothing inside the image is walked."""
        await asyncio.to_thread(self._remove_sandbox, sandbox_id)

    def _remove_sandbox(self, sandbox_id: str) -> None:
        self.disk_image(sandbox_id).unlink(missing_ok=True)
        self._legacy_image(sandbox_id).unlink(missing_ok=True)
        # Only the server's own entries are here: empty mount points and the boot log.
        shutil.rmtree(self.layer_dir(sandbox_id), ignore_errors=True)
        self.store.trim_soon()

    async def remove_checkpoint(self, checkpoint_id: str) -> None:
        await asyncio.to_thread(self._remove_checkpoint, checkpoint_id)

    def _remove_checkpoint(self, checkpoint_id: str) -> None:
        self.checkpoint_image(checkpoint_id).unlink(missing_ok=True)
        self.store.trim_soon()


def _sync_filesystem(mounted: Path) -> None:
    """Write everything the filesystem mounted at ``mounted`` holds in memory to its image."""
    fd = os.open(mounted, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncing the disk at {mounted.name}: {os.strerror(error)}")
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def _check_room(directory: Path, size_mb: int) -> None:
    """Refuse a disk the host could not hold: a sandbox filling its own must never fill the host's.

    Images are sparse, so this cannot promise room for all of them together; it keeps any one
    from outgrowing what is free now.
    """
    stats = os.statvfs(directory)
    free_mb = stats.f_bavail * stats.f_frsize // disk.MIB
    if size_mb > free_mb:
        raise OSError(
            errno.ENOSPC,
            f"a {size_mb} MB sandbox disk does not fit in the {free_mb} MB free on this host "
            "(ask for a smaller diskMB, or start the server with --max-disk-mb)",
        )
