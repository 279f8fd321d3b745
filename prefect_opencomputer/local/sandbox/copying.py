"""Tree copies that a crash cannot leave half-done under the final name, nor running on.

A layer copy (checkpoint, fork, restore) is ``cp -a`` into ``<target>.partial-<uuid>``, renamed to
``<target>`` only once complete: whoever finds ``<target>`` finds all of it. The ``cp`` runs under
``setpriv --pdeathsig KILL`` and in the server's own session, so it dies with the server (even on
SIGKILL) instead of copying on for nobody. What a killed server leaves, `sweep_partials` removes
at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import uuid
from pathlib import Path

PARTIAL_MARK = ".partial-"
# Host binaries only, whatever PATH says: these run with the server's privileges.
_HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class CopyFailed(OSError):
    """``cp`` (or ``rm``) exited non-zero; the message carries what it said."""


@functools.cache
def host_command(name: str) -> str:
    """A host binary from the system directories only, whatever PATH says."""
    found = shutil.which(name, path=_HOST_PATH)
    if found is None:
        raise FileNotFoundError(f"host command not found: {name}")
    return found


def partial_path(target: Path) -> Path:
    """A fresh name beside ``target`` for a copy in progress."""
    return target.with_name(f"{target.name}{PARTIAL_MARK}{uuid.uuid4().hex}")


async def copy_tree(source: Path, target: Path) -> None:
    """``cp -a source target`` (owners, modes, xattrs, links, whiteouts kept), all or nothing.

    ``target`` must not exist. On any failure or cancellation the partial copy is removed and
    ``target`` is never created.
    """
    if target.exists() or target.is_symlink():
        raise FileExistsError(f"copy target exists: {target}")
    partial = partial_path(target)
    try:
        await _run([host_command("cp"), "-a", "--reflink=auto", "--", str(source), str(partial)])
        os.rename(partial, target)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.shield(remove_tree(partial))
        raise


async def remove_tree(path: Path) -> None:
    """``rm -rf --one-file-system`` in a child that dies with the server; a missing path is fine."""
    if not path.exists() and not path.is_symlink():
        return
    await _run([host_command("rm"), "-rf", "--one-file-system", "--", str(path)])


async def sweep_partials(directory: Path) -> list[Path]:
    """Remove every ``*.partial-*`` entry directly in ``directory``; returns what went.

    Meant for start-up: a copy in progress belongs to a server that died. Never raises for a
    directory that is missing or an entry that cannot go (it is retried at the next start).
    """
    try:
        stale = [entry for entry in directory.iterdir() if PARTIAL_MARK in entry.name]
    except OSError:
        return []
    removed = []
    for entry in stale:
        with contextlib.suppress(OSError):
            await remove_tree(entry)
            removed.append(entry)
    return removed


async def _run(argv: list[str]) -> None:
    # Not start_new_session: the child stays in the server's session and process group, and
    # the kernel kills it when the server's thread that started it dies.
    process = await asyncio.create_subprocess_exec(
        host_command("setpriv"),
        "--pdeathsig",
        "KILL",
        "--",
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await process.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await asyncio.shield(process.wait())
        raise
    if process.returncode != 0:
        name = Path(argv[0]).name
        raise CopyFailed(f"{name} failed: {stderr.decode(errors='replace').strip()}")


def tree_size(path: Path) -> int:
    """Bytes in the regular files (and links) below ``path``, as ``du --apparent-size`` counts them."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
