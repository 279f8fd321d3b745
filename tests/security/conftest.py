"""Helpers for the attacks: sandboxes made and killed over the API, commands, checkpoints."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest


# What /proc/self/uid_map shows inside a sandbox: 65536 ids, one to one those of the sandbox's own
# namespace (whose host range only the host sees: tests/host_view.py), never the host's 4294967295.
def is_sandbox_uid_map(words: list[str]) -> bool:
    return words == ["0", "0", "65536"]


# What it shows for a process in the host's own user namespace (host root, or any host user).
HOST_UID_MAP = ["0", "0", "4294967295"]

NewSandbox = Callable[..., Awaitable[str]]

# Run as a sandbox's root: each way to the host's tables of disks (which list every sandbox's disk),
# then what the tables show.
_UNCOVER_DISKS_PY = """
import ctypes, json, os, subprocess

libc = ctypes.CDLL(None, use_errno=True)
seen = {}

def tried(name, command):
    done = subprocess.run(command, shell=True, capture_output=True, text=True)
    seen[name] = done.returncode

tried("umount", "umount /proc/partitions")
tried("umount -l", "umount -l /proc/diskstats")
os.makedirs("/mnt/p", exist_ok=True)
tried("mount -t proc", "mount -t proc proc /mnt/p")
if seen["mount -t proc"] == 0:
    for name in ("partitions", "diskstats"):
        seen[f"fresh procfs {name}"] = open(f"/mnt/p/{name}").read()
OPEN_TREE_CLONE, AT_FDCWD = 1, -100
tree = libc.syscall(428, AT_FDCWD, b"/proc", OPEN_TREE_CLONE | os.O_CLOEXEC)
seen["open_tree"] = 0 if tree >= 0 else -1
if tree >= 0:
    for name in ("partitions", "diskstats"):
        with open(os.open(name, os.O_RDONLY, dir_fd=tree)) as table:
            seen[f"cloned /proc {name}"] = table.read()
for name in ("partitions", "diskstats"):
    seen[f"/proc/{name} afterwards"] = open(f"/proc/{name}").read()
print(json.dumps(seen))
"""

# A device's line in either table starts with its major and minor numbers.
_DEVICE_LINE = re.compile(r"^\s*\d+\s+\d+\s", re.MULTILINE)


UNCOVER_DISKS = (
    f"echo {base64.b64encode(_UNCOVER_DISKS_PY.encode()).decode()} | base64 -d > /tmp/uncover.py && "
    "sudo python3 /tmp/uncover.py"
)


def disks_shown(seen: dict[str, Any]) -> list[str]:
    """What `UNCOVER_DISKS` saw that lists a block device or a view gone (empty: nothing leaked)."""
    tables = {name: text for name, text in seen.items() if isinstance(text, str)}
    shown = [name for name, text in tables.items() if "loop" in text or _DEVICE_LINE.search(text)]
    if tables.get("/proc/partitions afterwards", "").split() != ["major", "minor", "#blocks", "name"]:
        shown.append("/proc/partitions afterwards")  # the view itself stays: an empty table
    if tables.get("/proc/diskstats afterwards") != "":
        shown.append("/proc/diskstats afterwards")
    return shown


async def run(
    http: httpx.AsyncClient, sandbox: str, script: str, *, timeout: int = 30, bash: bool = False
) -> dict[str, Any]:
    """Run ``script`` in the sandbox (through ``/bin/sh -c``, or bash without relying on sh)."""
    body: dict[str, Any] = {"cmd": script, "timeout": timeout}
    if bash:
        body = {"cmd": "/bin/bash", "args": ["-c", script], "timeout": timeout}
    response = await http.post(f"/sandboxes/{sandbox}/exec/run", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def run_ok(http: httpx.AsyncClient, sandbox: str, script: str, **options: Any) -> str:
    result = await run(http, sandbox, script, **options)
    assert result["exitCode"] == 0, result
    return str(result["stdout"])


async def checkpoint_ready(http: httpx.AsyncClient, sandbox: str, name: str) -> str:
    """Take a checkpoint and wait until it can be forked; its id."""
    created = await http.post(f"/sandboxes/{sandbox}/checkpoints", json={"name": name})
    assert created.status_code == 201, created.text
    checkpoint_id: str = created.json()["id"]
    for _ in range(600):
        listed = (await http.get(f"/sandboxes/{sandbox}/checkpoints")).json()
        status = next(c["status"] for c in listed if c["id"] == checkpoint_id)
        if status == "ready":
            return checkpoint_id
        assert status != "failed", listed
        await asyncio.sleep(0.05)
    raise AssertionError(f"checkpoint {checkpoint_id} never became ready")


@pytest.fixture
async def new_sandbox(http: httpx.AsyncClient) -> AsyncIterator[NewSandbox]:
    """Make sandboxes (``POST /sandboxes`` with the given body); every one is killed afterwards."""
    made: list[str] = []

    async def make(**body: Any) -> str:
        response = await http.post("/sandboxes", json={"templateID": "base", "timeout": 0, **body})
        assert response.status_code == 201, response.text
        sandbox_id: str = response.json()["sandboxID"]
        made.append(sandbox_id)
        return sandbox_id

    yield make
    for sandbox_id in made:
        await http.delete(f"/sandboxes/{sandbox_id}")
