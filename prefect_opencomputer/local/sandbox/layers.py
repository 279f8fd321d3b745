"""Sandbox and checkpoint layers on disk.

A sandbox's root is an overlay: its template's root filesystem read-only below, the sandbox's own
``upper`` directory above, where every write lands. Upper and work live on the sandbox's own
disk, ``disk.img``: an ext4 image of its ``diskMB`` (see `sandbox.disk`), so a full disk is the
sandbox's ENOSPC and never the host's. The image is mounted only inside private mount namespaces:
the helper's while the sandbox runs (reachable from the host through ``/proc/<helper>/root``), or a
short-lived one of ``helper disk`` for a copy out of a stopped sandbox. A checkpoint is a plain
copy of an upper directory (owners, whiteouts and overlay xattrs kept); a fork or a restore gets a
fresh image that its next boot fills from the checkpoint.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from prefect_opencomputer.local.sandbox import copying, disk, ids, processes

logger = logging.getLogger(__name__)

LiveRoot = Callable[[str], Path | None]


def _never_live(sandbox_id: str) -> Path | None:
    return None


class LayerStore:
    """Where the layers live: ``sandboxes/<id>/{disk.img,disk,merged}``, ``checkpoints/<id>``, ``spares``.

    ``helper`` gives the sandbox helper's path; ``live_root`` the directory through which the host
    sees a running sandbox's mounts (None when it is not running). ``max_disk_mb`` caps every
    sandbox's disk (a server flag, so tests can fill one quickly).
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
        self._helper = helper
        self._live_root = live_root
        self._skeleton_ready = False
        self._skeleton_lock = threading.Lock()
        # Checkpoints to copy onto a disk by the next boot: (checkpoint dir, the image to boot).
        self._copy_ins: dict[str, tuple[Path, Path]] = {}
        self.spares = disk.SpareImages(
            self.root / "spares", self.disk_size_mb(disk.DEFAULT_SIZE_MB), self.skeleton
        )

    # -- paths -----------------------------------------------------------------------------

    def layer_dir(self, sandbox_id: str) -> Path:
        return self.root / "sandboxes" / sandbox_id

    def disk_image(self, sandbox_id: str) -> Path:
        return self.layer_dir(sandbox_id) / "disk.img"

    def disk_mount(self, sandbox_id: str) -> Path:
        """Where the disk is mounted in private namespaces; an empty directory on the host."""
        return self.layer_dir(sandbox_id) / "disk"

    def mountpoint(self, sandbox_id: str) -> Path:
        return self.layer_dir(sandbox_id) / "merged"

    def checkpoint_dir(self, checkpoint_id: str) -> Path:
        return self.root / "checkpoints" / checkpoint_id

    @property
    def skeleton(self) -> Path:
        return self.root / "skeleton"

    def sandbox_exists(self, sandbox_id: str) -> bool:
        return self.disk_image(sandbox_id).is_file() or self._legacy_upper(sandbox_id).is_dir()

    def _legacy_upper(self, sandbox_id: str) -> Path:
        return self.layer_dir(sandbox_id) / "upper"  # a layer made before sandboxes had disks

    def checkpoint_exists(self, checkpoint_id: str) -> bool:
        return self.checkpoint_dir(checkpoint_id).is_dir()

    def boot_options(self, sandbox_id: str) -> list[str]:
        """The helper's ``boot`` options that give the sandbox its disk (and a fork's checkpoint)."""
        image, mount = self.disk_image(sandbox_id), self.disk_mount(sandbox_id)
        pending = self._copy_ins.get(sandbox_id)
        if pending is None:
            return ["--disk-image", str(image), "--disk-mount", str(mount)]
        source, image = pending
        copy = ["--copy-in", str(source), "--copy-with", copying.host_command("cp")]
        return ["--disk-image", str(image), "--disk-mount", str(mount), *copy]

    def boot_finished(self, sandbox_id: str, *, booted: bool) -> None:
        """After a boot: a restore's new disk replaces the old one, or goes if the boot failed."""
        pending = self._copy_ins.pop(sandbox_id, None)
        if pending is None:
            return
        _, image = pending
        if image != self.disk_image(sandbox_id):
            if booted:
                image.rename(self.disk_image(sandbox_id))
            else:
                image.unlink(missing_ok=True)

    def upper_view(self, sandbox_id: str) -> Path | None:
        """A running sandbox's upper directory as the host can read it; None when it is not running."""
        live = self._live_root(sandbox_id)
        if live is None:
            return None
        return live / self.disk_mount(sandbox_id).relative_to("/") / "upper"

    def disk_size_mb(self, requested_mb: int) -> int:
        """The size a sandbox asking for ``requested_mb`` gets: the server's cap, if lower."""
        if self.max_disk_mb is None:
            return requested_mb
        return min(requested_mb, self.max_disk_mb)

    # -- lifecycle -------------------------------------------------------------------------

    def create_sandbox(self, sandbox_id: str, disk_mb: int = disk.DEFAULT_SIZE_MB) -> None:
        """A fresh, empty layer on a disk of its own: the sandbox sees its template as it was built."""
        size_mb = self.disk_size_mb(disk_mb)
        base = self.layer_dir(sandbox_id)
        base.parent.mkdir(parents=True, exist_ok=True)
        _check_room(base.parent, size_mb)
        base.mkdir()
        self._new_image(self.disk_image(sandbox_id), size_mb)
        self.disk_mount(sandbox_id).mkdir(mode=0o700)
        self.mountpoint(sandbox_id).mkdir()

    def ensure_disk(self, sandbox_id: str) -> bool:
        """Whether the sandbox has a layer, giving one from before disks existed a disk first.

        A disk the host went down with is checked and repaired first (`disk.repair_if_needed`).

        mkfs.ext4 -d copies the old upper (owners, modes, xattrs, whiteouts, links) into a new
        image of the default size; the old directory goes only once the image is complete.
        """
        image = self.disk_image(sandbox_id)
        if image.is_file():
            if disk.repair_if_needed(image):
                logger.warning(f"the disk of {sandbox_id} was not unmounted cleanly: e2fsck repaired it")
            return True
        legacy = self._legacy_upper(sandbox_id)
        if not legacy.is_dir():
            return False
        staging = self.layer_dir(sandbox_id) / "legacy"
        staging.mkdir(exist_ok=True)
        os.chmod(staging, 0o755)
        legacy.rename(staging / "upper")
        try:
            work = staging / "work"
            work.mkdir(mode=0o700, exist_ok=True)
            os.chown(work, *ids.ROOT_OWNER)
            disk.make_image(self.disk_image(sandbox_id), self.disk_size_mb(disk.DEFAULT_SIZE_MB), staging)
        except BaseException:
            (staging / "upper").rename(legacy)
            raise
        shutil.rmtree(staging)
        shutil.rmtree(self.layer_dir(sandbox_id) / "work", ignore_errors=True)
        self.disk_mount(sandbox_id).mkdir(mode=0o700, exist_ok=True)
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
        """Copy the sandbox's layer into a checkpoint; returns its size in bytes."""
        target = self.checkpoint_dir(checkpoint_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        live = self.upper_view(sandbox_id)
        if live is not None:
            # Through the helper's mount namespace: host cp reads the sandbox's files as data.
            await copying.copy_tree(live, target)
        else:
            # Into a partial name, renamed once whole: a killed copy never looks like a checkpoint.
            mount = self.disk_mount(sandbox_id)
            partial = copying.partial_path(target)
            argv = [copying.host_command("cp"), "-a", "--", str(mount / "upper"), str(partial)]
            try:
                await self._with_disk(self.disk_image(sandbox_id), mount, argv)
                partial.rename(target)
            except BaseException:
                await copying.remove_tree(partial)
                raise
        return await asyncio.to_thread(copying.tree_size, target)

    async def fork(self, checkpoint_id: str, sandbox_id: str, disk_mb: int = disk.DEFAULT_SIZE_MB) -> None:
        """A new sandbox layer that its first boot fills with what the checkpoint holds.

        The copy runs through that boot's own mount of the disk, so its pages are still cached
        when the sandbox (or its next checkpoint) reads them; a failed copy is a failed boot.
        """
        await asyncio.to_thread(self.create_sandbox, sandbox_id, disk_mb)
        self._copy_ins[sandbox_id] = (self.checkpoint_dir(checkpoint_id), self.disk_image(sandbox_id))

    async def restore(self, checkpoint_id: str, sandbox_id: str) -> None:
        """Give a stopped sandbox a fresh disk that its next boot fills from the checkpoint.

        The old disk stays until that boot succeeds (one rename); if it fails, the new one goes.
        """
        current = self.disk_image(sandbox_id)
        incoming = current.with_name("disk.img.restoring")
        incoming.unlink(missing_ok=True)
        size_mb = disk.image_size_mb(current)
        await asyncio.to_thread(self._new_image, incoming, size_mb)
        self._copy_ins[sandbox_id] = (self.checkpoint_dir(checkpoint_id), incoming)

    async def _with_disk(self, image: Path, mount: Path, argv: list[str]) -> None:
        """Run a host command with the image mounted on ``mount`` in a private mount namespace."""
        helper = self._helper()
        process = await processes.spawn(
            [helper, "disk", "--image", str(image), "--mount", str(mount), "--", *argv], stdout=False
        )
        assert process.stderr is not None
        stderr = await process.stderr.read()
        if await process.wait() != 0:
            reason = stderr.decode(errors="replace").strip()
            raise OSError(f"{Path(argv[0]).name} on the disk of {image.parent.name} failed: {reason}")

    async def remove_sandbox(self, sandbox_id: str) -> None:
        await copying.remove_tree(self.layer_dir(sandbox_id))

    async def remove_checkpoint(self, checkpoint_id: str) -> None:
        await copying.remove_tree(self.checkpoint_dir(checkpoint_id))


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
