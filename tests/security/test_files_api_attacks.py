"""Class 2: the files API is no confused deputy: links, FIFOs and odd paths get the sandbox nothing."""

from __future__ import annotations

import httpx
import pytest

from prefect_opencomputer.local import LocalServer
from tests.security.conftest import NewSandbox, run_ok

pytestmark = pytest.mark.security

# A FIFO nobody reads must answer at once; a hang fails the test instead of blocking the suite.
QUICK = httpx.Timeout(10.0)


@pytest.mark.parametrize("target", ["/etc/passwd", "/opt/root-owned.txt"])
async def test_writing_through_a_planted_link_never_hands_the_target_to_the_sandbox_user(
    http: httpx.AsyncClient, new_sandbox: NewSandbox, target: str
) -> None:
    sandbox = await new_sandbox()
    await run_ok(
        http, sandbox, f"sudo sh -c 'echo root > /opt/root-owned.txt'; ln -s {target} /home/sandbox/link"
    )
    before = await run_ok(http, sandbox, f"stat -c %u:%g {target}")
    assert before == "0:0\n"
    await http.put(f"/sandboxes/{sandbox}/files", params={"path": "/home/sandbox/link"}, content=b"x\n")
    after = await run_ok(http, sandbox, f"stat -c %u:%g {target}")
    assert after == "0:0\n", f"{target} now belongs to {after.strip()}"


async def test_mkdir_through_a_planted_link_never_hands_the_target_to_the_sandbox_user(
    http: httpx.AsyncClient, new_sandbox: NewSandbox
) -> None:
    sandbox = await new_sandbox()
    await run_ok(http, sandbox, "sudo mkdir /opt/root-dir; ln -s /opt/root-dir /home/sandbox/dirlink")
    await http.post(f"/sandboxes/{sandbox}/files/mkdir", params={"path": "/home/sandbox/dirlink/sub"})
    owners = await run_ok(http, sandbox, "stat -c %u:%g /opt/root-dir")
    assert owners == "0:0\n"


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_a_fifo_answers_400_at_once_and_the_server_keeps_serving(
    http: httpx.AsyncClient, new_sandbox: NewSandbox, local_server: LocalServer, method: str
) -> None:
    sandbox = await new_sandbox()
    await run_ok(http, sandbox, "mkfifo /home/sandbox/f")
    try:
        async with httpx.AsyncClient(
            base_url=local_server.api_url, headers={"X-API-Key": local_server.api_key}, timeout=QUICK
        ) as quick:
            answer = await quick.request(
                method,
                f"/sandboxes/{sandbox}/files",
                params={"path": "/home/sandbox/f"},
                content=b"into the pipe" if method == "PUT" else None,
            )
            assert answer.status_code == 400, answer.text
            listed = await quick.get(f"/sandboxes/{sandbox}/files/list", params={"path": "/home/sandbox"})
            assert listed.status_code == 200
            assert (await quick.get(f"/sandboxes/{sandbox}")).status_code == 200
    finally:
        if method == "PUT":
            # A server thread stuck opening the FIFO is set free by a reader, so the session can end.
            await run_ok(http, sandbox, "timeout 5 cat /home/sandbox/f >/dev/null; true")


@pytest.mark.parametrize("route", ["files", "files/list", "files/mkdir"])
async def test_a_nul_byte_in_a_path_is_a_400(http: httpx.AsyncClient, sandbox: str, route: str) -> None:
    method = "POST" if route == "files/mkdir" else "GET"
    answer = await http.request(
        method, f"/sandboxes/{sandbox}/{route}", params={"path": "/home/sandbox/a\x00b"}
    )
    assert answer.status_code == 400, answer.text


async def test_a_nul_byte_in_a_written_path_is_a_400_not_a_shorter_path(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    written = await http.put(f"/sandboxes/{sandbox}/files", params={"path": "/tmp/a\x00b"}, content=b"x")
    assert written.status_code == 400, written.text
    assert await run_ok(http, sandbox, "ls /tmp") == ""


# As the sandbox's root: mount its own cgroup (a host kernfs directory) and a tmpfs, then bind one
# onto every new directory below race/ the moment it appears, hoping the server's chown lands there.
MOUNT_RACER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
os.makedirs("/mnt/cg", exist_ok=True)
assert libc.mount(b"cgroup", b"/mnt/cg", b"cgroup", 0, b"pids") == 0, ctypes.get_errno()
race = "/home/sandbox/race"
os.makedirs(race, exist_ok=True)
open("/tmp/racing", "w").close()
seen = set()
deadline = time.time() + 60
while time.time() < deadline:
    for name in os.listdir(race):
        if name not in seen:
            seen.add(name)
            if libc.mount(b"/mnt/cg", f"{race}/{name}".encode(), None, 4096, None) == 0:  # MS_BIND
                print("mounted", name, flush=True)
"""


async def test_a_mount_moved_onto_a_directory_the_api_makes_is_never_chowned(
    http: httpx.AsyncClient, new_sandbox: NewSandbox, local_server: LocalServer
) -> None:
    from prefect_opencomputer.local.sandbox.factory import cgroup_group
    from tests.security.test_kill_leaves_nothing import cgroup_dirs_of

    sandbox = await new_sandbox()

    def owners_and_modes() -> dict[str, tuple[int, int]]:
        dirs = cgroup_dirs_of(sandbox, cgroup_group(local_server.data_dir))
        return {str(d): (d.stat().st_uid, d.stat().st_mode) for d in dirs}

    before = owners_and_modes()
    assert before and all(uid == 0 for uid, _ in before.values())
    written = await http.put(
        f"/sandboxes/{sandbox}/files", params={"path": "/tmp/racer.py"}, content=MOUNT_RACER
    )
    assert written.status_code == 204
    await run_ok(
        http,
        sandbox,
        "sudo nohup python3 /tmp/racer.py >/tmp/racer.log 2>&1 & "
        "for i in $(seq 100); do test -e /tmp/racing && break; sleep 0.05; done; test -e /tmp/racing",
    )
    for attempt in range(300):
        made = await http.post(
            f"/sandboxes/{sandbox}/files/mkdir", params={"path": f"/home/sandbox/race/d{attempt}"}
        )
        assert made.status_code in (204, 500), made.text
        if made.status_code == 500:  # the mount landed before a server step that reopens the name
            assert "replaced while it was being made" in made.json()["error"]
    # The attack ran: the racer bound the host kernfs directory onto directories the API had made.
    assert "mounted" in await run_ok(http, sandbox, "cat /tmp/racer.log")
    # The sandbox's own cgroup directories on the host keep the owner and mode they were made with.
    assert owners_and_modes() == before
