"""Root inside cannot take the /proc views away to read the host's list of disks.

The host's ``/proc/partitions`` and ``/proc/diskstats`` list every sandbox's disk (a loop device each)
and its I/O as it happens: a side channel on what the other sandboxes do. A sandbox sees empty tables
there instead, and its root (every sandbox has sudo) tries every way back to the real ones: unmounting
the views, mounting a fresh procfs, cloning /proc without what is mounted over it. Each payload only
reads those two files.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.security.conftest import UNCOVER_DISKS, disks_shown, run_ok

pytestmark = pytest.mark.security


async def test_root_inside_cannot_uncover_the_hosts_disks_in_proc(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    # What would leak: every sandbox's disk is a loop device on the host, this one's included.
    assert "loop" in Path("/proc/partitions").read_text()
    seen = json.loads(await run_ok(http, sandbox, UNCOVER_DISKS))
    assert disks_shown(seen) == [], seen
    # Neither view comes off: a VM's root could unmount them, but it has only one disk to see.
    assert seen["umount"] != 0 and seen["umount -l"] != 0, seen
