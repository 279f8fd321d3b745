"""The files API's agents: bounded per sandbox, stopped with their request, gone with their sandbox.

A server of its own with a short file operation timeout, so a request that waits answers 503 soon.
The payloads only make big files and directories inside their own sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from prefect_opencomputer.local import LocalServer, LocalServerConfig
from prefect_opencomputer.local.sandbox.fileagents import AGENTS_PER_SANDBOX
from tests.security.conftest import NewSandbox, checkpoint_ready, run_ok
from tests.waiting import until

pytestmark = pytest.mark.security

TIMEOUT_SECONDS = 3.0
BIG_FILE = "/home/sandbox/big.bin"


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    config = LocalServerConfig(
        data_dir=tmp_path_factory.mktemp("file-agents"),
        file_operation_timeout=TIMEOUT_SECONDS,
        warm_sandboxes=0,
    )
    with LocalServer(config) as server:
        yield server


def agents_of(sandbox: str) -> list[int]:
    """The host pids of the sandbox's file agents (they live in its cgroups)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if (
                b"sandbox-file-agent" in Path(entry.path, "cmdline").read_bytes()
                and sandbox in Path(entry.path, "cgroup").read_text()
            ):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@contextlib.asynccontextmanager
async def held_downloads(local_server: LocalServer, sandbox: str, count: int) -> AsyncIterator[None]:
    """``count`` downloads of a big file whose bodies nobody reads: each holds one of its agents."""
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=local_server.api_url, headers={"X-API-Key": local_server.api_key}, timeout=30
            )
        )
        for _ in range(count):
            response = await stack.enter_async_context(
                client.stream("GET", f"/sandboxes/{sandbox}/files", params={"path": BIG_FILE})
            )
            assert response.status_code == 200
        yield


async def test_one_sandboxs_busy_agents_never_hold_up_another_sandboxs_file_calls(
    http: httpx.AsyncClient, new_sandbox: NewSandbox, local_server: LocalServer
) -> None:
    busy, other = await new_sandbox(), await new_sandbox()
    await run_ok(http, busy, f"head -c 256M /dev/zero > {BIG_FILE}")
    async with held_downloads(local_server, busy, AGENTS_PER_SANDBOX):
        assert len(agents_of(busy)) == AGENTS_PER_SANDBOX
        # The other sandbox is served by agents of its own, at once.
        written = await http.put(f"/sandboxes/{other}/files", params={"path": "note.txt"}, content=b"hi")
        assert written.status_code == 204
        read = await http.get(f"/sandboxes/{other}/files", params={"path": "note.txt"})
        assert read.content == b"hi"
        # The busy sandbox's next call waits for one of its own agents, then answers a retryable 503.
        waited = await http.get(f"/sandboxes/{busy}/files/list", params={"path": "/home/sandbox"})
        assert waited.status_code == 503, waited.text
        assert waited.headers["retry-after"] == "1"
    # The downloads went away: their agents were killed mid-exchange, and fresh ones answer.
    await until(lambda: len(agents_of(busy)) == 0, what="the busy sandbox's agents to go", timeout=10)
    listed = await http.get(f"/sandboxes/{busy}/files/list", params={"path": "/home/sandbox"})
    assert listed.status_code == 200 and "big.bin" in listed.text


async def test_a_sandboxs_agents_are_gone_after_its_kill_even_a_busy_one(
    http: httpx.AsyncClient, local_server: LocalServer
) -> None:
    created = await http.post("/sandboxes", json={"templateID": "base", "timeout": 0})
    sandbox = created.json()["sandboxID"]
    try:
        await run_ok(http, sandbox, f"head -c 256M /dev/zero > {BIG_FILE}")
        async with held_downloads(local_server, sandbox, 2):
            assert len(agents_of(sandbox)) == 2
            assert (await http.delete(f"/sandboxes/{sandbox}")).status_code == 204
            await until(
                lambda: agents_of(sandbox) == [], what="the killed sandbox's agents to go", timeout=10
            )
    finally:
        await http.delete(f"/sandboxes/{sandbox}")


async def test_a_sandbox_with_file_agents_hibernates_and_checkpoints_and_its_files_answer_after(
    http: httpx.AsyncClient, new_sandbox: NewSandbox, local_server: LocalServer
) -> None:
    sandbox = await new_sandbox()
    assert (
        await http.put(f"/sandboxes/{sandbox}/files", params={"path": "kept.txt"}, content=b"kept")
    ).status_code == 204
    assert agents_of(sandbox), "the write left an idle agent, frozen with the sandbox next"
    hibernated = await http.post(f"/sandboxes/{sandbox}/hibernate")
    assert hibernated.status_code == 200, hibernated.text
    read = await http.get(f"/sandboxes/{sandbox}/files", params={"path": "kept.txt"})
    assert read.status_code == 200 and read.content == b"kept"
    await checkpoint_ready(http, sandbox, "with-agents")
    listed = await http.get(f"/sandboxes/{sandbox}/files/list", params={"path": "/home/sandbox"})
    assert listed.status_code == 200 and "kept.txt" in listed.text


@pytest.mark.slow
async def test_a_4_million_entry_directory_listed_again_and_again_stays_bounded(
    http: httpx.AsyncClient, new_sandbox: NewSandbox, local_server: LocalServer
) -> None:
    """The issue's attack: one sandbox lists a directory of 4,000,000 hard links over and over."""
    huge, other = await new_sandbox(), await new_sandbox()
    # ext4 allows 65,000 links to one file: 62 files' worth of links, in one directory.
    make = (
        "python3 -c \"import os\nos.mkdir('huge')\nfor f in range(62):\n"
        "    open(f'huge/t{f}', 'w').close()\n"
        "    for i in range(64000): os.link(f'huge/t{f}', f'huge/{f}-{i}')\""
    )
    await run_ok(http, huge, make, timeout=900)
    rss_idle = _rss_bytes()

    async def listing() -> httpx.Response:
        return await http.get(f"/sandboxes/{huge}/files/list", params={"path": "/home/sandbox/huge"})

    listings = [asyncio.ensure_future(listing()) for _ in range(8)]
    for _ in range(10):  # the other sandbox's calls answer meanwhile
        written = await http.put(f"/sandboxes/{other}/files", params={"path": "n.txt"}, content=b"x")
        assert written.status_code == 204
        assert (await http.get(f"/sandboxes/{other}/files/list")).status_code == 200
    answers = await asyncio.gather(*listings)
    # Refused whole (413) or, while all of its agents were busy, a retryable 503: never a body.
    assert {answer.status_code for answer in answers} <= {413, 503}
    assert any(answer.status_code == 413 for answer in answers)
    assert _rss_bytes() - rss_idle < 200 * 1024 * 1024
    # The listings' agents settle: one is kept idle, the others end (under load, not at once).
    await until(lambda: len(agents_of(huge)) == 1, what="one idle agent left", timeout=60)
    idle = set(agents_of(huge))
    # Removing it takes longer than a step may: 503, and the agent doing it (the idle one) is
    # killed, so its work stops.
    removed = await http.delete(f"/sandboxes/{huge}/files", params={"path": "/home/sandbox/huge"})
    assert removed.status_code == 503, removed.text
    await until(lambda: not idle & set(agents_of(huge)), what="the removing agent killed", timeout=60)
    count = "find /home/sandbox/huge -maxdepth 1 | wc -l"
    left = int(await run_ok(http, huge, count, timeout=300))
    await asyncio.sleep(1)
    assert int(await run_ok(http, huge, count, timeout=300)) == left > 1_000_000


def _rss_bytes() -> int:
    """This process's resident memory: the embedded server's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")
