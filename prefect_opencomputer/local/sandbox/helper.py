"""The sandbox helper binary: compiled from ``helper.c`` once per source version, on first use.

The server runs it with host privileges, so it lives in a root-owned directory no one else can
write, and nothing inside a sandbox can reach it: it is looked up on the host, before it enters.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

SOURCE = Path(__file__).with_name("helper.c")
_lock = threading.Lock()
_STALE_SECONDS = 24 * 3600


class HelperUnavailable(RuntimeError):
    """The helper cannot be built here (no C compiler, or the compile failed)."""


def helper_binary(cache: Path) -> Path:
    """The compiled helper under ``cache/bin``, building it if this source version has none yet."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    directory = cache / "bin"
    target = directory / f"sandbox-helper-{digest}"
    if target.exists():
        return target
    with _lock:
        if target.exists():
            return target
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise HelperUnavailable(
                "the sandbox helper needs a C compiler (apt-get install -y gcc libc6-dev)"
            )
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        partial = directory / f".{target.name}.{os.getpid()}"
        build = subprocess.run(
            [compiler, "-O2", "-Wall", "-o", str(partial), str(SOURCE)],
            capture_output=True,
            check=False,
        )
        if build.returncode != 0:
            partial.unlink(missing_ok=True)
            reason = build.stderr.decode(errors="replace").strip()
            raise HelperUnavailable(f"compiling the sandbox helper failed: {reason}")
        os.chmod(partial, 0o755)
        # Other versions stay: a server still running one keeps entering its sandboxes with it.
        partial.rename(target)
        # Another version may still serve a running server (an upgrade, a second checkout): only
        # helpers no one has built for a day go.
        cutoff = time.time() - _STALE_SECONDS
        for stale in directory.glob("sandbox-helper-*"):
            with contextlib.suppress(FileNotFoundError):
                if stale != target and stale.stat().st_mtime < cutoff:
                    stale.unlink()
    return target
