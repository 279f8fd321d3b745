"""A sandbox sees its own size, as a VM of that size would: cores, memory and uptime, via the official SDK."""

from __future__ import annotations

import os

import pytest
from opencomputer import Sandbox

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
