"""What the runtime needs from the host: a readiness check with a readable answer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REQUIRED_COMMANDS = ("cp", "rm", "setpriv", "mmdebstrap")


class RuntimeUnavailable(RuntimeError):
    """This machine cannot run isolated sandboxes (no root, no overlayfs, a missing host tool)."""


def check_host() -> None:
    """Raise `RuntimeUnavailable` with a readable reason when sandboxes cannot run here."""
    missing = [name for name in REQUIRED_COMMANDS if shutil.which(name) is None]
    if missing:
        hint = " (apt-get install -y mmdebstrap)" if "mmdebstrap" in missing else ""
        raise RuntimeUnavailable(f"missing commands: {', '.join(missing)}{hint}")
    if os.geteuid() != 0:
        raise RuntimeUnavailable(
            "the local server's sandboxes need root: it maps each one's user namespace onto an "
            "unprivileged host id range and gives it cgroups and a network namespace of its own"
        )
    if "overlay" not in Path("/proc/filesystems").read_text():
        raise RuntimeUnavailable("the kernel has no overlayfs (modprobe overlay)")
