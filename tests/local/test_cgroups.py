"""Per-sandbox cgroups against this machine's real hierarchy, and v1/v2 placement on fake trees."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prefect_opencomputer.local.sandbox.cgroups import (
    CgroupHost,
    CgroupsUnavailable,
    Limits,
    SandboxCgroup,
)

MiB = 1 << 20
LIMITS = Limits(memory_bytes=64 * MiB, max_processes=10, cpu_quota_cores=0.5)


def _discover(group: str) -> CgroupHost:
    if os.geteuid() != 0:
        pytest.skip("cgroups need root")
    try:
        return CgroupHost.discover(group=group)
    except CgroupsUnavailable as exc:
        pytest.skip(f"no usable cgroups here: {exc}")


@pytest.fixture
def host() -> Iterator[CgroupHost]:
    """A test-only intermediate group beneath this process's cgroups, removed with all it holds."""
    host = _discover(f"prefect-opencomputer-test-{secrets.token_hex(4)}")
    yield host
    host.sweep()
    for directory in host.hierarchy_dirs:
        directory.rmdir()


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; reaped at the end whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)


def _spawn_inside(
    cgroup: SandboxCgroup, children: list[subprocess.Popen[bytes]], *argv: str
) -> subprocess.Popen[bytes]:
    """Start argv already inside the cgroup, as the runtime's boot helper does: own pid first, then exec."""
    script = 'for f in $PROCS; do echo $$ > "$f"; done; exec "$@"'
    procs = " ".join(str(p) for p in cgroup.procs_files)
    child = subprocess.Popen(
        ["sh", "-c", script, "sh", *argv],
        env={**os.environ, "PROCS": procs},
        stdout=subprocess.PIPE,
    )
    children.append(child)
    return child


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_limits_are_written_before_a_process_joins_and_added_pid_is_listed(
    host: CgroupHost, children: list[subprocess.Popen[bytes]]
) -> None:
    cgroup = host.create("sb-limits", LIMITS)
    memory = host.group_dirs["memory"] / "sb-limits"
    assert (memory / "memory.limit_in_bytes").read_text().strip() == str(64 * MiB)
    if (memory / "memory.memsw.limit_in_bytes").exists():
        assert (memory / "memory.memsw.limit_in_bytes").read_text().strip() == str(64 * MiB)
    assert (host.group_dirs["pids"] / "sb-limits" / "pids.max").read_text().strip() == "10"
    assert (host.group_dirs["cpu"] / "sb-limits" / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert len(cgroup.procs_files) == len(host.hierarchy_dirs)

    sleeper = subprocess.Popen(["sleep", "30"])
    children.append(sleeper)
    cgroup.add(sleeper.pid)

    assert cgroup.pids() == [sleeper.pid]
    membership = Path(f"/proc/{sleeper.pid}/cgroup").read_text()
    for controller in ("memory", "pids", "cpu", "freezer"):
        assert any(
            controller in line.split(":")[1].split(",") and line.endswith("/sb-limits")
            for line in membership.splitlines()
        ), membership
    assert cgroup.memory_usage() >= 0


def test_create_again_changes_limits_both_ways(host: CgroupHost) -> None:
    host.create("sb-relimit", LIMITS)
    memory = host.group_dirs["memory"] / "sb-relimit"
    for size in (256 * MiB, 32 * MiB):
        host.create("sb-relimit", Limits(size, 20, 1.5))
        assert (memory / "memory.limit_in_bytes").read_text().strip() == str(size)
        if (memory / "memory.memsw.limit_in_bytes").exists():
            assert (memory / "memory.memsw.limit_in_bytes").read_text().strip() == str(size)
    assert (host.group_dirs["cpu"] / "sb-relimit" / "cpu.cfs_quota_us").read_text().strip() == "150000"


def test_child_allocating_past_memory_limit_is_oom_killed(
    host: CgroupHost, children: list[subprocess.Popen[bytes]]
) -> None:
    cgroup = host.create("sb-memory", LIMITS)
    hog = _spawn_inside(
        cgroup, children, sys.executable, "-c", "chunks = [b'x' * (1 << 20) for _ in range(256)]"
    )
    assert hog.wait(timeout=60) == -signal.SIGKILL
    oom_control = host.group_dirs["memory"] / "sb-memory" / "memory.oom_control"
    if oom_control.exists():  # v1 counts the kills its OOM killer made in this group
        assert "oom_kill 1" in oom_control.read_text()


def test_forks_past_the_process_cap_fail_with_eagain(
    host: CgroupHost, children: list[subprocess.Popen[bytes]]
) -> None:
    cgroup = host.create("sb-pids", LIMITS)
    forker = _spawn_inside(
        cgroup,
        children,
        sys.executable,
        "-c",
        "import errno, subprocess\n"
        "started, failed = 0, 0\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        subprocess.Popen(['sleep', '30'], stdout=subprocess.DEVNULL)\n"
        "        started += 1\n"
        "    except OSError as exc:\n"
        "        assert exc.errno == errno.EAGAIN, exc\n"
        "        failed += 1\n"
        "print(started, failed)\n",
    )
    out, _ = forker.communicate(timeout=60)
    started, failed = (int(word) for word in out.split())
    assert forker.returncode == 0
    assert started <= 9  # the forker itself is one of the ten
    assert failed == 20 - started


def test_frozen_process_stops_advancing_and_resumes_after_thaw(
    host: CgroupHost, children: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    cgroup = host.create("sb-freeze", LIMITS)
    counter = tmp_path / "counter"
    _spawn_inside(
        cgroup,
        children,
        sys.executable,
        "-c",
        "import sys, time\ni = 0\nwhile True:\n"
        "    i += 1\n    open(sys.argv[1], 'w').write(str(i))\n    time.sleep(0.01)\n",
        str(counter),
    )
    assert _wait_for(lambda: counter.exists() and counter.read_text() not in ("", "1"))

    cgroup.freeze()
    assert cgroup.frozen()
    before = counter.read_text()
    time.sleep(0.3)
    assert counter.read_text() == before

    cgroup.thaw()
    assert not cgroup.frozen()
    assert _wait_for(lambda: counter.read_text() not in ("", before))


def test_remove_kills_frozen_processes_and_leaves_no_directory(
    host: CgroupHost, children: list[subprocess.Popen[bytes]]
) -> None:
    cgroup = host.create("sb-remove", LIMITS)
    shell = _spawn_inside(cgroup, children, "sh", "-c", "sleep 30 & echo $!; wait")
    assert shell.stdout is not None
    background = int(shell.stdout.readline())
    assert _wait_for(lambda: len(cgroup.pids()) == 2)
    cgroup.freeze()

    cgroup.remove()

    assert shell.wait(timeout=10) == -signal.SIGKILL
    assert not Path(f"/proc/{background}").exists() or "Z" in _state(background)
    assert not any(d.exists() for d in cgroup.dirs)
    assert cgroup.pids() == []
    cgroup.remove()  # again: nothing to do


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_sweep_removes_leftover_groups_but_keeps_the_named_ones(
    host: CgroupHost, children: list[subprocess.Popen[bytes]]
) -> None:
    leftover = host.create("sb-leftover", LIMITS)
    host.create("sb-kept", LIMITS)
    orphan = _spawn_inside(leftover, children, "sleep", "30")
    assert _wait_for(lambda: leftover.pids() == [orphan.pid])

    restarted = CgroupHost.discover(group=host.hierarchy_dirs[0].name)  # a new server, same place
    assert restarted.sweep(keep={"sb-kept"}) == ["sb-leftover"]

    assert orphan.wait(timeout=10) == -signal.SIGKILL
    assert not any(d.exists() for d in leftover.dirs)
    assert restarted.names() == ["sb-kept"]


def test_describe_says_which_limits_are_in_force_and_where(host: CgroupHost) -> None:
    line = host.describe()
    assert "\n" not in line
    for word in ("memory", "pids", "cpu", "freezer", f"v{host.version}"):
        assert word in line
    for directory in host.hierarchy_dirs:
        assert str(directory) in line


# Fake trees: where groups go and what gets written, for layouts this machine does not have.


def _files(directory: Path, **contents: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        (directory / name.replace("__", ".")).write_text(text)


def _proc_cgroup(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    return path


def test_v1_groups_go_beneath_the_servers_cgroup_in_each_hierarchy_including_comounted_cpu(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cgroup"
    for mount in ("memory", "pids", "cpu,cpuacct", "freezer"):
        _files(root / mount, cgroup__procs="")
    _files(
        root / "memory/jobs/42/po", memory__limit_in_bytes="0", memory__memsw__limit_in_bytes="99999999999"
    )
    _files(root / "pids/po", pids__max="max")
    _files(root / "cpu,cpuacct/po", cpu__cfs_quota_us="-1")
    _files(root / "freezer/po", freezer__state="THAWED")
    proc = _proc_cgroup(
        tmp_path, "5:freezer:/\n4:memory:/jobs/42\n3:pids:/\n2:cpu,cpuacct:/\n1:name=systemd:/x\n0::/\n"
    )

    host = CgroupHost.discover(root=root, proc_self_cgroup=proc, group="po")
    cgroup = host.create("sb", Limits(64 * MiB, 10, 2.0))

    assert host.version == 1
    assert cgroup.procs_files == (
        root / "memory/jobs/42/po/sb/cgroup.procs",
        root / "pids/po/sb/cgroup.procs",
        root / "cpu,cpuacct/po/sb/cgroup.procs",
        root / "freezer/po/sb/cgroup.procs",
    )
    assert (root / "cpu,cpuacct/po/sb/cpu.cfs_quota_us").read_text() == "200000"
    assert (root / "cpu,cpuacct/po/sb/cpu.cfs_period_us").read_text() == "100000"
    assert (root / "pids/po/sb/pids.max").read_text() == "10"
    assert "memory (no swap)" in host.describe()


def test_v1_reports_the_missing_controller(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    for mount in ("memory", "pids", "cpu", "freezer"):
        _files(root / mount, cgroup__procs="")
    _files(root / "memory/po", memory__limit_in_bytes="0")
    _files(root / "pids/po", pids__max="max")
    proc = _proc_cgroup(tmp_path, "4:memory:/\n3:pids:/\n2:cpu:/\n1:freezer:/\n")

    with pytest.raises(CgroupsUnavailable, match=r"cpu: .*cpu\.cfs_quota_us is missing"):
        CgroupHost.discover(root=root, proc_self_cgroup=proc, group="po")
    assert not (root / "cpu/po").exists()  # what discovery made, it took back


def _v2_root(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    _files(root, cgroup__controllers="cpuset cpu io memory pids", cgroup__subtree_control="cpu memory pids")
    return root


def test_v2_group_goes_beneath_a_server_cgroup_that_already_delegates(tmp_path: Path) -> None:
    root = _v2_root(tmp_path)
    _files(
        root / "po",
        cgroup__controllers="cpu memory pids",
        cgroup__subtree_control="",
        memory__swap__max="max",
    )
    proc = _proc_cgroup(tmp_path, "0::/\n")

    host = CgroupHost.discover(root=root, proc_self_cgroup=proc, group="po")
    _files(root / "po/sb", memory__swap__max="max")  # the kernel makes it with the group
    cgroup = host.create("sb", Limits(64 * MiB, 10, 1.5))

    assert host.version == 2
    assert (root / "po/sb/memory.swap.max").read_text() == "0"
    assert host.hierarchy_dirs == (root / "po",)
    assert (root / "po/cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert cgroup.procs_files == (root / "po/sb/cgroup.procs",)
    assert (root / "po/sb/memory.max").read_text() == str(64 * MiB)
    assert (root / "po/sb/pids.max").read_text() == "10"
    assert (root / "po/sb/cpu.max").read_text() == "150000 100000"
    assert host.describe().startswith("cgroup v2: per-sandbox memory (no swap)")


def test_v2_group_goes_beside_a_server_cgroup_that_holds_the_server(tmp_path: Path) -> None:
    root = _v2_root(tmp_path)
    _files(root / "svc", cgroup__controllers="cpu memory pids", cgroup__subtree_control="cpu memory pids")
    _files(root / "svc/server", cgroup__controllers="cpu memory pids", cgroup__subtree_control="")
    _files(root / "svc/server.po", cgroup__controllers="cpu memory pids", cgroup__subtree_control="")
    proc = _proc_cgroup(tmp_path, "0::/svc/server\n")

    host = CgroupHost.discover(root=root, proc_self_cgroup=proc, group="po")
    cgroup = host.create("sb", LIMITS)
    _files(root / "svc/server.po/sb", cgroup__events="populated 0\nfrozen 1\n")
    cgroup.freeze()

    assert host.hierarchy_dirs == (root / "svc/server.po",)
    assert (root / "svc/server/cgroup.subtree_control").read_text() == ""  # the server's own: untouched
    assert (root / "svc/server.po/sb/cgroup.freeze").read_text() == "1"
    assert cgroup.frozen()


def test_v2_reports_controllers_not_delegated_to_the_server(tmp_path: Path) -> None:
    root = _v2_root(tmp_path)
    _files(root / "svc", cgroup__controllers="cpu memory pids", cgroup__subtree_control="cpu")
    _files(root / "svc/server", cgroup__controllers="cpu", cgroup__subtree_control="")
    proc = _proc_cgroup(tmp_path, "0::/svc/server\n")

    with pytest.raises(CgroupsUnavailable, match="memory, pids are not delegated"):
        CgroupHost.discover(root=root, proc_self_cgroup=proc, group="po")


def test_sweep_abandoned_removes_old_empty_sandbox_groups_beside_ours_and_nothing_else() -> None:
    ours = CgroupHost.discover(group=f"prefect-opencomputer-test-ours-{os.getpid()}")
    other = CgroupHost.discover(group=f"prefect-opencomputer-test-gone-{os.getpid()}")
    busy_host = CgroupHost.discover(group=f"prefect-opencomputer-test-busy-{os.getpid()}")
    left = other.create("sb-left0001", LIMITS)  # as a SIGKILLed server leaves one: empty
    busy = busy_host.create("sb-busy0001", LIMITS)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        busy.add(sleeper.pid)
        assert ours.sweep_abandoned("prefect-opencomputer-test-", min_age=3600) == []  # too young
        time.sleep(0.05)
        removed = ours.sweep_abandoned("prefect-opencomputer-test-", min_age=0)
        assert all(not directory.exists() for directory in left.dirs)
        assert all(directory.exists() for directory in other.hierarchy_dirs), "servers' own groups stay"
        assert all(directory.exists() for directory in busy.dirs), "a group in use stays"
        assert all(directory.exists() for directory in ours.hierarchy_dirs), "our own group stays"
        assert removed
    finally:
        sleeper.kill()
        sleeper.wait()
        busy.remove()
        for host in (busy_host, ours, other):
            host.release()
