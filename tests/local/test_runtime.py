"""The sandbox runtime on its own, without HTTP: isolation, lifetimes, layers and file access."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from booting import start
from serving import processes_mentioning

from prefect_opencomputer.local.sandbox import ids
from prefect_opencomputer.local.sandbox.fileops import PathEscapeError
from prefect_opencomputer.local.sandbox.runtime import SandboxRuntime
from tests.host_view import host_view, marked_sleep, new_marker


async def boot(runtime: SandboxRuntime, sandbox_id: str, *, network: bool = True) -> str:
    runtime.layers.create_sandbox(sandbox_id)
    await start(runtime, sandbox_id, network=network)
    return sandbox_id


async def sh(runtime: SandboxRuntime, sandbox_id: str, script: str, timeout: float = 30) -> str:
    result = await runtime.run(sandbox_id, ["/bin/sh", "-c", script], timeout=timeout)
    assert result.exit_code == 0, result
    return result.stdout.decode()


async def host_range(runtime: SandboxRuntime, sandbox_id: str) -> int:
    """The first host id of the sandbox's own range, read from the host (inside shows ``0 0 65536``)."""
    marker = new_marker()
    await runtime.run(sandbox_id, ["/bin/bash", "-c", marked_sleep(marker)])
    return int((await asyncio.to_thread(host_view, marker)).uid_map[1])


async def test_commands_run_as_the_sandbox_user_in_its_home(runtime: SandboxRuntime) -> None:
    sandbox = await boot(runtime, "sb-user0001")
    out = await sh(runtime, sandbox, "id -un; id -u; pwd; echo $HOME")
    assert out.split() == ["sandbox", "1000", "/home/sandbox", "/home/sandbox"]


async def test_write_to_etc_stays_in_the_sandbox_layer(runtime: SandboxRuntime, tmp_path: Path) -> None:
    a = await boot(runtime, "sb-aaaa0001")
    b = await boot(runtime, "sb-bbbb0001")
    marker = f"oc-isolation-{os.getpid()}"
    writer = await runtime.file_ops(a).open_write(f"/etc/{marker}")
    await writer.write(b"only in a")
    await writer.close()

    assert await sh(runtime, a, f"cat /etc/{marker}") == "only in a"
    assert not Path("/etc", marker).exists()
    missing = await runtime.run(b, ["cat", f"/etc/{marker}"])
    assert missing.exit_code != 0
    upper = runtime.layers.upper_view(a)
    assert upper is not None
    assert (upper / "etc" / marker).read_bytes() == b"only in a"


async def test_host_private_paths_are_invisible(runtime: SandboxRuntime, tmp_path: Path) -> None:
    sandbox = await boot(runtime, "sb-hide0001")
    (tmp_path / "secret.txt").write_text("host secret")
    listing = await sh(runtime, sandbox, "ls -A /home; ls -A /tmp; ls -A /root 2>&1 || true")
    assert listing.split()[0] == "sandbox"
    assert "secret" not in listing
    for private in (str(tmp_path), str(tmp_path / "secret.txt"), str(runtime.root)):
        probe = await runtime.run(sandbox, ["/bin/sh", "-c", f"cat {private} || ls {private}"])
        assert probe.exit_code != 0, private
        assert b"host secret" not in probe.stdout
    # The sandbox's /etc is its template's, not this host's.
    assert await sh(runtime, sandbox, "cat /etc/hostname") == "sb-hide0001\n"
    other = await boot(runtime, "sb-hide0002")
    probe = await runtime.run(sandbox, ["ls", str(runtime.layers.layer_dir(other))])
    assert probe.exit_code != 0


async def test_background_process_outlives_its_command(runtime: SandboxRuntime) -> None:
    sandbox = await boot(runtime, "sb-bgbg0001")
    started = await runtime.run(
        sandbox,
        ["/bin/sh", "-c", "python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 & echo started"],
        timeout=10,
    )
    assert started.stdout == b"started\n"
    for _ in range(100):
        probe = await runtime.run(
            sandbox,
            [
                "python3",
                "-c",
                "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/').status)",
            ],
        )
        if probe.exit_code == 0:
            break
        await asyncio.sleep(0.05)
    assert probe.stdout == b"200\n"
    reader, writer = await runtime.open_connection(sandbox, 8000)
    writer.write(b"GET / HTTP/1.0\r\nHost: sandbox\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.0 200")
    writer.close()


async def test_each_sandbox_has_its_own_ports(runtime: SandboxRuntime) -> None:
    a = await boot(runtime, "sb-port0001")
    b = await boot(runtime, "sb-port0002")
    serve = "python3 -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1', 9000)); print('bound')\""
    assert await sh(runtime, a, serve) == "bound\n"
    assert await sh(runtime, b, serve) == "bound\n"
    assert "lo" in await sh(runtime, a, "cat /proc/net/dev")


async def test_timeout_kills_the_process_group_and_reports_minus_one(runtime: SandboxRuntime) -> None:
    sandbox = await boot(runtime, "sb-tout0001")
    result = await runtime.run(sandbox, ["/bin/sh", "-c", "echo before; sleep 30 & sleep 30"], timeout=0.5)
    assert result.exit_code == -1
    assert result.timed_out
    assert result.stdout == b"before\n"
    assert result.stderr.endswith(b"Process timed out")
    assert "sleep 30" not in await sh(runtime, sandbox, "ps -eo args")


async def test_stop_keeps_the_disk_and_start_brings_it_back(runtime: SandboxRuntime) -> None:
    sandbox = await boot(runtime, "sb-hibe0001")
    await sh(runtime, sandbox, "echo kept > kept.txt; sleep 300 >/dev/null 2>&1 &")
    await runtime.stop(sandbox)
    assert not runtime.is_running(sandbox)
    await start(runtime, sandbox)
    assert await sh(runtime, sandbox, "cat kept.txt") == "kept\n"
    assert "sleep 30" not in await sh(runtime, sandbox, "ps -eo args")


async def test_checkpoint_fork_and_restore_copy_the_layer(runtime: SandboxRuntime) -> None:
    source = await boot(runtime, "sb-ckpt0001")
    await sh(runtime, source, "echo v1 > state.txt")
    size = await runtime.checkpoint(source, "checkpoint-1")
    assert size > 0
    await sh(runtime, source, "echo v2 > state.txt")

    await runtime.layers.fork("checkpoint-1", "sb-fork0001")
    await start(runtime, "sb-fork0001")
    assert await sh(runtime, "sb-fork0001", "cat state.txt") == "v1\n"

    await runtime.stop(source)
    await runtime.layers.restore("checkpoint-1", source)
    await start(runtime, source)
    assert await sh(runtime, source, "cat state.txt") == "v1\n"


async def test_destroy_leaves_no_process_mount_or_directory(runtime: SandboxRuntime) -> None:
    sandbox = await boot(runtime, "sb-kill0001")
    await sh(runtime, sandbox, "sleep 300 >/dev/null 2>&1 &")
    layer = str(runtime.layers.mountpoint(sandbox).parent)
    assert processes_mentioning(layer)
    await runtime.destroy(sandbox)
    # Destroy answers at once; what it stopped goes in the background, and is waited for here.
    assert await runtime.wait_stopped(30)
    assert processes_mentioning(layer) == []
    assert not Path(layer).exists()
    assert layer not in Path("/proc/self/mountinfo").read_text()


async def test_file_paths_cannot_leave_the_sandbox(runtime: SandboxRuntime) -> None:
    sandbox = await boot(runtime, "sb-path0001")
    await sh(runtime, sandbox, "ln -s /proc/self/root escape; ln -s / root-link; echo in > inside.txt")
    files = runtime.file_ops(sandbox)
    with pytest.raises(PathEscapeError):
        await files.open_read("/home/sandbox/escape/etc/hostname")
    with pytest.raises(PathEscapeError):
        await files.open_read("../../../../etc/hostname")
    with pytest.raises(PathEscapeError):
        await files.open_read("/proc/1/environ")
    # An absolute link resolves inside the sandbox, never on the host.
    opened = await files.open_read("/home/sandbox/root-link/home/sandbox/inside.txt")
    assert [chunk async for chunk in opened.chunks] == [b"in\n"]
    with pytest.raises(FileNotFoundError):
        await files.open_read("/home/sandbox/missing.txt")


async def test_files_written_through_the_api_belong_to_root_as_hosted(runtime: SandboxRuntime) -> None:
    sandbox = await boot(runtime, "sb-file0001")
    files = runtime.file_ops(sandbox)
    writer = await files.open_write("project/src/main.py")
    await writer.write(b"print('hi')\n")
    await writer.close()
    listing = await files.list("/home/sandbox/project")
    assert [e.name async for batch in listing.batches for e in batch] == ["src"]
    owners = "stat -c '%U:%G %a' project project/src/main.py"
    assert await sh(runtime, sandbox, owners) == "root:root 755\nroot:root 644\n"
    denied = await runtime.run(sandbox, ["/bin/sh", "-c", "echo '# more' >> project/src/main.py"])
    assert denied.exit_code != 0 and b"Permission denied" in denied.stderr
    append = "sudo sh -c \"echo '# more' >> project/src/main.py\""
    out = await sh(runtime, sandbox, f"{append}; python3 project/src/main.py")
    assert out == "hi\n"
    await files.remove("project")
    assert not runtime.files(sandbox).exists("project")
    await files.remove("project")  # a missing path is not an error


async def test_sandbox_root_writes_system_files_and_is_nobody_on_the_host(runtime: SandboxRuntime) -> None:
    sandbox = await boot(runtime, "sb-root0001")
    result = await runtime.run(
        sandbox,
        ["/bin/sh", "-c", "id -u; echo built > /usr/local/built.txt; cat /proc/self/uid_map"],
        as_root=True,
    )
    uid, inside, mapped, count = (int(word) for word in result.stdout.split())
    assert (uid, inside, mapped, count) == (0, 0, 0, ids.ID_COUNT)  # the sandbox's ids, one to one
    outside = await host_range(runtime, sandbox)
    # A range of its own, never the canonical one its files are stored with, never host root's.
    assert outside >= ids.HOST_ID_BASE + ids.ID_COUNT
    assert not Path("/usr/local/built.txt").exists()
    upper = runtime.layers.upper_view(sandbox)
    assert upper is not None
    assert (upper / "usr/local/built.txt").stat().st_uid == outside
    assert await sh(runtime, sandbox, "cat /usr/local/built.txt") == "built\n"


async def test_every_running_sandbox_has_a_host_id_range_of_its_own_and_forks_get_another(
    runtime: SandboxRuntime,
) -> None:
    first, second = await boot(runtime, "sb-rnga0001"), await boot(runtime, "sb-rngb0001")
    await runtime.run(first, ["/bin/sh", "-c", "echo mine > /usr/local/owned.txt"], as_root=True)
    await runtime.checkpoint(first, "ranges")
    await runtime.layers.fork("ranges", "sb-rngc0001")
    await start(runtime, "sb-rngc0001")
    maps = {}
    for sandbox in (first, second, "sb-rngc0001"):
        maps[sandbox] = await host_range(runtime, sandbox)
    assert len(set(maps.values())) == 3, maps
    # The fork sees what its source's root wrote as its own root's, through its own range.
    owner = await runtime.run("sb-rngc0001", ["stat", "-c", "%u %U", "/usr/local/owned.txt"])
    assert owner.stdout == b"0 root\n", owner


@pytest.mark.slow
async def test_a_sandbox_reaches_a_package_index_directly_like_a_vm(runtime: SandboxRuntime) -> None:
    sandbox = await boot(runtime, "sb-netw0001")
    script = (
        "env | grep -ci _proxy; getent hosts pypi.org >/dev/null && echo resolved; "
        "curl -sS -o /dev/null -w '%{http_code}\\n' https://pypi.org/simple/six/; "
        "node -e \"fetch('https://pypi.org/simple/six/').then(r => console.log(r.status))\""
    )
    out = await sh(runtime, sandbox, script + " || true", timeout=60)
    assert out.split() == ["0", "resolved", "200", "200"]


async def test_a_sandbox_without_network_has_loopback_only(runtime: SandboxRuntime) -> None:
    await boot(runtime, "sb-nonet001", network=False)
    out = await sh(runtime, "sb-nonet001", "ls /sys/class/net 2>/dev/null || cat /proc/net/dev | tail -n +3")
    assert "eth0" not in out
    denied = await runtime.run("sb-nonet001", ["getent", "hosts", "pypi.org"], timeout=20)
    assert denied.exit_code != 0
