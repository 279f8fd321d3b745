"""A sandbox sees its own size in /proc, as a VM of that size would: lxcfs's views over its /proc files.

JVMs, thread pools, build tools and ``free`` size themselves by ``/proc/meminfo``, ``/proc/cpuinfo``
and ``/proc/stat`` (glibc's CPU count reads it when there is no ``/sys``, as in a sandbox). The kernel
shows the host there, so the server runs one lxcfs (Debian's, as LXC and Incus use it): a FUSE file
system whose files answer, for the process that reads them, from that process's own cgroups (memory
limit, cpuset and CPU quota, usage, uptime, load average). Each booted sandbox gets them mounted over
its own /proc files. Where lxcfs is not installed, sandboxes see the host's numbers, as before.

The host's disks are nobody's business inside: ``/proc/partitions`` and ``/proc/diskstats`` would list
every sandbox's disk (a loop device each) and its I/O as it happens, a side channel on what the other
sandboxes do. lxcfs has no partitions view, and its diskstats needs blkio statistics this kernel does
not keep (it then shows the host's), so both are static views: the header of an empty table, as a
machine with no block device shows (a sandbox has none in its /dev either: its disk is mounted for it).

The mounts are made by a small process of the server's (host root, started with it) that takes the
views while in the host's mount namespace, enters the sandbox's, and moves them over ``/proc/<file>``
there, before any code of the sandbox runs. Root inside may unmount them again: they are information, not a
limit (the limits are the cgroups').
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from prefect_opencomputer.local.sandbox import processes

logger = logging.getLogger(__name__)

# The /proc files lxcfs answers per cgroup (loadavg from a thread of its own that samples each group).
VIEWS = ("cpuinfo", "meminfo", "stat", "uptime", "swaps", "loadavg")
# The /proc files every sandbox sees as they are here: no block device.
STATIC_VIEWS = {"partitions": "major minor  #blocks  name\n\n", "diskstats": ""}
_START_SECONDS = 10.0
_MNT_DETACH = 2

# A small process of the server's, started with it: for each sandbox pid it reads, a fork of it takes
# the views in the host's mount namespace, enters the sandbox's and moves them over its /proc files
# (setns needs a single-threaded process, which the server is not; a fork is ~1 ms, an interpreter 30).
_MOUNTER = """
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_EMPTY_PATH, OPEN_TREE_CLONE, MOVE_MOUNT_F_EMPTY_PATH, CLONE_NEWNS = -100, 0x1000, 1, 4, 0x20000
FSCONFIG_CMD_CREATE, MOUNT_ATTR_RDONLY_NOSUID_NODEV_NOEXEC = 6, 0xF
asked = json.loads(sys.stdin.readline())  # {"lxcfs": [view paths], "static": {name: text}}

def check(result, what):
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")
    return result


# Looked up once: each sandbox's copies are cloned from these, with no round trip through lxcfs.
views = [(os.path.basename(path), os.open(path, os.O_PATH | os.O_CLOEXEC)) for path in asked["lxcfs"]]
# The static views live on a tmpfs attached nowhere: a sandbox's mount table shows no host path for them.
tmpfs = check(libc.syscall(430, b"tmpfs", 1), "tmpfs")
check(libc.syscall(431, tmpfs, FSCONFIG_CMD_CREATE, None, None, 0), "tmpfs")
static = check(libc.syscall(432, tmpfs, 1, 0), "tmpfs")
for name, text in asked["static"].items():
    written = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o444, dir_fd=static)
    os.write(written, text.encode())
    os.close(written)
    views.append((name, os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=static)))
# Written, then read-only for good (struct mount_attr: attr_set, attr_clr, propagation, userns_fd).
attributes = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY_NOSUID_NODEV_NOEXEC, 0, 0, 0)
check(libc.syscall(442, static, b"", AT_EMPTY_PATH, ctypes.byref(attributes), 32), "read-only views")

def mount_views(pid):
    trees = []
    for name, view in views:
        clone = libc.syscall(428, view, b"", OPEN_TREE_CLONE | os.O_CLOEXEC | AT_EMPTY_PATH)
        trees.append((name, check(clone, name)))
    namespace = check(os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC), "namespace")
    check(libc.setns(namespace, CLONE_NEWNS), "enter the sandbox's mounts")
    for name, tree in trees:
        target = f"/proc/{name}".encode()
        check(libc.syscall(429, tree, b"", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH), name)

for line in sys.stdin:
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        try:
            mount_views(int(line))
            os.write(write_end, b"ok")
        except Exception as error:
            os.write(write_end, str(error).encode()[:500])
        os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 600).decode(errors="replace") or "the mounter died"
    os.close(read_end)
    os.waitpid(child, 0)
    sys.stdout.write(answer.replace("\\n", " ") + "\\n")
    sys.stdout.flush()
"""


class ProcViews:
    """One lxcfs for the server, mounted on ``mountpoint``, and the way into each sandbox's /proc."""

    def __init__(self, mountpoint: Path, lxcfs: processes.ChildProcess) -> None:
        self.mountpoint = mountpoint
        self._lxcfs = lxcfs
        self._mounter: processes.ChildProcess | None = None
        # The mounter answers in the order it was asked: one future per request sent, oldest first.
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._answers: asyncio.Task[None] | None = None

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
        asked = {"lxcfs": [str(mountpoint / "proc" / name) for name in VIEWS], "static": STATIC_VIEWS}
        views._mounter = await processes.spawn(
            [sys.executable, "-I", "-S", "-c", _MOUNTER], stdin=True, stderr=False
        )
        assert views._mounter.stdin is not None
        views._mounter.stdin.write(f"{json.dumps(asked)}\n".encode())  # not on its command line, as above
        views._answers = asyncio.create_task(views._read_answers())
        return views

    def attach(self, init_pid: int) -> asyncio.Future[None]:
        """Start mounting the views over the /proc files of the sandbox whose pid 1 is ``init_pid``.

        The request is on its way when this returns (the mounter works while the caller goes on);
        the future says when the views are there, or raises OSError saying why they are not.
        """
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        mounter = self._mounter
        if mounter is None or mounter.stdin is None or self._answers is None or self._answers.done():
            answer.set_exception(OSError("the /proc views are stopped"))
            return answer
        mounter.stdin.write(f"{init_pid}\n".encode())
        self._waiting.append(answer)
        return answer

    async def _read_answers(self) -> None:
        assert self._mounter is not None and self._mounter.stdout is not None
        try:
            while line := await self._mounter.stdout.readline():
                answer = line.decode(errors="replace").strip()
                if self._waiting:
                    waiting = self._waiting.popleft()
                    if waiting.done():
                        continue
                    if answer == "ok":
                        waiting.set_result(None)
                    else:
                        waiting.set_exception(OSError(f"mounting the /proc views failed: {answer}"))
        finally:
            while self._waiting:
                waiting = self._waiting.popleft()
                if not waiting.done():
                    waiting.set_exception(OSError("the /proc views stopped"))

    async def stop(self) -> None:
        """Stop the mounter and lxcfs; lxcfs's mount goes with it."""
        if self._answers is not None:
            self._answers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._answers
        for process in (self._mounter, self._lxcfs):
            if process is None or process.returncode is not None:
                continue
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        self._mounter = None
        _detach(self.mountpoint)
        with contextlib.suppress(OSError):
            self.mountpoint.rmdir()


def _detach(mountpoint: Path) -> None:
    """Lazily unmount whatever is mounted on ``mountpoint`` (a killed lxcfs leaves a dead mount)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(os.fsencode(mountpoint), _MNT_DETACH)
