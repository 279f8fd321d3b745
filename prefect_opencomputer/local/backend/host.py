"""What the runtime needs from the host: a readiness check and fast tree copies."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

from prefect_opencomputer.local.backend import processes

REQUIRED_COMMANDS = ("bwrap", "nsenter", "unshare", "mount", "setpriv", "cp", "rm")


class RuntimeUnavailable(RuntimeError):
    """This machine cannot run isolated sandboxes (no bubblewrap, no root, no overlayfs)."""


@functools.cache
def command(name: str) -> str:
    """The absolute path of a host command, looked up once (a PATH search costs an execve per miss)."""
    return shutil.which(name) or name


def check_host() -> None:
    """Raise `RuntimeUnavailable` with a readable reason when sandboxes cannot run here."""
    missing = [name for name in REQUIRED_COMMANDS if shutil.which(name) is None]
    if missing:
        hint = " (apt-get install -y bubblewrap)" if "bwrap" in missing else ""
        raise RuntimeUnavailable(f"missing commands: {', '.join(missing)}{hint}")
    if os.geteuid() != 0:
        raise RuntimeUnavailable(
            "the local server's sandboxes need root: each one mounts an overlay filesystem in a "
            "private mount namespace and enters namespaces with nsenter"
        )
    if "overlay" not in Path("/proc/filesystems").read_text():
        raise RuntimeUnavailable("the kernel has no overlayfs (modprobe overlay)")


async def copy_tree(source: Path, target: Path) -> None:
    """``cp -a``: owners, modes, xattrs (overlay whiteouts and opaque dirs) and links kept."""
    await _run("copy", source, [command("cp"), "-a", "--reflink=auto", "--", str(source), str(target)])


async def remove_tree(path: Path) -> None:
    """``rm -rf`` in a child process, so large trees never block the event loop."""
    if not path.exists() and not path.is_symlink():
        return
    await _run("remove", path, [command("rm"), "-rf", "--one-file-system", "--", str(path)])


async def _run(what: str, path: Path, argv: list[str]) -> None:
    process = await processes.spawn(argv, stdout=False)
    assert process.stderr is not None
    stderr = await process.stderr.read()
    if await process.wait() != 0:
        raise OSError(f"{what} {path.name} failed: {stderr.decode(errors='replace').strip()}")
