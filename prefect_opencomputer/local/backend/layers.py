"""Sandbox and checkpoint layers on disk.

A sandbox's root is an overlay: the host's ``/`` read-only below, the sandbox's own ``upper``
directory above, where every write lands. Each new layer starts as a copy of the *mask*: whiteouts
and opaque directories that hide what is private to the host (home directories, ``/root``,
``/tmp``, the server's data dir, unreadable files in ``/etc`` and ``/var/lib``) and an ``/etc/passwd``
that knows the ``sandbox`` user. A checkpoint is a copy of an upper directory; a fork copies it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import subprocess
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

from prefect_opencomputer.local.backend import host

_OPAQUE_XATTR = "trusted.overlay.opaque"
_SPARE_LAYERS = 2
# Top-level host directories the sandbox sees as its system; everything else is hidden or emptied.
_SYSTEM_DIRS = frozenset({"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "var"})
_MOUNTED_DIRS = frozenset({"dev", "proc", "sys"})
_EMPTY_DIRS = {
    "root": 0o700,
    "tmp": 0o1777,
    "run": 0o755,
    "mnt": 0o755,
    "media": 0o755,
    "srv": 0o755,
    "opt": 0o755,
    "home": 0o755,
}
_EMPTY_VAR_DIRS = {
    "tmp": 0o1777,
    "log": 0o755,
    "mail": 0o2775,
    "spool": 0o755,
    "backups": 0o755,
    "cache": 0o755,
    "local": 0o2775,
    "opt": 0o755,
}


class LayerStore:
    """Where the layers live: ``sandboxes/<id>/{upper,work,merged}`` and ``checkpoints/<id>``."""

    def __init__(self, root: Path, *, hidden_paths: Sequence[Path] = ()) -> None:
        self.root = root
        self.hidden_paths = tuple(Path(p).resolve() for p in hidden_paths)
        self._mask: Path | None = None
        # Fresh layers built ahead of time, off the request path: a create renames one into place.
        self._spares: list[Path] = []
        self._spares_lock = threading.Lock()
        self._refilling = False

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
        """A fresh layer: the mask and nothing else (a spare one when there is one)."""
        base = self.root / "sandboxes" / sandbox_id
        base.parent.mkdir(parents=True, exist_ok=True)
        with self._spares_lock:
            spare = self._spares.pop() if self._spares else None
        if spare is not None:
            spare.rename(base)
        else:
            self._build_layer(base)
        self._refill_spares()

    def _build_layer(self, base: Path) -> None:
        """``base/upper`` as a copy of the mask and an empty ``base/work``.

        A ``cp -a`` child does the copy (whiteouts, opaque-dir xattrs and owners kept), so a thread
        building spares holds the GIL for none of it.
        """
        (base / "work").mkdir(parents=True)
        copy = subprocess.run(
            [host.command("cp"), "-a", "--", str(self.mask()), str(base / "upper")],
            stderr=subprocess.PIPE,
            check=False,
        )
        if copy.returncode != 0:
            reason = copy.stderr.decode(errors="replace").strip()
            raise OSError(f"building layer {base.name} failed: {reason}")

    def _refill_spares(self) -> None:
        with self._spares_lock:
            if self._refilling or len(self._spares) >= _SPARE_LAYERS:
                return
            self._refilling = True
        threading.Thread(target=self._build_spares, name="spare-layers", daemon=True).start()

    def _build_spares(self) -> None:
        try:
            while True:
                with self._spares_lock:
                    if len(self._spares) >= _SPARE_LAYERS:
                        return
                spare = self.root / "spares" / uuid.uuid4().hex
                try:
                    self._build_layer(spare)
                except OSError:
                    return  # the data dir is going away; a create builds its own layer
                with self._spares_lock:
                    self._spares.append(spare)
        finally:
            with self._spares_lock:
                self._refilling = False

    def reset_workdir(self, sandbox_id: str) -> None:
        """Overlayfs needs an empty work directory on the same filesystem as the upper one."""
        _, work = self.sandbox_dirs(sandbox_id)
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)

    async def snapshot(self, sandbox_id: str, checkpoint_id: str) -> int:
        """Copy the sandbox's layer into a checkpoint; returns its size in bytes."""
        upper, _ = self.sandbox_dirs(sandbox_id)
        target = self.checkpoint_dir(checkpoint_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        await host.copy_tree(upper, target)
        return await asyncio.to_thread(_tree_size, target)

    async def fork(self, checkpoint_id: str, sandbox_id: str) -> None:
        """A new sandbox layer holding what the checkpoint holds."""
        upper, work = self.sandbox_dirs(sandbox_id)
        upper.parent.mkdir(parents=True, exist_ok=True)
        await host.copy_tree(self.checkpoint_dir(checkpoint_id), upper)
        work.mkdir(exist_ok=True)

    async def restore(self, checkpoint_id: str, sandbox_id: str) -> None:
        """Replace a stopped sandbox's layer with the checkpoint's (swap, then drop the old one)."""
        upper, _ = self.sandbox_dirs(sandbox_id)
        incoming = upper.with_name("upper.restoring")
        outgoing = upper.with_name("upper.old")
        await host.remove_tree(incoming)
        await host.copy_tree(self.checkpoint_dir(checkpoint_id), incoming)
        await host.remove_tree(outgoing)
        upper.rename(outgoing)
        incoming.rename(upper)
        await host.remove_tree(outgoing)
        self.reset_workdir(sandbox_id)

    async def remove_sandbox(self, sandbox_id: str) -> None:
        await host.remove_tree(self.root / "sandboxes" / sandbox_id)

    async def remove_checkpoint(self, checkpoint_id: str) -> None:
        await host.remove_tree(self.checkpoint_dir(checkpoint_id))

    # -- the mask --------------------------------------------------------------------------

    def mask(self) -> Path:
        """Build the mask once per process from the host as it is now (stale spares go with the old one)."""
        if self._mask is None:
            mask = self.root / "mask"
            for stale in (mask, self.root / "spares"):
                if stale.exists():
                    shutil.rmtree(stale)
            mask.mkdir(parents=True)
            _build_mask(mask, self.hidden_paths)
            self._mask = mask
        return self._mask


def _build_mask(mask: Path, hidden_paths: Sequence[Path]) -> None:
    for entry in os.scandir("/"):
        if entry.name in _SYSTEM_DIRS or entry.name in _MOUNTED_DIRS:
            continue
        if entry.name in _EMPTY_DIRS:
            _opaque_dir(mask / entry.name, _EMPTY_DIRS[entry.name])
        else:
            _whiteout(mask, entry.name)
    for name, mode in _EMPTY_DIRS.items():
        if not (mask / name).exists():
            _opaque_dir(mask / name, mode)
    home = mask / "home" / "sandbox"
    home.mkdir(mode=0o755)
    os.chown(home, 1000, 1000)
    for name, mode in _EMPTY_VAR_DIRS.items():
        if Path("/var", name).is_dir():
            _mirror_parents(mask, Path("var", name))
            _opaque_dir(mask / "var" / name, mode)
    for private in _unreadable(Path("/etc"), depth=8) + _unreadable(Path("/var/lib"), depth=2):
        _whiteout(mask, str(private.relative_to("/")))
    for hidden in hidden_paths:
        top = hidden.parts[1] if len(hidden.parts) > 1 else ""
        if top in _SYSTEM_DIRS and hidden.exists():
            _whiteout(mask, str(hidden.relative_to("/")))
    _write_accounts(mask)


def _unreadable(root: Path, *, depth: int) -> list[Path]:
    """Entries a non-root host user could not read: what the files API must not hand out."""
    found: list[Path] = []

    def walk(directory: Path, level: int) -> None:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISLNK(info.st_mode):
                continue
            need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(info.st_mode) else 0)
            if info.st_mode & need != need:
                found.append(Path(entry.path))
            elif stat.S_ISDIR(info.st_mode) and level < depth:
                walk(Path(entry.path), level + 1)

    walk(root, 1)
    return found


def _mirror_parents(mask: Path, relative: Path) -> None:
    """Create the parents of ``relative`` in the mask with the host's owner and mode."""
    current = mask
    host_path = Path("/")
    for part in relative.parts[:-1]:
        current, host_path = current / part, host_path / part
        if not current.exists():
            info = os.stat(host_path)
            current.mkdir()
            os.chown(current, info.st_uid, info.st_gid)
            os.chmod(current, stat.S_IMODE(info.st_mode))


def _whiteout(mask: Path, relative: str) -> None:
    _mirror_parents(mask, Path(relative))
    target = mask / relative
    if not target.exists() and not target.is_symlink():
        os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def _opaque_dir(path: Path, mode: int) -> None:
    path.mkdir(exist_ok=True)
    os.chmod(path, mode)
    os.setxattr(path, _OPAQUE_XATTR, b"y")


def _write_accounts(mask: Path) -> None:
    """The host's users and groups, minus anything claiming uid/gid 1000, plus ``sandbox``."""
    for name, line in (
        ("passwd", "sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/bash"),
        ("group", "sandbox:x:1000:"),
    ):
        source = Path("/etc", name)
        kept = [
            row
            for row in source.read_text().splitlines()
            if row and row.split(":")[0] != "sandbox" and row.split(":")[2:3] != ["1000"]
        ]
        target = mask / "etc" / name
        _mirror_parents(mask, Path("etc", name))
        target.write_text("\n".join([*kept, line]) + "\n")
        os.chmod(target, 0o644)


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
