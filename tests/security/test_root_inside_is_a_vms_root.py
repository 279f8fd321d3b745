"""What root inside may do to kernel objects of its own, as a VM's root may, and where that stops.

Judged against a VM: its root may make network namespaces (with raw sockets in them), mount cgroup
and binfmt_misc file systems, and set its init's limits, all over its own machine. Here the same
calls reach only the sandbox's own namespaces and its own cgroup; none reaches the host or another
sandbox. docs/security.md says so.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.security.conftest import run, run_ok

pytestmark = pytest.mark.security


async def test_a_network_namespace_made_inside_reaches_nothing(http: httpx.AsyncClient, sandbox: str) -> None:
    # A raw socket in a namespace of its own: it sees only that namespace's loopback.
    script = (
        "import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); "
        "print(sorted(name for _, name in socket.if_nameindex()))"
    )
    out = await run_ok(http, sandbox, f'sudo unshare --net python3 -c "{script}"')
    assert out.strip() == "['lo']"


async def test_a_cgroup_hierarchy_mounted_inside_is_its_own_and_read_only(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    script = (
        "mkdir -p /mnt/cg && mount -t cgroup -o pids cgroup /mnt/cg && "
        "cat /mnt/cg/pids.max && (mkdir /mnt/cg/child 2>&1 || true) && "
        "(echo 1 > /mnt/cg/pids.max) 2>&1 || true"
    )
    out = await run_ok(http, sandbox, f"sudo sh -c '{script}'")
    lines = out.splitlines()
    assert lines[0] == "4096"  # the sandbox's own group: its process cap
    assert "Permission denied" in lines[1]  # no group below it
    assert "Permission denied" in lines[2]  # no limit of its own raised or lowered


async def test_binfmt_misc_registered_inside_stays_inside(http: httpx.AsyncClient, sandbox: str) -> None:
    name = f"oc-probe-{sandbox}"
    script = (
        "mkdir -p /mnt/binfmt && mount -t binfmt_misc binfmt_misc /mnt/binfmt && "
        f"echo ':{name}:E::ocprobe::/bin/true:' > /mnt/binfmt/register && ls /mnt/binfmt"
    )
    result = await run(http, sandbox, f'sudo sh -c "{script}"')
    if result["exitCode"] == 0:
        assert name in result["stdout"]  # registered, in the sandbox's own binfmt_misc
    host = Path("/proc/sys/fs/binfmt_misc")
    assert not (host / name).exists()


async def test_limits_set_on_pid_1_inside_are_the_sandboxs_own(http: httpx.AsyncClient, sandbox: str) -> None:
    await run_ok(http, sandbox, "sudo prlimit --pid 1 --nofile=512:512")
    assert "512" in await run_ok(http, sandbox, "sudo prlimit --pid 1 --nofile --output SOFT --noheadings")
    # The server, and so every other sandbox, still answers and starts commands.
    assert (await run_ok(http, sandbox, "echo alive")).strip() == "alive"
