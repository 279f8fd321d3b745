"""A sandbox sees its own size, as a VM of that size would (cores, memory, uptime, load), and no host disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from opencomputer import Sandbox

from prefect_opencomputer.local import LocalServer

pytestmark = pytest.mark.slow

SIZE = (
    "nproc; python3 -c 'import os; print(os.cpu_count())'; grep -c ^processor /proc/cpuinfo; "
    "grep -c '^cpu[0-9]' /proc/stat; awk '/^MemTotal/ {print $2}' /proc/meminfo; "
    "free -m | awk '/^Mem:/ {print $2}'"
)
HOST_CORES = len(os.sched_getaffinity(0))


async def _size(sandbox: Sandbox) -> list[int]:
    """[nproc, os.cpu_count(), cpuinfo processors, /proc/stat cpus, MemTotal kB, free's total MB]."""
    result = await sandbox.exec.run(SIZE)
    assert result.exit_code == 0 and result.stderr == "", result
    return [int(line) for line in result.stdout.split()]


async def test_a_1_vcpu_1024_mb_sandbox_sees_one_cpu_and_1024_mb(small_sdk_sandbox: Sandbox) -> None:
    assert await _size(small_sdk_sandbox) == [1, 1, 1, 1, 1024 * 1024, 1024]


async def test_the_view_follows_scale_hibernate_and_reboot(small_sdk_sandbox: Sandbox) -> None:
    await small_sdk_sandbox.scale(8192)
    cores = min(2, HOST_CORES)  # one core per vCPU where the host has them
    assert await _size(small_sdk_sandbox) == [cores, cores, cores, cores, 8192 * 1024, 8192]
    await small_sdk_sandbox.hibernate()
    await small_sdk_sandbox.wake()
    assert await _size(small_sdk_sandbox) == [cores, cores, cores, cores, 8192 * 1024, 8192]
    await small_sdk_sandbox.reboot()
    assert await _size(small_sdk_sandbox) == [cores, cores, cores, cores, 8192 * 1024, 8192]


async def test_a_sandbox_sees_no_disk_of_the_host_or_another_sandbox(
    sdk_sandbox: Sandbox, small_sdk_sandbox: Sandbox, local_server: LocalServer
) -> None:
    """/proc/partitions and /proc/diskstats list no block device: not the host's, not a neighbour's."""
    written = await small_sdk_sandbox.exec.run("head -c 4M /dev/urandom > busy.bin && sync")
    assert written.exit_code == 0, written
    for sandbox in (sdk_sandbox, small_sdk_sandbox):
        seen = await sandbox.exec.run("cat /proc/partitions; echo ---; cat /proc/diskstats")
        partitions, diskstats = seen.stdout.split("---\n")
        assert partitions.split() == ["major", "minor", "#blocks", "name"], partitions
        assert diskstats == "", diskstats
        # Views mounted from nowhere on the host: the mount table names no host path.
        mounts = (
            await sandbox.exec.run("grep -E ' /proc/(partitions|diskstats) ' /proc/self/mountinfo")
        ).stdout
        assert len(mounts.splitlines()) == 2 and str(local_server.data_dir) not in mounts, mounts
    host = Path("/proc/partitions").read_text()  # what they would otherwise list
    assert any(line.split()[-1].startswith("loop") for line in host.splitlines()[2:])


async def test_load_average_and_uptime_are_the_sandboxs_own(small_sdk_sandbox: Sandbox) -> None:
    """Counted from its own processes and its own boot, not the host's."""
    seen = await small_sdk_sandbox.exec.run("cat /proc/loadavg /proc/uptime; ls /proc | grep -c '^[0-9]'")
    loadavg, uptime, processes = seen.stdout.splitlines()
    tasks = int(loadavg.split()[3].split("/")[1])
    host_tasks = int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    host_seconds = float(Path("/proc/uptime").read_text().split()[0])
    # Its own few tasks (the host-side helper of each command counts too), not the host's hundreds.
    assert tasks <= int(processes) + 4 < host_tasks, (loadavg, processes, host_tasks)
    assert float(uptime.split()[0]) < host_seconds
