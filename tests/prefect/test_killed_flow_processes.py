"""Flow processes killed from outside: SIGTERM lets the in-process layers clean up, SIGKILL needs the reaper.

For SIGKILL the victim runs with no PREFECT_API_URL, so Prefect starts a temporary server for it (as it
does for any ad-hoc run); SIGKILL takes that server down too, so the victim's flow run no longer exists
for the Prefect API the reaper asks. A flow that is still running owns a sandbox meanwhile: the reaper
must not touch it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from prefect.settings import PREFECT_API_URL

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import OpenComputerClient
from prefect_opencomputer.flows import reap_orphaned_sandboxes
from prefect_opencomputer.tasks import TAG_FLOW_RUN, open_sandbox
from prefect_opencomputer.tasks.leases import TAG_OWNER_LEASE

# Every cleanup layer that runs in-process is present; SIGKILL gives none of them a chance.
VICTIM = """
import asyncio
import contextlib
from prefect import flow
from prefect.settings import PREFECT_API_URL
from prefect_opencomputer import OpenComputerCredentials
from prefect_opencomputer.tasks import cleanup_hooks, create_sandbox, open_sandbox, run_command

@flow(**cleanup_hooks())
async def victim() -> None:
    credentials = OpenComputerCredentials()
    await create_sandbox(credentials=credentials)
    async with open_sandbox(credentials=credentials) as sandbox:
        await run_command(sandbox, "sleep 600", credentials=credentials)

asyncio.run(victim())
"""


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (the temporary Prefect server is one of them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _start_victim(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", VICTIM], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def _wait_for_running_command(
    oc: OpenComputerClient, victim: subprocess.Popen[bytes], count: int
) -> list[str]:
    """Ids of the victim's sandboxes, once `count` of them exist and a command runs in one."""
    deadline = time.monotonic() + 120
    while True:
        running = [sb for sb in await oc.sandboxes.list() if sb.tags.get(TAG_FLOW_RUN)]
        sessions = [session for sb in running for session in await oc.exec.list(sb.sandbox_id)]
        if len(running) == count and any(session.running for session in sessions):
            return [sb.sandbox_id for sb in running]
        assert victim.poll() is None, "the victim flow ended on its own"
        assert time.monotonic() < deadline, "the victim never got its sandboxes running"
        await asyncio.sleep(0.5)


@pytest.mark.slow
async def test_sigterm_crashes_a_local_run_and_its_hooks_and_finally_blocks_kill_everything(
    local_server: Any, control: Any, oc: OpenComputerClient
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API_")}
    env.update(
        PREFECT_API_URL=PREFECT_API_URL.value(),
        OPENCOMPUTER_API_URL=local_server.url,
        OPENCOMPUTER_API_KEY=local_server.api_key,
    )
    victim = _start_victim(env)
    try:
        await _wait_for_running_command(oc, victim, 2)
        victim.send_signal(signal.SIGTERM)
        await asyncio.to_thread(victim.wait, 60)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert await control.live_sandboxes() == 0


@pytest.mark.slow
async def test_one_reaper_run_removes_the_sandboxes_of_a_sigkilled_flow_and_spares_a_live_one(
    local_server: Any, control: Any, credentials: OpenComputerCredentials, oc: OpenComputerClient
) -> None:
    home = tempfile.mkdtemp(prefix="prefect-victim-")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API_")}
    env.update(
        PREFECT_HOME=home,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        OPENCOMPUTER_API_URL=local_server.url,
        OPENCOMPUTER_API_KEY=local_server.api_key,
    )
    victim = _start_victim(env)
    try:
        victims = await _wait_for_running_command(oc, victim, 2)
    finally:
        # SIGKILL orphans the victim's temporary Prefect server: find it first, then kill it by pid.
        left_behind = _descendants(victim.pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        _kill(left_behind)
        shutil.rmtree(home, ignore_errors=True)
    await asyncio.sleep(1)
    assert await control.live_sandboxes() == 2, "SIGKILL must leave the sandboxes running: nothing ran"

    @flow
    async def live_run_reaps() -> tuple[Any, str, str]:
        async with open_sandbox(credentials=credentials) as mine:
            report = await reap_orphaned_sandboxes()
            status = (await oc.sandboxes.get(mine.sandbox_id)).status
            return report, mine.sandbox_id, status

    report, mine, status = await live_run_reaps()
    assert status == "running"
    assert sorted(report.killed) == sorted(victims)
    assert {orphan.reason for orphan in report.orphans} == {"flow run not found"}
    assert mine not in report.killed
    assert await control.live_sandboxes() == 0


# `python flow.py` against a Prefect server that outlives it: after SIGKILL its run stays Running.
LOCAL_FLOW = """
from prefect import flow
from prefect_opencomputer.tasks import cleanup_hooks, create_sandbox, open_sandbox, run_command

@flow(**cleanup_hooks())
def nightly_build() -> None:
    create_sandbox()
    with open_sandbox() as sandbox:
        run_command(sandbox, "sleep 600")

if __name__ == "__main__":
    nightly_build()
"""
ORPHAN_WINDOW = "30"


def _start_local_flow(script: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, script.name],
        cwd=script.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _reap(env: dict[str, str], *args: str) -> str:
    """`prefect-opencomputer reap`, as a user runs it from a shell."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("prefect-opencomputer")), "reap", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def _lease_renewed_at(flow_run_sandbox: Any, oc: OpenComputerClient) -> datetime:
    from prefect.client.orchestration import get_client

    name = (await oc.sandboxes.get_tags(flow_run_sandbox)).tags[TAG_OWNER_LEASE]
    async with get_client() as prefect:
        variable = await prefect.read_variable_by_name(name)
    assert variable is not None and isinstance(variable.value, dict)
    return datetime.fromisoformat(str(variable.value["renewed_at"]))


@pytest.mark.slow
async def test_one_reap_after_the_orphan_window_removes_a_sigkilled_local_runs_sandboxes(
    local_server: Any, control: Any, oc: OpenComputerClient, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    script = tmp_path / "flow.py"
    script.write_text(LOCAL_FLOW)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API_")}
    env.update(
        PREFECT_API_URL=PREFECT_API_URL.value(),
        OPENCOMPUTER_API_URL=local_server.url,
        OPENCOMPUTER_API_KEY=local_server.api_key,
        PREFECT_OPENCOMPUTER_ORPHAN_AFTER_SECONDS=ORPHAN_WINDOW,
    )
    victim = _start_local_flow(script, env)
    try:
        victims = await _wait_for_running_command(oc, victim, 2)
        # While its owner lives, the reaper keeps them and says why.
        dry_run = _reap(env, "--dry-run")
        for sandbox_id in victims:
            assert re.search(rf"kept {sandbox_id} .*renewed its lease \d+ s ago", dry_run), dry_run
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    finally:
        if victim.poll() is None:
            victim.kill()
    flow_run_id = (await oc.sandboxes.get_tags(victims[0])).tags[TAG_FLOW_RUN]
    async with get_client() as prefect:
        assert (await prefect.read_flow_run(UUID(flow_run_id))).state_name == "Running"
    assert await control.live_sandboxes() == 2, "SIGKILL must leave the sandboxes running: nothing ran"

    # Wait out the window from the lease's last renewal, then one reap.
    last_renewal = await _lease_renewed_at(victims[0], oc)
    await asyncio.sleep(max((last_renewal - datetime.now(UTC)).total_seconds() + int(ORPHAN_WINDOW) + 1, 0))
    reaped = _reap(env)

    assert await control.live_sandboxes() == 0, reaped
    for sandbox_id in victims:
        assert re.search(rf"{sandbox_id} .*stopped renewing its lease", reaped), reaped
    assert f"flow run {flow_run_id} marked Crashed" in reaped
    async with get_client() as prefect:
        assert (await prefect.read_flow_run(UUID(flow_run_id))).state_name == "Crashed"


FAN_OUT_FLOW = """
from prefect import flow
from prefect_opencomputer.tasks import cleanup_hooks, create_sandbox, run_command

@flow(**cleanup_hooks())
def fan_out() -> None:
    sandboxes = create_sandbox.map(["base"] * 3).result()
    run_command.map(sandboxes, "sleep 120").result()

if __name__ == "__main__":
    fan_out()
"""


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_a_def_flow_stopped_during_a_mapped_command_exits_kills_everything_and_ends_crashed(
    local_server: Any, control: Any, oc: OpenComputerClient, tmp_path: Path, stop: signal.Signals
) -> None:
    from prefect.client.orchestration import get_client

    script = tmp_path / "flow.py"
    script.write_text(FAN_OUT_FLOW)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API_")}
    env.update(
        PREFECT_API_URL=PREFECT_API_URL.value(),
        OPENCOMPUTER_API_URL=local_server.url,
        OPENCOMPUTER_API_KEY=local_server.api_key,
    )
    victim = _start_local_flow(script, env)
    try:
        sandboxes = await _wait_for_running_command(oc, victim, 3)
        flow_run_id = (await oc.sandboxes.get_tags(sandboxes[0])).tags[TAG_FLOW_RUN]
        victim.send_signal(stop)
        # The remote commands would run 120 s: the process must not wait for them.
        await asyncio.to_thread(victim.wait, 60)
    finally:
        if victim.poll() is None:
            victim.kill()

    assert await control.live_sandboxes() == 0
    async with get_client() as prefect:
        assert (await prefect.read_flow_run(UUID(flow_run_id))).state_name == "Crashed"
