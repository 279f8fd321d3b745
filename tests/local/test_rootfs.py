"""Template root filesystems: what a sandbox finds in its lower layer, checked on the built tree.

Nothing from the tree is run here: every assertion reads files, owners and modes from the host.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_opencomputer.local.sandbox.ids import HOST_ID_BASE, ID_COUNT, ROOT_OWNER, SANDBOX_OWNER, host_id
from prefect_opencomputer.local.sandbox.rootfs import (
    TEMPLATES,
    RootfsBuildError,
    UnknownTemplate,
    _remove_tree,
    cache_dir,
    ensure_rootfs,
    host_apt_sources,
    template_recipe,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="building a root filesystem needs root")


@pytest.fixture(scope="module")
async def built() -> tuple[Path, Path, list[str], list[str]]:
    """The default template, asked for twice at once: a cold cache builds it exactly once."""
    first: list[str] = []
    second: list[str] = []

    def printing(lines: list[str]) -> Callable[[str], None]:
        def show(line: str) -> None:
            lines.append(line)
            print(line)

        return show

    one, two = await asyncio.gather(
        ensure_rootfs("default", progress=printing(first)),
        ensure_rootfs("default", progress=printing(second)),
    )
    return one, two, first, second


@pytest.fixture(scope="module")
def tree(built: tuple[Path, Path, list[str], list[str]]) -> Path:
    return built[0]


def test_every_hosted_template_name_has_a_recipe() -> None:
    assert {"base", "default", "ubuntu", "python", "node"} <= set(TEMPLATES)
    assert "sudo" in template_recipe("python").packages


async def test_unknown_template_raises_unknown_template() -> None:
    with pytest.raises(UnknownTemplate, match="no-such-template"):
        template_recipe("no-such-template")
    with pytest.raises(ValueError):
        await ensure_rootfs("no-such-template")


def test_host_sources_keep_debian_suites_and_skip_third_party(tmp_path: Path) -> None:
    (tmp_path / "apt" / "sources.list.d").mkdir(parents=True)
    (tmp_path / "os-release").write_text('VERSION_CODENAME="bookworm"\n')
    (tmp_path / "apt" / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\n"
        "Suites: bookworm-security\nComponents: main contrib\n"
    )
    (tmp_path / "apt" / "sources.list.d" / "vendor.list").write_text(
        "deb [signed-by=/k.gpg] https://vendor.example/repo nodistro main\n"
    )
    lines = [source.line() for source in host_apt_sources(tmp_path)]
    assert lines == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main contrib",
    ]


def test_cleanup_refuses_to_delete_outside_the_cache(tmp_path: Path) -> None:
    victim = tmp_path / "precious"
    victim.mkdir()
    with pytest.raises(RootfsBuildError, match="refusing"):
        _remove_tree(victim, tmp_path / "cache")
    assert victim.is_dir()


def test_build_rootfs_command_names_the_known_templates_for_an_unknown_one() -> None:
    command = [sys.executable, "-m", "prefect_opencomputer.cli", "local", "build-rootfs", "--template=nope"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "unknown template 'nope'" in done.stderr and "default" in done.stderr


def test_cache_dir_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_OPENCOMPUTER_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700


@pytest.mark.slow
@needs_root
def test_parallel_callers_share_one_build(built: tuple[Path, Path, list[str], list[str]]) -> None:
    one, two, first, second = built
    assert one == two
    building = [line for line in first + second if line.startswith("building root filesystem")]
    assert len(building) <= 1


@pytest.mark.slow
@needs_root
async def test_cached_lookup_returns_the_same_tree(tree: Path) -> None:
    lines: list[str] = []
    assert await ensure_rootfs("default", progress=lines.append) == tree
    assert lines == []
    assert not list(tree.parent.glob(".staging-*"))


@pytest.mark.slow
@needs_root
def test_tree_is_owned_by_the_sandbox_id_range_with_no_devices(tree: Path) -> None:
    outside, devices = [], []
    for directory, dirnames, filenames in os.walk(tree):
        for name in (*dirnames, *filenames):
            info = os.lstat(os.path.join(directory, name))
            if not all(HOST_ID_BASE <= i < HOST_ID_BASE + ID_COUNT for i in (info.st_uid, info.st_gid)):
                outside.append(os.path.join(directory, name))
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
                devices.append(os.path.join(directory, name))
    assert outside == []
    assert devices == []
    assert (tree.stat().st_uid, tree.stat().st_gid) == ROOT_OWNER


@pytest.mark.slow
@needs_root
def test_sudo_stays_setuid_root_inside(tree: Path) -> None:
    sudo = (tree / "usr/bin/sudo").stat()
    assert sudo.st_mode & stat.S_ISUID
    assert (sudo.st_uid, sudo.st_gid) == ROOT_OWNER


@pytest.mark.slow
@needs_root
def test_ping_keeps_its_capability_as_a_namespaced_one(tree: Path) -> None:
    value = os.getxattr(tree / "usr/bin/ping", "security.capability")
    assert value[3] == 0x03  # vfs_cap_data revision 3: carries the root uid it holds for
    assert int.from_bytes(value[20:24], "little") == host_id(0)


@pytest.mark.slow
@needs_root
def test_sandbox_user_has_passwordless_sudo_and_its_home(tree: Path) -> None:
    passwd = (tree / "etc/passwd").read_text().splitlines()
    assert "sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/bash" in passwd
    assert any(line.startswith("root:x:0:0:") and ":/root:" in line for line in passwd)
    sudo_group = next(
        line for line in (tree / "etc/group").read_text().splitlines() if line.startswith("sudo:")
    )
    assert "sandbox" in sudo_group.split(":")[3].split(",")
    assert any(line.startswith("sandbox:") for line in (tree / "etc/shadow").read_text().splitlines())
    sudoers = tree / "etc/sudoers.d/sandbox"
    assert sudoers.read_text() == "sandbox ALL=(ALL:ALL) NOPASSWD:ALL\n"
    assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    assert (sudoers.stat().st_uid, sudoers.stat().st_gid) == ROOT_OWNER
    home = (tree / "home/sandbox").stat()
    assert (home.st_uid, home.st_gid) == SANDBOX_OWNER
    assert (tree / "home/sandbox/.bashrc").is_file()
    assert os.readlink(tree / "workspace") == "/home/sandbox"


@pytest.mark.slow
@needs_root
def test_pip_installs_are_not_refused_by_pep_668(tree: Path) -> None:
    assert list(tree.glob("usr/lib/python3*/EXTERNALLY-MANAGED")) == []
    assert (tree / "usr/lib/python3/dist-packages/pip").is_dir()


@pytest.mark.slow
@needs_root
def test_hosted_tools_are_on_the_path(tree: Path) -> None:
    for tool in ("python3", "python", "pip", "git", "git-lfs", "gcc", "make", "cmake", "curl", "jq", "sudo"):
        assert (tree / "usr/bin" / tool).exists(), tool
    for tool in ("node", "npm", "npx"):
        assert (tree / "usr/local/bin" / tool).resolve().is_file(), tool
    assert os.readlink(tree / "usr/bin/python") == "python3"


@pytest.mark.slow
@needs_root
def test_node_is_22_with_its_npm(tree: Path) -> None:
    header = (tree / "usr/local/include/node/node_version.h").read_text()
    assert re.search(r"#define NODE_MAJOR_VERSION 22\b", header)
    npm = json.loads((tree / "usr/local/lib/node_modules/npm/package.json").read_text())
    assert npm["version"].startswith("10.")


@pytest.mark.slow
@needs_root
def test_network_files_and_mount_points_are_ready_for_the_runtime(tree: Path) -> None:
    assert (tree / "etc/resolv.conf").read_text() == "nameserver 10.0.2.3\n"
    assert not (tree / "etc/resolv.conf").is_symlink()
    assert "localhost" in (tree / "etc/hosts").read_text()
    assert "deb.debian.org" in (tree / "etc/apt/sources.list").read_text()
    for mount_point in ("dev", "dev/shm", "proc", "sys", "run", "tmp"):
        assert (tree / mount_point).is_dir(), mount_point
    assert stat.S_IMODE((tree / "tmp").stat().st_mode) == 0o1777
