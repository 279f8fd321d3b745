"""The data dir is private to the user running the server: 0700, its secret files 0600.

The state database holds the URL-signing secret, preview tokens and every sandbox's environment;
other local users are untrusted. Modes are set right after creation and forced again at each start,
so a data dir made by an older version (or a loose umask) is fixed, not trusted.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) if needed and force the directory itself to 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


def make_private_file(path: Path) -> None:
    """Create ``path`` empty as 0600 if it does not exist; force an existing one to 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def force_private(*paths: Path) -> None:
    """Force each existing file among ``paths`` to 0600; missing ones (and links) are skipped."""
    for path in paths:
        if path.is_symlink():
            continue
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path, FILE_MODE)
