"""Class 6 and the host's view: keyrings, nested user namespaces, processes, /proc/1 and nsenter."""

from __future__ import annotations

import uuid

import httpx
import pytest

from prefect_opencomputer.local import LocalServer
from tests.security.conftest import NewSandbox, is_sandbox_uid_map, run, run_ok

pytestmark = pytest.mark.security


async def test_a_key_in_one_sandboxs_user_keyring_is_invisible_in_another(
    http: httpx.AsyncClient, new_sandbox: NewSandbox
) -> None:
    first, second = await new_sandbox(), await new_sandbox()
    name = f"oc-key-{uuid.uuid4().hex[:8]}"
    added = await run(http, first, f"keyctl add user {name} secret-value @u")
    if added["exitCode"] != 0:
        # No keyring for the sandbox at all is isolation too; it must fail the same way in both.
        assert "keyctl" in added["stderr"] or added["stderr"], added
    shown = await run(http, first, "keyctl show @u")
    elsewhere = await run(http, second, f"keyctl show @u; keyctl search @u user {name}")
    assert name not in elsewhere["stdout"] + elsewhere["stderr"]
    as_root = await run(http, second, f"sudo keyctl show @u; sudo keyctl search @u user {name}")
    assert name not in as_root["stdout"] + as_root["stderr"]
    if added["exitCode"] == 0:
        assert name in shown["stdout"]  # the key is real where it was added


@pytest.mark.parametrize("prefix", ["", "sudo "])
async def test_nested_user_namespaces_are_refused(http: httpx.AsyncClient, sandbox: str, prefix: str) -> None:
    for attempt in ("unshare -Ur true", "unshare -U true", "unshare --user --map-root-user --mount true"):
        result = await run(http, sandbox, prefix + attempt)
        assert result["exitCode"] != 0, (attempt, result)
    python = "import os; os.unshare(os.CLONE_NEWUSER)"
    result = await run(http, sandbox, f'{prefix}python3 -c "{python}"')
    assert result["exitCode"] != 0


async def test_x32_system_call_numbers_are_refused_by_the_filter_not_just_the_kernel(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    # unshare(CLONE_NEWUSER) by its x32 number: a filter comparing plain numbers lets it through
    # (and a kernel with x32 on would run it); the filter answers EPERM where the kernel says ENOSYS.
    script = (
        "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
        "print(libc.syscall(0x40000000 | 272, 0x10000000), ctypes.get_errno() == 1)"
    )
    assert (await run_ok(http, sandbox, f'sudo python3 -c "{script}"')).split() == ["-1", "True"]


async def test_a_command_sees_only_its_sandboxs_processes(http: httpx.AsyncClient, sandbox: str) -> None:
    listing = await run_ok(http, sandbox, "ps -eo pid=,args=")
    assert len(listing.splitlines()) < 10, listing
    assert "pytest" not in listing and "uvicorn" not in listing
    all_pids = await run_ok(http, sandbox, "sudo ls /proc | grep -c '^[0-9]'")
    assert int(all_pids) < 10


async def test_pid_1_is_the_helpers_init_not_a_sandbox_binary(http: httpx.AsyncClient, sandbox: str) -> None:
    # Its name is the helper's (the kernel's, from the binary it runs); its command line names
    # nothing of the host: no helper path, no data dir, no option.
    assert (await run_ok(http, sandbox, "sudo cat /proc/1/comm")).startswith("sandbox-helper")
    cmdline = await run_ok(http, sandbox, "sudo cat /proc/1/cmdline | tr -d '\\0'")
    assert cmdline == "init", cmdline
    exe = await run(http, sandbox, "sudo readlink /proc/1/exe")
    # The helper's binary is a host file: from inside, it has no path in the sandbox's tree.
    target = exe["stdout"].strip()
    if target:
        probe = await run(http, sandbox, f"test -e '{target}' && echo present")
        assert "present" not in probe["stdout"]


async def test_the_servers_data_dir_is_unreadable_from_inside(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    for path in (local_server.data_dir, local_server.data_dir / "state.db"):
        probe = await run(http, sandbox, f"sudo ls -la {path}; sudo cat {path}")
        assert probe["exitCode"] != 0
        assert "SQLite" not in probe["stdout"]


async def test_nsenter_and_mount_tricks_stay_inside_the_sandbox(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    hostname = (await run_ok(http, sandbox, "hostname")).strip()
    # nsenter to pid 1 enters the sandbox's own init: same hostname, same root, same id range.
    inside = await run(
        http, sandbox, "sudo nsenter -t 1 -m -u -p -n -i sh -c 'hostname; cat /proc/self/uid_map'"
    )
    if inside["exitCode"] == 0:
        lines = inside["stdout"].split("\n")
        assert lines[0] == hostname
        assert is_sandbox_uid_map(lines[1].split())
    # No way to a user namespace with more power, nor into another mount of the host root.
    assert (await run(http, sandbox, "sudo nsenter -t 1 -U true"))["exitCode"] != 0
    # A fresh /proc shows the sandbox's own processes only; its pid 1's root is the sandbox's root.
    await run(http, sandbox, "sudo mkdir -p /mnt/h && sudo mount -t proc proc /mnt/h")
    through_proc = await run(http, sandbox, "sudo ls /mnt/h/1/root/")
    sandbox_root = set((await run_ok(http, sandbox, "ls /")).split())
    assert set(through_proc["stdout"].split()) <= sandbox_root
    bound = await run(http, sandbox, "sudo mount --bind / /mnt/h && ls /mnt/h")
    assert set(bound["stdout"].split()) <= sandbox_root
    for device in ("/dev/sda", "/dev/vda", "/dev/nvme0n1", "/dev/mem", "/dev/kmsg"):
        assert (await run(http, sandbox, f"sudo test -e {device}"))["exitCode"] != 0, device
    assert (await run(http, sandbox, "sudo mknod /tmp/disk b 8 0 && sudo head -c1 /tmp/disk"))[
        "exitCode"
    ] != 0
    assert (await run(http, sandbox, "ls /sys/fs/cgroup 2>/dev/null | wc -l"))["stdout"].strip() == "0"
