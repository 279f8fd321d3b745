"""What the host sees of a sandbox's processes: the host id range its user namespace maps to.

Inside, every process reads ``0 0 65536`` in /proc/self/uid_map: the namespace it runs in maps the
sandbox's ids one to one onto the sandbox's own namespace, whose host range only the host sees. A
test starts a marked process inside (`marked_sleep`) and reads its namespace from the host.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

_FIND_SECONDS = 20.0


def new_marker() -> str:
    return f"oc-marked-{secrets.token_hex(6)}"


def marked_sleep(marker: str) -> str:
    """A bash script that leaves a process named ``marker`` running inside for the host to find."""
    return f"(exec -a {marker} sleep 120) </dev/null >/dev/null 2>&1 &"


@dataclass(frozen=True)
class HostView:
    uid_map: list[str]  # as the host reads it: 0, the first host id, the count
    gid_map: list[str]
    user_namespace: str  # readlink of /proc/<pid>/ns/user: the same text inside and out


def host_view(marker: str) -> HostView:
    """The marked process's namespace as the host sees it; the process is killed afterwards."""
    deadline = time.monotonic() + _FIND_SECONDS
    while True:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with suppress(OSError):
                if (entry / "cmdline").read_bytes().split(b"\0")[0] == marker.encode():
                    view = HostView(
                        (entry / "uid_map").read_text().split(),
                        (entry / "gid_map").read_text().split(),
                        os.readlink(entry / "ns/user"),
                    )
                    os.kill(int(entry.name), signal.SIGKILL)
                    return view
        if time.monotonic() > deadline:
            raise AssertionError(f"no process {marker} on the host after {_FIND_SECONDS:.0f}s")
        time.sleep(0.05)


def is_host_range_map(words: list[str]) -> bool:
    """A sandbox's namespace as the host reads it: ids 0.. are a host range of its own, past the
    canonical range its files are stored with (100000000..+65535)."""
    return len(words) == 3 and words[0] == "0" and int(words[1]) >= 100_065_536 and words[2] == "65536"
