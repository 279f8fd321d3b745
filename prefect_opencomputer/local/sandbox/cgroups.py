"""Per-sandbox cgroups: memory, process and CPU limits, and a freezer for hibernation.

Sandbox cgroups live beneath the server's own cgroup, in an intermediate group (``prefect-opencomputer``)
that holds no processes itself, so nothing here ever moves the server or writes to a group it did not
create. The runtime puts a sandbox's first process in by writing its pid into every path of
``SandboxCgroup.procs_files``; everything that process forks stays inside.

cgroup v1 (one hierarchy per controller) and v2 (the unified hierarchy) are both handled; in v2 the
"no internal processes" rule decides where the intermediate group goes (see ``CgroupHost.discover``).
Nothing here knows of HTTP, sandbox ids or persistence.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
import re
import signal
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupError", "CgroupHost", "CgroupsUnavailable", "Limits", "SandboxCgroup"]

# Controllers a sandbox is limited by, each with a file that proves it usable; in v1 each is its own
# hierarchy (or shares one, as cpu,cpuacct often do).
V1_PROBES = {
    "memory": "memory.limit_in_bytes",
    "pids": "pids.max",
    "cpu": "cpu.cfs_quota_us",  # absent without CFS bandwidth control
    "freezer": "freezer.state",
}
# Used where the hierarchy is there and ours to write: a sandbox then sees only its own cores.
V1_CPUSET_PROBE = "cpuset.cpus"
# v2 has the freezer in its core (cgroup.freeze), so only these need delegating.
V2_CONTROLLERS = ("memory", "pids", "cpu")

CPU_PERIOD_US = 100_000
WAIT_SECONDS = 5.0
# An empty sandbox group older than this has no live machine: its server was killed outright.
ABANDONED_AFTER_SECONDS = 60.0
logger = logging.getLogger(__name__)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class CgroupError(RuntimeError):
    """A cgroup operation failed: a write refused, or a freeze or kill that did not finish in time."""


class MemoryInUse(CgroupError):
    """A memory limit below what the group's processes hold and the kernel cannot reclaim (EBUSY)."""


class CgroupsUnavailable(CgroupError):
    """Sandbox cgroups cannot be made here; the message names the controller or file that is missing."""


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use."""

    memory_bytes: int
    max_processes: int
    cpu_quota_cores: float  # 1.0 = one core's worth of time per period

    def __post_init__(self) -> None:
        if self.memory_bytes <= 0 or self.max_processes <= 0 or self.cpu_quota_cores <= 0:
            raise ValueError(f"limits must be positive: {self}")

    @property
    def cores(self) -> int:
        """Whole cores the quota is worth, at least one."""
        return max(1, math.ceil(self.cpu_quota_cores))

    @property
    def cpu_quota_us(self) -> int:
        """The CFS quota per period; the kernel refuses less than 1 ms."""
        return max(1000, round(self.cpu_quota_cores * CPU_PERIOD_US))


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """The kernel's CPU list format (``0-3,8``) as the CPU numbers it names."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return tuple(cpus)


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        failure = MemoryInUse if exc.errno == errno.EBUSY and path.name.startswith("memory.") else CgroupError
        raise failure(f"writing {value!r} to {path}: {exc.strerror}") from exc


def _wait(done: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    """Poll until done() holds; cgroup state changes (freezing, emptying) are asynchronous."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while not done():
        if time.monotonic() > deadline:
            raise CgroupError(f"{what} did not happen within {timeout:g} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _own_cgroups(proc_self_cgroup: Path) -> dict[str, str]:
    """The server's cgroup per v1 controller, and per "" for the v2 (``0::``) line."""
    paths: dict[str, str] = {}
    for line in proc_self_cgroup.read_text().splitlines():
        hierarchy_id, controllers, path = line.split(":", 2)
        if hierarchy_id == "0" and controllers == "":
            paths[""] = path
        for controller in controllers.split(","):
            if controller and not controller.startswith("name="):
                paths[controller] = path
    return paths


def _beneath(base: Path, cgroup_path: str) -> Path:
    return base / cgroup_path.lstrip("/") if cgroup_path.strip("/") else base


class CgroupHost:
    """Where this server's sandbox cgroups live and which limits they get; discovered once per server."""

    def __init__(self, version: int, group_dirs: dict[str, Path], *, swap_limited: bool) -> None:
        self.version = version
        # controller -> our intermediate group in that controller's hierarchy (all the same dir in v2)
        self.group_dirs = group_dirs
        self._swap_limited = swap_limited  # sandboxes get no swap (else the kernel has no swap accounting)
        # The cores sandboxes may be placed on (none: no cpuset here, every sandbox sees every core).
        self.cpus: tuple[int, ...] = ()
        if "cpuset" in group_dirs:
            self.cpus = parse_cpu_list(_read(group_dirs["cpuset"] / "cpuset.cpus"))
        self._next_cpu = 0

    @classmethod
    def discover(
        cls,
        *,
        root: Path = Path("/sys/fs/cgroup"),
        proc_self_cgroup: Path = Path("/proc/self/cgroup"),
        group: str = "prefect-opencomputer",
    ) -> CgroupHost:
        """Find the server's own cgroups and make the intermediate group beneath them.

        Raises CgroupsUnavailable saying which controller is missing or not writable.
        """
        if not _NAME.fullmatch(group):
            raise ValueError(f"bad cgroup group name {group!r}")
        try:
            own = _own_cgroups(proc_self_cgroup)
        except (OSError, ValueError) as exc:
            raise CgroupsUnavailable(f"cannot read {proc_self_cgroup}: {exc}") from exc
        # Only the real file describes this process; a fake tree (tests) cannot list our pid.
        check_pid = os.getpid() if proc_self_cgroup == Path("/proc/self/cgroup") else None
        if (root / "cgroup.controllers").is_file():
            return cls._discover_v2(root, own, group, check_pid)
        return cls._discover_v1(root, own, group, check_pid)

    @classmethod
    def _discover_v1(cls, root: Path, own: dict[str, str], group: str, check_pid: int | None) -> CgroupHost:
        group_dirs: dict[str, Path] = {}
        created: list[Path] = []
        try:
            for controller in V1_PROBES:
                group_dirs[controller] = cls._v1_group(root, own, controller, group, check_pid, created)
        except CgroupsUnavailable:
            for directory in created:  # leave nothing half-made behind
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise
        cpuset = cls._v1_cpuset(root, own, group, check_pid)
        if cpuset is not None:
            group_dirs["cpuset"] = cpuset
        swap_limited = (group_dirs["memory"] / "memory.memsw.limit_in_bytes").exists()
        return cls(1, group_dirs, swap_limited=swap_limited)

    @classmethod
    def _v1_cpuset(cls, root: Path, own: dict[str, str], group: str, check_pid: int | None) -> Path | None:
        """Our group in the cpuset hierarchy, given its parent's cores and memory nodes; None without one."""
        created: list[Path] = []
        try:
            directory = cls._v1_group(root, own, "cpuset", group, check_pid, created, probe=V1_CPUSET_PROBE)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not _read(directory / name):  # a new cpuset has neither: a process could not join it
                    _write(directory / name, _read(directory.parent / name))
            return directory
        except (CgroupError, OSError):
            for made in created:
                with contextlib.suppress(OSError):
                    made.rmdir()
            return None

    @classmethod
    def _v1_group(
        cls,
        root: Path,
        own: dict[str, str],
        controller: str,
        group: str,
        check_pid: int | None,
        created: list[Path],
        *,
        probe: str | None = None,
    ) -> Path:
        """Our intermediate group in one v1 hierarchy, beneath the server's cgroup there."""
        if controller not in own:
            raise CgroupsUnavailable(f"cgroup v1: no {controller} hierarchy in /proc/self/cgroup")
        mount = cls._v1_mount(root, controller)
        if mount is None:
            raise CgroupsUnavailable(f"cgroup v1: the {controller} hierarchy is not mounted under {root}")
        server_dir = _beneath(mount, own[controller])
        _check_server_is_in(server_dir, check_pid, f"cgroup v1 {controller}")
        group_dir = server_dir / group
        try:
            if not group_dir.is_dir():
                group_dir.mkdir()
                created.append(group_dir)
        except OSError as exc:
            raise CgroupsUnavailable(
                f"cgroup v1 {controller}: cannot create {group_dir}: {exc.strerror}"
            ) from exc
        proof = group_dir / (probe or V1_PROBES[controller])
        if not proof.exists():
            raise CgroupsUnavailable(f"cgroup v1 {controller}: {proof} is missing")
        return group_dir

    @staticmethod
    def _v1_mount(root: Path, controller: str) -> Path | None:
        """The hierarchy's mount: ``root/<controller>``, or a co-mounted ``root/cpu,cpuacct``."""
        direct = root / controller
        if (direct / "cgroup.procs").exists():
            return direct
        for candidate in sorted(root.glob(f"*{controller}*")):
            if controller in candidate.name.split(",") and (candidate / "cgroup.procs").exists():
                return candidate
        return None

    @classmethod
    def _discover_v2(cls, root: Path, own: dict[str, str], group: str, check_pid: int | None) -> CgroupHost:
        """Place the intermediate group where the kernel lets it delegate controllers.

        The "no internal processes" rule: a non-root cgroup that holds processes (the server's own does)
        cannot enable controllers for its children. So the group goes beneath the server's cgroup when
        that cgroup already delegates (it is the root, or someone set up its subtree_control); otherwise
        beside it, in the parent that delegates to the server's cgroup (which therefore holds no
        processes): every limit set on that parent still covers the sandboxes. The sibling is named after
        the server's cgroup so two servers under one parent never sweep each other's sandboxes.
        """
        if "" not in own:
            raise CgroupsUnavailable("cgroup v2: no 0:: line in /proc/self/cgroup")
        server_dir = _beneath(root, own[""])
        if not server_dir.is_dir():
            raise CgroupsUnavailable(f"cgroup v2: the server's cgroup {server_dir} is not under {root}")
        _check_server_is_in(server_dir, check_pid, "cgroup v2")
        needed = set(V2_CONTROLLERS)
        if needed <= set(_read_words(server_dir / "cgroup.subtree_control")):
            parent = server_dir / group
        elif server_dir != root and needed <= set(_read_words(server_dir / "cgroup.controllers")):
            if server_dir.parent == root:
                raise CgroupsUnavailable(
                    f"cgroup v2: {server_dir} holds the server and cannot delegate controllers, and a "
                    f"sibling would be a top-level cgroup; run the server in a leaf of a delegated cgroup"
                )
            parent = server_dir.parent / f"{server_dir.name}.{group}"
        else:
            missing = needed - set(_read_words(server_dir / "cgroup.controllers"))
            raise CgroupsUnavailable(
                f"cgroup v2: controllers {', '.join(sorted(missing)) or 'memory, pids, cpu'} "
                f"are not delegated to {server_dir}"
            )
        try:
            parent.mkdir(exist_ok=True)
        except OSError as exc:
            raise CgroupsUnavailable(f"cgroup v2: cannot create {parent}: {exc.strerror}") from exc
        missing = needed - set(_read_words(parent / "cgroup.controllers"))
        if missing:
            raise CgroupsUnavailable(f"cgroup v2: {parent} lacks controllers {', '.join(sorted(missing))}")
        enabled = set(_read_words(parent / "cgroup.subtree_control"))
        if not needed <= enabled:
            try:
                _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS))
            except CgroupError as exc:
                raise CgroupsUnavailable(f"cgroup v2: {exc}") from exc
        swap_limited = (parent / "memory.swap.max").exists()
        return cls(2, dict.fromkeys((*V2_CONTROLLERS, "freezer"), parent), swap_limited=swap_limited)

    @property
    def hierarchy_dirs(self) -> tuple[Path, ...]:
        """Our intermediate group in each distinct hierarchy (one in v2)."""
        return tuple(dict.fromkeys(self.group_dirs.values()))

    def describe(self) -> str:
        """One line for `local serve`: the limits in force and where the groups are."""
        memory = "memory (no swap)" if self._swap_limited else "memory (swap not limited: no swap accounting)"
        where = ", ".join(str(d) for d in self.hierarchy_dirs)
        cores = f", cores (cpuset of {len(self.cpus)})" if self.cpus else ""
        return f"cgroup v{self.version}: per-sandbox {memory}, pids, cpu quota{cores}, freezer under {where}"

    def create(self, name: str, limits: Limits) -> SandboxCgroup:
        """Make (or re-limit) a sandbox's cgroup; limits are written before any process joins.

        With a cpuset, a sandbox gets as many cores as its vCPUs (all there are, when the host has
        fewer); successive sandboxes start on successive cores, so small ones spread over the host.
        """
        cgroup = self._open(name)
        if self.cpus:
            cgroup.place_on(self.cpus, self._next_cpu)
            self._next_cpu = (self._next_cpu + limits.cores) % len(self.cpus)
        for directory in cgroup.dirs:
            try:
                directory.mkdir(exist_ok=True)
            except OSError as exc:
                raise CgroupError(f"cannot create {directory}: {exc.strerror}") from exc
        cgroup.set_limits(limits)
        return cgroup

    def _open(self, name: str) -> SandboxCgroup:
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad sandbox cgroup name {name!r}")
        return SandboxCgroup(self.version, {c: d / name for c, d in self.group_dirs.items()})

    def names(self) -> list[str]:
        """Sandbox cgroups that exist now, in any hierarchy."""
        found: set[str] = set()
        for directory in self.hierarchy_dirs:
            if directory.is_dir():
                found.update(p.name for p in directory.iterdir() if p.is_dir() and _NAME.fullmatch(p.name))
        return sorted(found)

    def sweep(self, keep: Collection[str] = ()) -> list[str]:
        """Remove sandbox cgroups left by a server that died, killing what runs in them; names removed.

        Never raises for what a sandbox left: a group that will not go is logged and left for the
        next start, which tries again.
        """
        removed = []
        for name in self.names():
            if name in keep:
                continue
            try:
                self._open(name).remove()
            except (CgroupError, OSError) as error:
                logger.warning("a leftover sandbox cgroup could not be removed yet: %s", error)
                continue
            removed.append(name)
        return removed

    def sweep_abandoned(self, prefix: str, *, min_age: float = ABANDONED_AFTER_SECONDS) -> list[Path]:
        """Remove the sandbox groups that servers killed outright left in groups beside ours.

        Only beneath our own parent, only groups named ``prefix...`` other than ours, only the
        sandbox groups in them that hold no process and have existed for ``min_age`` seconds (a
        live sandbox's group holds its helper from its first milliseconds on), and only by
        ``rmdir``, which the kernel refuses for a group in use. The servers' own groups stay: a
        live server with no sandbox has an empty one.
        """
        removed: list[Path] = []
        now = time.time()
        for directory in self.hierarchy_dirs:
            for server_group in directory.parent.glob(f"{prefix}*"):
                if server_group == directory or not server_group.is_dir():
                    continue
                for group in server_group.iterdir():
                    try:
                        if not group.is_dir() or now - group.stat().st_ctime < min_age:
                            continue
                        if _read_words(group / "cgroup.procs"):
                            continue
                        group.rmdir()
                    except OSError:
                        continue
                    removed.append(group)
        return removed

    def release(self) -> None:
        """Remove this server's own group in every hierarchy once no sandbox group is left in it.

        A group that still holds one (a sandbox of a server that keeps running) stays, untouched.
        """
        for directory in self.hierarchy_dirs:
            with contextlib.suppress(OSError):  # gone already, or still holding a sandbox's group
                directory.rmdir()


def _check_server_is_in(server_dir: Path, pid: int | None, what: str) -> None:
    """Refuse a computed place that does not hold the server (a cgroup namespace, another mount's view)."""
    if pid is None:
        return
    try:
        members = _read_words(server_dir / "cgroup.procs")
    except OSError as exc:
        raise CgroupsUnavailable(f"{what}: cannot read {server_dir}/cgroup.procs: {exc.strerror}") from exc
    if str(pid) not in members:
        raise CgroupsUnavailable(f"{what}: {server_dir} does not hold this process, so it is not our cgroup")


def _read_words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


class SandboxCgroup:
    """One sandbox's cgroup (a directory per hierarchy in v1, one directory in v2)."""

    def __init__(self, version: int, dirs_by_controller: dict[str, Path]) -> None:
        self.version = version
        self._by_controller = dirs_by_controller
        self.dirs = tuple(dict.fromkeys(dirs_by_controller.values()))
        self.procs_files = tuple(d / "cgroup.procs" for d in self.dirs)
        self._host_cpus: tuple[int, ...] = ()
        self._first_cpu = 0

    def place_on(self, host_cpus: tuple[int, ...], first: int) -> None:
        """The cores this sandbox's cpuset takes its share from, starting at index ``first``."""
        self._host_cpus, self._first_cpu = host_cpus, first

    def cpus_for(self, limits: Limits) -> tuple[int, ...]:
        """The cores the sandbox gets: one per vCPU, as many as there are."""
        count = min(limits.cores, len(self._host_cpus))
        return tuple(
            sorted(self._host_cpus[(self._first_cpu + i) % len(self._host_cpus)] for i in range(count))
        )

    def __repr__(self) -> str:
        return f"SandboxCgroup(v{self.version}, {self.dirs[0].name!r})"

    def _dir(self, controller: str) -> Path:
        return self._by_controller[controller]

    def set_limits(self, limits: Limits) -> None:
        """Write memory, process and CPU limits (again, if the group exists)."""
        if self.version == 1:
            self._set_memory_v1(limits.memory_bytes)
            _write(self._dir("pids") / "pids.max", str(limits.max_processes))
            if "cpuset" in self._by_controller and self._host_cpus:
                cpuset = self._dir("cpuset")
                # The parent balances load over these cores anyway; a group of its own that does too
                # would make the kernel rebuild its scheduling domains at every change and removal.
                _write(cpuset / "cpuset.sched_load_balance", "0")
                _write(cpuset / "cpuset.mems", _read(cpuset.parent / "cpuset.mems"))
                _write(cpuset / "cpuset.cpus", ",".join(str(cpu) for cpu in self.cpus_for(limits)))
            cpu = self._dir("cpu")
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(limits.cpu_quota_us))
        else:
            directory = self._dir("memory")
            _write(directory / "memory.max", str(limits.memory_bytes))
            if (directory / "memory.swap.max").exists():
                _write(directory / "memory.swap.max", "0")
            _write(directory / "pids.max", str(limits.max_processes))
            _write(directory / "cpu.max", f"{limits.cpu_quota_us} {CPU_PERIOD_US}")

    def _set_memory_v1(self, memory_bytes: int) -> None:
        """memory.memsw (memory+swap) must stay >= memory.limit: raise the limit first, lower memsw first."""
        directory = self._dir("memory")
        limit = directory / "memory.limit_in_bytes"
        memsw = directory / "memory.memsw.limit_in_bytes"
        if not memsw.exists():
            _write(limit, str(memory_bytes))
            return
        if memory_bytes <= int(_read(memsw)):
            _write(limit, str(memory_bytes))
            _write(memsw, str(memory_bytes))
        else:
            _write(memsw, str(memory_bytes))
            _write(limit, str(memory_bytes))

    def add(self, pid: int) -> None:
        """Move a process (that the runtime started for this sandbox) into every hierarchy."""
        for procs in self.procs_files:
            _write(procs, str(pid))

    def pids(self) -> list[int]:
        """Processes in the group and any group made below it, in any hierarchy; none once removed."""
        found: set[int] = set()
        for directory in self.dirs:
            for group in _groups_below(directory):
                with contextlib.suppress(FileNotFoundError):
                    found.update(int(word) for word in (group / "cgroup.procs").read_text().split())
        return sorted(found)

    def freeze(self) -> None:
        """Stop every process and wait until all are stopped; on timeout thaw again and raise."""
        if self.version == 1:
            _write(self._dir("freezer") / "freezer.state", "FROZEN")
        else:
            _write(self._dir("freezer") / "cgroup.freeze", "1")
        try:
            _wait(self._completely_frozen, f"freezing {self.dirs[0]}")
        except CgroupError:
            self.thaw()
            raise

    def _completely_frozen(self) -> bool:
        """v1 reads FREEZING, v2 reports frozen 0, until every process has stopped.

        A v1 freeze is tried once per write: a process the freezer missed (one being forked as it
        ran) keeps the group FREEZING until FROZEN is written again, so each poll asks again.
        """
        if self.version == 1:
            state = self._dir("freezer") / "freezer.state"
            if _read(state) == "FROZEN":
                return True
            _write(state, "FROZEN")
            return False
        return self._event("frozen") == "1"

    def thaw(self) -> None:
        """Let every process run again."""
        if self.version == 1:
            _write(self._dir("freezer") / "freezer.state", "THAWED")
        else:
            _write(self._dir("freezer") / "cgroup.freeze", "0")

    def frozen(self) -> bool:
        """Whether a freeze is in force (in v1 also a half-done one, FREEZING)."""
        try:
            if self.version == 1:
                return _read(self._dir("freezer") / "freezer.state") != "THAWED"
            return _read(self._dir("freezer") / "cgroup.freeze") == "1"
        except FileNotFoundError:
            return False  # a half-swept leftover without a freezer group

    def _event(self, key: str) -> str:
        for line in (self._dir("freezer") / "cgroup.events").read_text().splitlines():
            field, _, value = line.partition(" ")
            if field == key:
                return value.strip()
        return ""

    def memory_usage(self) -> int:
        """Bytes of memory charged to the group now."""
        directory = self._dir("memory")
        name = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        return int(_read(directory / name))

    def memory_sample(self) -> tuple[int, int]:
        """Bytes charged now, and the most charged since the last sample (v1 resets its high mark).

        cgroup v2 keeps ``memory.peak`` since the group was made: there the peak is the group's.
        """
        directory = self._dir("memory")
        if self.version == 1:
            current = int(_read(directory / "memory.usage_in_bytes"))
            peak_file = directory / "memory.max_usage_in_bytes"
            peak = int(_read(peak_file))
            _write(peak_file, "0")
            return current, max(current, peak)
        current = int(_read(directory / "memory.current"))
        peak_file = directory / "memory.peak"
        peak = int(_read(peak_file)) if peak_file.exists() else current
        return current, max(current, peak)

    def kill_all(self) -> None:
        """SIGKILL every process, frozen ones too, and wait until the group is empty."""
        kill_file = self.dirs[0] / "cgroup.kill"
        deadline = time.monotonic() + WAIT_SECONDS
        pause = 0.001
        while pids := self.pids():
            if self.version == 2 and kill_file.exists():
                _write(kill_file, "1")  # kills frozen processes too, and any forked meanwhile
            else:
                _kill_members(pids, self.pids)
            # v1 frozen processes die only once thawed; killed first, they cannot fork when they wake.
            if self.frozen():
                self.thaw()
            if time.monotonic() > deadline:
                raise CgroupError(f"{self.dirs[0]} still has processes {pids} after {WAIT_SECONDS:g} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def remove(self) -> None:
        """Kill everything inside, then remove the group from every hierarchy; idempotent."""
        if not any(d.is_dir() for d in self.dirs):
            return
        self.kill_all()
        for directory in self.dirs:
            # Groups the sandbox's root made below its own go first: rmdir refuses a parent.
            for group in _groups_below(directory):
                _wait(functools.partial(_rmdir, group), f"removing {group}")


def _groups_below(directory: Path) -> list[Path]:
    """``directory`` and every cgroup below it, deepest first (cgroupfs holds no links to follow)."""
    found: list[Path] = []
    for parent, children, _ in os.walk(directory, topdown=False):
        found.extend(Path(parent) / child for child in children)
    if directory.is_dir():
        found.append(directory)
    return found


def _rmdir(directory: Path) -> bool:
    """rmdir; False while the kernel still counts exiting processes (EBUSY)."""
    try:
        directory.rmdir()
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return False
        raise CgroupError(f"cannot remove {directory}: {exc.strerror}") from exc
    return True


def _kill_members(pids: list[int], members: Callable[[], list[int]]) -> None:
    """SIGKILL pids still in the group, through pidfds so a reused pid is never hit.

    A pidfd pins the process; if its pid is still listed in the group after the pidfd was opened, that
    very process is a member.
    """
    pidfds: dict[int, int] = {}
    try:
        for pid in pids:
            try:
                pidfds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
        still = set(members())
        for pid, pidfd in pidfds.items():
            if pid in still:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    continue
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)
