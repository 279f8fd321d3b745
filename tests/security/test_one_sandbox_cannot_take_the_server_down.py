"""Class 4: one sandbox's memory, processes or connections cannot take the server down."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from prefect_opencomputer.local import LocalServer
from tests.security.conftest import NewSandbox, run, run_ok

pytestmark = pytest.mark.security

QUICK = httpx.Timeout(10.0)
# A distinctive argument, so the leftovers check finds only this test's processes.
SLEEP_SECONDS = "6061"


async def server_answers(local_server: LocalServer, sandbox: str) -> None:
    """A fresh connection gets an API answer and a command runs (a hang fails instead of blocking)."""
    async with httpx.AsyncClient(
        base_url=local_server.api_url, headers={"X-API-Key": local_server.api_key}, timeout=QUICK
    ) as quick:
        assert (await quick.get("/sandboxes")).status_code == 200
        done = await quick.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": "echo alive"})
        assert done.json()["stdout"] == "alive\n"


def host_processes_with(argument: str) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if argument.encode() in Path(entry.path, "cmdline").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


async def test_a_sandbox_allocating_past_its_memory_mb_is_killed_and_the_server_keeps_serving(
    http: httpx.AsyncClient, new_sandbox: NewSandbox, local_server: LocalServer
) -> None:
    small = await new_sandbox(memoryMB=1024, cpuCount=1)
    other = await new_sandbox()
    grab = await run(http, small, "python3 -c \"b = b'x' * (1536 << 20); print('allocated')\"; echo code=$?")
    assert grab["stdout"] == "code=137\n", grab  # SIGKILL, from the memory cgroup's OOM killer
    await server_answers(local_server, other)
    assert await run_ok(http, small, "echo still here") == "still here\n"


async def test_a_fork_storm_hits_the_process_cap_and_kill_leaves_no_process(
    http: httpx.AsyncClient, new_sandbox: NewSandbox, local_server: LocalServer
) -> None:
    storm = await new_sandbox()
    other = await new_sandbox()
    # dash gives up on the first failed fork (bash would retry with back-off); the sleeps keep no
    # pipe of the command's open, so it ends when the loop does.
    result = await run(
        http,
        storm,
        f"for i in $(seq 6000); do sleep {SLEEP_SECONDS} >/dev/null 2>&1 & done; echo all started",
        timeout=60,
    )
    assert "all started" not in result["stdout"]
    assert "Cannot fork" in result["stderr"] or "Resource temporarily unavailable" in result["stderr"]
    assert host_processes_with(SLEEP_SECONDS), "the storm's processes were not even started"
    await server_answers(local_server, other)

    assert (await http.delete(f"/sandboxes/{storm}")).status_code == 204
    for _ in range(300):
        if not host_processes_with(SLEEP_SECONDS):
            break
        await asyncio.sleep(0.1)
    assert host_processes_with(SLEEP_SECONDS) == []


async def test_creating_past_the_running_sandbox_cap_answers_429(
    http: httpx.AsyncClient, local_server: LocalServer
) -> None:
    # The hosted cap (50) lowered to two more than run now, so the test stays quick.
    listed = (await http.get("/sandboxes")).json()  # every status, as the hosted front door lists them
    running = sum(1 for sandbox in listed if sandbox["status"] == "running")
    cap = running + 2
    control = {"X-API-Key": local_server.api_key}
    async with httpx.AsyncClient(base_url=local_server.url, headers=control, timeout=60) as admin:
        assert (await admin.put("/_test/limits", json={"maxRunningSandboxes": cap})).status_code == 200
    made: list[str] = []
    try:
        for _ in range(cap - running):
            created = await http.post("/sandboxes", json={"timeout": 0})
            assert created.status_code == 201, created.text
            made.append(created.json()["sandboxID"])
        refused = await http.post("/sandboxes", json={"timeout": 0})
        if refused.status_code == 201:
            made.append(refused.json()["sandboxID"])
        assert refused.status_code == 429, refused.text
    finally:
        for sandbox_id in made:
            await http.delete(f"/sandboxes/{sandbox_id}")
        async with httpx.AsyncClient(base_url=local_server.url, headers=control, timeout=60) as admin:
            limit = local_server.config.max_running_sandboxes
            await admin.put("/_test/limits", json={"maxRunningSandboxes": limit})


# Opens up to COUNT connections out through the server's forwarder (to a package registry, the only
# outside address a test may use; past the per-sandbox cap the server resets them before connecting)
# and holds them a while, then exits, freeing them.
HOLDER = """
import resource, socket, sys, time
count = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
address = socket.getaddrinfo("pypi.org", 443, socket.AF_INET, socket.SOCK_STREAM)[0][4]
held, failures = [], 0
while len(held) < count and failures < 3 and len(held) < hard - 16:
    try:
        held.append(socket.create_connection(address, timeout=2))
    except OSError:
        failures += 1
time.sleep(20)
"""


def open_descriptors() -> int:
    """This process's open descriptors; all it may have when it cannot open one more to count them."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError as error:
        if error.errno != errno.EMFILE:
            raise
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@pytest.fixture
def common_descriptor_limit() -> Iterator[int]:
    """This process (the embedded server's) with a usual soft limit: 1024 descriptors above what it has."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(hard, open_descriptors() + 1024)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    yield limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_burst_of_outbound_connections_does_not_exhaust_the_server_descriptors(
    http: httpx.AsyncClient, new_sandbox: NewSandbox, local_server: LocalServer, common_descriptor_limit: int
) -> None:
    limit = common_descriptor_limit
    noisy = await new_sandbox()
    other = await new_sandbox()
    baseline = open_descriptors()
    script = base64.b64encode(HOLDER.encode()).decode()
    await run_ok(http, noisy, f"echo {script} | base64 -d > /tmp/holder.py")
    await run_ok(
        http, noisy, f"nohup python3 /tmp/holder.py {2 * limit} >/dev/null 2>&1 & echo $! > /tmp/holder"
    )
    try:
        # Until the burst settles, watched from here (the API may be what it breaks).
        samples = [open_descriptors()]
        for _ in range(60):
            await asyncio.sleep(0.5)
            samples.append(open_descriptors())
            if samples[-1] >= limit - 16 or (len(samples) > 6 and samples[-1] <= samples[-7]):
                break
        held = max(samples)
        # (The embedded server shares this process's descriptors with the test's own client.)
        assert held < limit - 16, f"one sandbox's connections hold {held} of the server's {limit} descriptors"
        await server_answers(local_server, other)
    finally:
        for _ in range(60):
            with contextlib.suppress(httpx.HTTPError):
                killed = await http.post(
                    f"/sandboxes/{noisy}/exec/run", json={"cmd": "kill $(cat /tmp/holder) 2>/dev/null; true"}
                )
                if killed.status_code == 200:
                    break
            await asyncio.sleep(1)
        for _ in range(100):
            if open_descriptors() < baseline + 64:
                break
            await asyncio.sleep(0.2)


async def test_a_huge_directory_is_refused_whole_not_listed_into_the_servers_memory(
    http: httpx.AsyncClient, new_sandbox: NewSandbox
) -> None:
    sandbox = await new_sandbox()
    # 30,000 hard links to one file: more entries than one listing answers, made in a second.
    await run_ok(
        http,
        sandbox,
        'mkdir -p huge/sub && touch huge/f && python3 -c "import os; '
        "[os.link('huge/f', f'huge/{i}') for i in range(30000)]\"",
        timeout=120,
    )
    refused = await http.get(f"/sandboxes/{sandbox}/files/list", params={"path": "/home/sandbox/huge"})
    assert refused.status_code == 413, refused.text
    assert "more than 10000 entries" in refused.json()["error"]
    # What is below it, and the sandbox's other files, list as ever.
    listed = await http.get(f"/sandboxes/{sandbox}/files/list", params={"path": "/home/sandbox"})
    assert listed.status_code == 200 and "huge" in listed.text
