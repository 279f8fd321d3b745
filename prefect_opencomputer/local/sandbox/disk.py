"""A sandbox's disk: a sparse ext4 image of its ``diskMB`` holding the overlay's upper and work dirs.

The host's filesystem has no quotas, so a size limit needs a filesystem of its own per sandbox:
past it a write fails with ENOSPC inside the sandbox and the host's disk is untouched. The image
lives in the disk store (`sandbox.store`), is mounted only in the sandbox's private mount namespace,
through a loop device that detaches itself with its last mount: a killed server leaves no mount
and no loop device behind. Formatting one takes a few ms with its process, so a few spare images
of the default size are kept ready (`SpareImages`).
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import struct
import subprocess
import threading
import uuid
from pathlib import Path

from prefect_opencomputer.local.sandbox import ids

MIB = 1024 * 1024
# A disk's size when nobody asks for one: the hosted service's smallest (and default) disk.
DEFAULT_SIZE_MB = 20480
# A journal, so that a disk frozen for a checkpoint is clean on its own blocks (the freeze commits
# the journal) and its clones mount without a check, and a disk the host went down with replays
# its journal instead of needing e2fsck. No room kept for online resizing, nothing reserved for
# the host's root, and no zeroing of inode tables or journal up front: a sparse 20 GB image
# formats in a few ms and takes ~330 KB of the store. 4 KiB blocks whatever the size: a cloned
# image takes direct I/O in whole store blocks only, and a loop device over it has 4 KiB sectors.
MKFS_OPTIONS = (
    "-q", "-F", "-b", "4096", "-m", "0", "-O", "^resize_inode",
    "-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
)  # fmt: skip
SPARE_IMAGES = 2

# The ext4 superblock's magic and state, 1024 bytes into the image.
_STATE_OFFSET = 1024 + 56
_EXT4_MAGIC = 0xEF53
_VALID_FS, _ERROR_FS = 0x0001, 0x0002


class DiskUnavailable(RuntimeError):
    """This host cannot give sandboxes a disk of their own (no loop devices or no mkfs.ext4)."""


def check_host() -> None:
    """Raise `DiskUnavailable` with a readable reason when images cannot be made or mounted here."""
    if shutil.which("mkfs.ext4") is None:
        raise DiskUnavailable("sandbox disks need mkfs.ext4 (apt-get install -y e2fsprogs)")
    if not Path("/dev/loop-control").exists():
        raise DiskUnavailable("sandbox disks need loop devices (/dev/loop-control; modprobe loop)")


def make_image(path: Path, size_mb: int, skeleton: Path) -> None:
    """Format a fresh image at ``path`` holding ``skeleton``'s tree (written aside, then renamed)."""
    format_sparse(
        path, size_mb * MIB, [_mkfs(), *MKFS_OPTIONS, "-d", str(skeleton)], f"a {size_mb} MB sandbox disk"
    )


def format_sparse(path: Path, size_bytes: int, mkfs: list[str], what: str) -> None:
    """Run ``mkfs`` on a sparse file of ``size_bytes`` made aside, renamed to ``path`` once whole.

    A killed or failed format never leaves a file under ``path``; a failure raises OSError with the
    tool's own words.
    """
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with partial.open("wb") as handle:
            handle.truncate(size_bytes)
        subprocess.run([*mkfs, str(partial)], check=True, capture_output=True)
        partial.rename(path)
    except subprocess.CalledProcessError as error:
        partial.unlink(missing_ok=True)
        reason = error.stderr.decode(errors="replace").strip()
        raise OSError(f"formatting {what} failed: {reason}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@functools.cache
def _mkfs() -> str:
    return shutil.which("mkfs.ext4") or "mkfs.ext4"


def needs_repair(path: Path) -> bool:
    """Whether the image's last mount did not end cleanly (the host went down with it) or saw errors.

    Without a journal, ext4 clears its "valid" flag while mounted and sets it again on unmount.
    """
    with path.open("rb") as handle:
        handle.seek(_STATE_OFFSET)
        magic, state = struct.unpack("<HH", handle.read(4))
    return magic == _EXT4_MAGIC and (not state & _VALID_FS or bool(state & _ERROR_FS))


def repair_if_needed(path: Path) -> bool:
    """Run ``e2fsck -f -y`` on an image that needs it, as a VM's boot does; whether it ran.

    Never while a loop device backs the image: mounted somewhere, it reads as not clean, and a
    check would corrupt it. Raises OSError when errors are left that e2fsck could not mend.
    """
    if not needs_repair(path) or is_attached(path):
        return False
    result = subprocess.run(
        [shutil.which("e2fsck") or "e2fsck", "-f", "-y", str(path)], capture_output=True, text=True
    )
    if result.returncode & ~3:  # 1: errors mended; 2: mended, "reboot"; 4 and up: left or failed
        lines = (result.stdout + result.stderr).strip().splitlines()
        raise OSError(f"the disk {path.parent.name} needs repair that e2fsck could not do: {lines[-1:]}")
    return True


def is_attached(path: Path) -> bool:
    """Whether a loop device is backed by the file at ``path`` (its mounts are in other namespaces)."""
    try:
        identity = os.stat(path)
    except FileNotFoundError:
        return False
    return (identity.st_dev, identity.st_ino) in attached_files()


def attached_files() -> set[tuple[int, int]]:
    """(device, inode) of the file behind every attached loop device on this host."""
    found = set()
    for status in _loop_statuses():
        device, inode = struct.unpack_from("<QQ", status)
        found.add((device, inode))
    return found


def loop_backing_files() -> list[str]:
    """The paths of the files behind every attached loop device, as this host can name them."""
    files = []
    for entry in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            files.append(entry.read_text().strip())
        except OSError:
            continue  # detached while we looked
    return files


_LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64_SIZE = 232


def _loop_statuses() -> list[bytes]:
    """``struct loop_info64`` of every attached loop device on this host."""
    statuses = []
    for entry in Path("/sys/block").glob("loop*/loop"):
        try:
            fd = os.open(f"/dev/{entry.parent.name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            statuses.append(fcntl.ioctl(fd, _LOOP_GET_STATUS64, bytes(_LOOP_INFO64_SIZE)))
        except OSError:
            continue  # detached while we looked
        finally:
            os.close(fd)
    return statuses


def image_size_mb(path: Path) -> int:
    return os.stat(path).st_size // MIB


def build_skeleton(path: Path) -> None:
    """What every fresh disk holds: empty ``upper`` and ``work`` dirs of the sandbox's root."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    for name, mode in (("upper", 0o755), ("work", 0o700)):
        directory = path / name
        directory.mkdir(mode=mode, exist_ok=True)
        os.chown(directory, *ids.ROOT_OWNER)
        os.chmod(directory, mode)


class SpareImages:
    """Formatted images of one size kept ready, so a create only renames one into place.

    Refilled by a background thread that runs ``mkfs.ext4`` as a child process (the GIL is held
    for none of it). Complete spares left by an earlier server are reused; half-made ones go.
    """

    def __init__(self, directory: Path, size_mb: int, skeleton: Path, count: int = SPARE_IMAGES) -> None:
        self.directory = directory
        self.size_mb = size_mb
        self.skeleton = skeleton
        self.count = count
        self._ready: list[Path] = []
        self._lock = threading.Lock()
        self._refilling = False
        self._scanned = False

    def take(self) -> Path | None:
        """A spare image (the caller renames it away), or None when none is ready."""
        with self._lock:
            if not self._scanned:
                self._scanned = True
                self._adopt_leftovers()
            spare = self._ready.pop() if self._ready else None
        self.refill()
        return spare

    def refill(self) -> None:
        with self._lock:
            if self._refilling or len(self._ready) >= self.count:
                return
            self._refilling = True
        threading.Thread(target=self._fill, name="spare-disks", daemon=True).start()

    def _adopt_leftovers(self) -> None:
        if not self.directory.is_dir():
            return
        for entry in self.directory.iterdir():
            if entry.name.startswith(f"{self.size_mb}-") and entry.suffix == ".img":
                self._ready.append(entry)
            else:
                entry.unlink(missing_ok=True)  # half-made, or a size no longer the default

    def _fill(self) -> None:
        try:
            while True:
                with self._lock:
                    if len(self._ready) >= self.count:
                        return
                spare = self.directory / f"{self.size_mb}-{uuid.uuid4().hex}.img"
                try:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    make_image(spare, self.size_mb, self.skeleton)
                except OSError:
                    return  # the data dir is going away; a create formats its own image
                with self._lock:
                    self._ready.append(spare)
        finally:
            with self._lock:
                self._refilling = False
