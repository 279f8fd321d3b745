"""A sandbox sees its own size in /proc, as a VM of that size would: lxcfs's views over its /proc files.

JVMs, thread pools, build tools and ``free`` size themselves by ``/proc/meminfo``, ``/proc/cpuinfo``
and ``/proc/stat`` (glibc's CPU count reads it when there is no ``/sys``, as in a sandbox). The kernel
shows the host there, so the server runs one lxcfs (Debian's, as LXC and Incus use it): a FUSE file
system whose files answer, for the process that reads them, from that process's own cgroups (memory
limit, cpuset and CPU quota, usage, uptime, load average). Each booted sandbox gets them mounted over
its own /proc files. Where lxcfs is not installed, sandboxes see the host's numbers, as before.

The host's disks are nobody's business inside either: ``/proc/partitions`` and ``/proc/diskstats``
would list every sandbox's disk (a loop device each) and its I/O. lxcfs has no partitions view, and its
diskstats needs blkio statistics this kernel does not keep, so the helper shows empty tables there,
with lxcfs or without it.

The helper mounts the views as it boots the sandbox, before its pid 1 moves into the namespaces every
process of the sandbox runs in: there every mount made before is locked, so root inside can neither
unmount the views nor mount a fresh procfs to look past them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import time
from pathlib import Path

from prefect_opencomputer.local.sandbox import processes

logger = logging.getLogger(__name__)

# The /proc files lxcfs answers per cgroup (loadavg from a thread of its own that samples each group).
VIEWS = ("cpuinfo", "meminfo", "stat", "uptime", "swaps", "loadavg")
_START_SECONDS = 10.0
_MNT_DETACH = 2


class ProcViews:
    """One lxcfs for the server, mounted on ``mountpoint``: the files each sandbox's boot mounts."""

    def __init__(self, mountpoint: Path, lxcfs: processes.ChildProcess) -> None:
        self.mountpoint = mountpoint
        self._lxcfs = lxcfs

    @property
    def paths(self) -> list[Path]:
        """The views, each shown inside over the /proc file of its name."""
        return [self.mountpoint / "proc" / name for name in VIEWS]

    @staticmethod
    def installed() -> bool:
        return shutil.which("lxcfs") is not None and Path("/dev/fuse").exists() and os.geteuid() == 0

    @classmethod
    async def start(cls, mountpoint: Path) -> ProcViews | None:
        """Start lxcfs on ``mountpoint`` (a stale mount of a killed server is detached first).

        None, with the reason in the log, when it is not installed or does not come up.
        """
        if not cls.installed():
            logger.warning("lxcfs is not installed: sandboxes see the host's CPUs and memory in /proc")
            return None
        _detach(mountpoint)
        mountpoint.mkdir(mode=0o700, parents=True, exist_ok=True)
        lxcfs = shutil.which("lxcfs")
        assert lxcfs is not None
        # setpriv: lxcfs ends (and unmounts, on SIGTERM) with the thread that started it, even when
        # the server is killed outright.
        argv = [
            "setpriv", "--pdeathsig", "TERM", "--", lxcfs, "--foreground", "--enable-cfs",
            "--enable-pidfd", "--enable-loadavg", "--pidfile", str(mountpoint.with_name("lxcfs.pid")),
            str(mountpoint),
        ]  # fmt: skip
        log = mountpoint.with_name("lxcfs.log").open("wb")
        try:
            process = await processes.spawn(argv, stdout=False, stderr=log)
        finally:
            log.close()
        views = cls(mountpoint, process)
        deadline = time.monotonic() + _START_SECONDS
        while not (mountpoint / "proc" / "meminfo").exists():
            if process.returncode is not None or time.monotonic() > deadline:
                await views.stop()
                logger.warning("lxcfs did not start (see %s): sandboxes see the host's /proc", log.name)
                return None
            await asyncio.sleep(0.02)
        return views

    async def stop(self) -> None:
        """Stop lxcfs; its mount goes with it (a sandbox's clones of its files answer no more)."""
        process = self._lxcfs
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        _detach(self.mountpoint)
        with contextlib.suppress(OSError):
            self.mountpoint.rmdir()


def _detach(mountpoint: Path) -> None:
    """Lazily unmount whatever is mounted on ``mountpoint`` (a killed lxcfs leaves a dead mount)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(os.fsencode(mountpoint), _MNT_DETACH)
