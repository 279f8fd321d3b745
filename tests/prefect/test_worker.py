"""The `opencomputer` work pool, end to end: `prefect worker start --pool P` against a real `prefect server
start`, flow runs in sandboxes of a local server that opens the Prefect API's port to them.

The first run builds the worker's image (Prefect from PyPI) once; the later runs start from the cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import OpenComputerClient
from prefect_opencomputer.local import LocalServer, LocalServerConfig
from prefect_opencomputer.local.config import HOST_ALIAS
from prefect_opencomputer.tasks.ownership import TAG_WORKER_FLOW_RUN
from tests.prefect.test_real_prefect_server import (
    REPOSITORY,
    PrefectServer,
    _free_port,
    _start,
    _stop,
    _wait_for_state,
)

pytestmark = pytest.mark.slow

POOL = "sandboxes"

FLOWS = """
import socket
import time

from prefect import flow, get_run_logger


@flow
def greet(name: str = "sandbox") -> str:
    get_run_logger().info("hello %s from %s", name, socket.gethostname())
    return name


@flow
def fail() -> None:
    get_run_logger().info("about to fail")
    raise ValueError("this flow fails on purpose")


@flow
def linger() -> None:
    get_run_logger().info("lingering now")
    time.sleep(600)
"""

DEPLOY = """
import sys
from prefect import flow

for name in ("greet", "fail", "linger"):
    source = flow.from_source(sys.argv[1], f"flows.py:{name}")
    source.deploy(name=name, work_pool_name=sys.argv[2], print_next_steps=False)
# A new image (one more package): its build keeps the run in the worker's hands for a while.
flow.from_source(sys.argv[1], "flows.py:greet").deploy(
    name="fresh-image",
    work_pool_name=sys.argv[2],
    job_variables={"pip_packages": ["six"]},
    print_next_steps=False,
)
# Its sandbox starts, but its engine does not for ten minutes: the run stays Pending.
flow.from_source(sys.argv[1], "flows.py:greet").deploy(
    name="held",
    work_pool_name=sys.argv[2],
    job_variables={"command": "sleep 600; prefect flow-run execute"},
    print_next_steps=False,
)
"""


@dataclass
class Setup:
    prefect: PrefectServer
    opencomputer: LocalServer
    project: Path

    def cli(
        self, *args: str, timeout: float = 180, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "prefect", *args],
            # PWD as a shell in `cwd` sets it (prefect.yaml may read it as `{{ $PWD }}`).
            env={**self.prefect.env, "PWD": str(cwd)} if cwd else self.prefect.env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def python(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script, *args],
            env=self.prefect.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    async def sandboxes(self) -> list[str]:
        async with OpenComputerClient(
            api_key=self.opencomputer.api_key, api_url=self.opencomputer.url
        ) as client:
            return [
                sandbox.sandbox_id
                for sandbox in await client.sandboxes.list(status=None)
                if sandbox.status in ("running", "hibernated")
            ]

    async def logs(self, flow_run_id: Any, *, min_level: int = 0) -> list[str]:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        async with self.prefect.client() as prefect:
            logs = await prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        return [log.message for log in logs if log.level >= min_level]

    async def wait_for_log(
        self, flow_run_id: Any, text: str, timeout: float = 60, *, min_level: int = 0
    ) -> list[str]:
        """The run's log lines once one holds ``text`` (logs reach the API in batches, after states)."""
        deadline = time.monotonic() + timeout
        while True:
            logs = await self.logs(flow_run_id, min_level=min_level)
            if any(text in line for line in logs) or time.monotonic() > deadline:
                return logs
            await asyncio.sleep(0.5)

    async def no_sandbox_within(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while left := await self.sandboxes():
            assert time.monotonic() < deadline, f"sandboxes left: {left}"
            await asyncio.sleep(0.5)

    async def run(self, deployment: str) -> Any:
        async with self.prefect.client() as prefect:
            found = await prefect.read_deployment_by_name(deployment)
            return await prefect.create_flow_run_from_deployment(found.id)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tempfile.mkdtemp(prefix="prefect-worker-")
    project = Path(tempfile.mkdtemp(prefix="flow-project-"))
    (project / "flows.py").write_text(FLOWS)
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    # Sandboxes reach the Prefect API, and (for flows that make sandboxes themselves) this server's own API.
    opencomputer_port = _free_port()
    config = LocalServerConfig(
        data_dir=tmp_path_factory.mktemp("opencomputer"),
        port=opencomputer_port,
        allow_host_ports=(port, opencomputer_port),
    )
    with LocalServer(config) as opencomputer:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=home,
            PREFECT_API_URL=api_url,
            PREFECT_SERVER_API_PORT=str(port),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            PREFECT_WORKER_QUERY_SECONDS="1",
            PREFECT_WORKER_ENABLE_CANCELLATION="true",
            # A run stuck in Cancelling is handed to its worker's kill_infrastructure after 15 s, not 300.
            PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_CANCELLING_TIMEOUT_SECONDS="15",
            PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS="2",
            PREFECT_LOGGING_TO_API_BATCH_INTERVAL="0.5",
            DO_NOT_TRACK="1",
            OPENCOMPUTER_API_URL=opencomputer.url,
            OPENCOMPUTER_API_KEY=opencomputer.api_key,
        )
        server = _start(
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            env=env,
        )
        worker: subprocess.Popen[bytes] | None = None
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert server.poll() is None, "prefect server start exited"
                assert time.monotonic() < deadline, "prefect server did not become healthy"
                time.sleep(0.5)
            state = Setup(PrefectServer(api_url, env), opencomputer, project)
            created = state.cli("work-pool", "create", POOL, "--type", "opencomputer")
            assert created.returncode == 0, created.stdout + created.stderr
            deployed = subprocess.run(
                [sys.executable, "-c", DEPLOY, str(project), POOL],
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert deployed.returncode == 0, deployed.stdout + deployed.stderr
            log = open(Path(home) / "worker.log", "wb")  # noqa: SIM115 (closed with the worker)
            worker = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
                env=env,
                cwd=tempfile.gettempdir(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            yield state
        finally:
            if worker is not None:
                _stop(worker)
            _stop(server)
            shutil.rmtree(home, ignore_errors=True)
            shutil.rmtree(project, ignore_errors=True)


async def test_a_local_directory_deployment_completes_with_its_logs_and_leaves_no_sandbox(
    setup: Setup,
) -> None:
    flow_run = await setup.run("greet/greet")
    ended = await _wait_for_state(setup.prefect, flow_run.id, final=True, timeout=540)
    assert ended.state is not None and ended.state.is_completed(), (
        ended.state,
        await setup.logs(flow_run.id),
    )
    logs = await setup.wait_for_log(flow_run.id, "hello sandbox from")
    assert any("hello sandbox from" in line for line in logs), logs
    assert ended.infrastructure_pid and ended.infrastructure_pid.endswith(
        tuple(line.split()[2] for line in logs if line.startswith("Created sandbox"))
    ), (ended.infrastructure_pid, logs)
    await setup.no_sandbox_within(30)


async def test_a_flow_that_raises_ends_failed_with_its_error_in_the_logs(setup: Setup) -> None:
    flow_run = await setup.run("fail/fail")
    ended = await _wait_for_state(setup.prefect, flow_run.id, final=True, timeout=300)
    assert ended.state is not None and ended.state.is_failed(), ended.state
    logs = await setup.wait_for_log(flow_run.id, "this flow fails on purpose")
    assert any("this flow fails on purpose" in line for line in logs), logs
    await setup.no_sandbox_within(30)


async def test_cancelling_a_running_flow_run_kills_its_sandbox(setup: Setup) -> None:
    flow_run = await setup.run("linger/linger")
    await _wait_for_state(setup.prefect, flow_run.id, final=False, timeout=300)
    logs = await setup.wait_for_log(flow_run.id, "lingering now", timeout=120)
    assert any("lingering now" in line for line in logs), logs
    [sandbox] = await setup.sandboxes()
    async with OpenComputerClient(
        api_key=setup.opencomputer.api_key, api_url=setup.opencomputer.url
    ) as client:
        tags = (await client.sandboxes.get_tags(sandbox)).tags
    # What the reaper reads if this worker dies: whose sandbox it is.
    assert tags[TAG_WORKER_FLOW_RUN] == str(flow_run.id), tags
    cancelled = setup.cli("flow-run", "cancel", str(flow_run.id))
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    ended = await _wait_for_state(setup.prefect, flow_run.id, final=True, timeout=60)
    assert ended.state is not None and ended.state.is_cancelled(), ended.state
    await setup.no_sandbox_within(30)


async def test_a_pools_concurrency_limit_holds_one_slot_while_the_run_has_its_sandbox(setup: Setup) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    limit = "worker-sandboxes"
    async with setup.prefect.client() as prefect:
        await prefect.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=3))
        deployment = await prefect.read_deployment_by_name("linger/linger")
        flow_run = await prefect.create_flow_run_from_deployment(
            deployment.id, job_variables={"concurrency_limit": limit}
        )

    async def active_slots() -> int:
        async with setup.prefect.client() as prefect:
            return (await prefect.read_global_concurrency_limit_by_name(limit)).active_slots

    await setup.wait_for_log(flow_run.id, "lingering now", timeout=300)
    assert await active_slots() == 1
    cancelled = setup.cli("flow-run", "cancel", str(flow_run.id))
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    await setup.no_sandbox_within(60)
    for _ in range(120):  # given back by the kill, through the worker's keeper thread
        if await active_slots() == 0:
            break
        await asyncio.sleep(0.5)
    assert await active_slots() == 0


async def test_a_flow_process_killed_in_its_sandbox_ends_crashed_with_its_last_output_at_error(
    setup: Setup,
) -> None:
    flow_run = await setup.run("linger/linger")
    await _wait_for_state(setup.prefect, flow_run.id, final=False, timeout=300)
    logs = await setup.wait_for_log(flow_run.id, "lingering now", timeout=120)
    assert any("lingering now" in line for line in logs), logs
    [sandbox] = await setup.sandboxes()
    async with OpenComputerClient(
        api_key=setup.opencomputer.api_key, api_url=setup.opencomputer.url
    ) as client:
        await client.exec.run(sandbox, "sudo pkill -KILL -f 'flow-run execute|prefect.engine|python'")
    ended = await _wait_for_state(setup.prefect, flow_run.id, final=True, timeout=60)
    assert ended.state is not None and ended.state.is_crashed(), ended.state
    exited = "flow-run process exited with code"
    errors = await setup.wait_for_log(flow_run.id, exited, min_level=logging.ERROR)
    assert any(exited in line for line in errors), errors
    # Its own output, as the process printed it, is in the run's logs at ERROR.
    assert any(line.startswith("[") and "lingering now" in line for line in errors), errors
    await setup.no_sandbox_within(30)


async def test_a_run_stuck_in_cancelling_has_its_sandbox_killed_by_the_servers_teardown(setup: Setup) -> None:
    # Its engine never starts (the command sleeps first), so nothing in the sandbox answers the cancel:
    # only the server's CANCELLING-timeout message to the worker, handled by kill_infrastructure, ends it.
    flow_run = await setup.run("greet/held")
    deadline = time.monotonic() + 300
    async with setup.prefect.client() as prefect:
        while not (await prefect.read_flow_run(flow_run.id)).infrastructure_pid:
            assert time.monotonic() < deadline, "the held run never got its sandbox"
            await asyncio.sleep(0.5)
    assert len(await setup.sandboxes()) == 1
    cancelled = setup.cli("flow-run", "cancel", str(flow_run.id))
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    await setup.no_sandbox_within(90)
    ended = await _wait_for_state(setup.prefect, flow_run.id, final=True, timeout=60)
    assert ended.state is not None and ended.state.is_final(), ended.state


async def test_prefect_deploy_in_a_project_folder_with_no_git_remote_runs_on_the_pool(setup: Setup) -> None:
    # What the README shows: no prefect.yaml, no remote; the deployment pulls from the folder itself.
    deployed = setup.cli(
        "--no-prompt",
        "deploy",
        "flows.py:greet",
        "--name",
        "from-cli",
        "--pool",
        POOL,
        "--cron",
        "0 3 * * *",
        cwd=setup.project,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    flow_run = await setup.run("greet/from-cli")
    ended = await _wait_for_state(setup.prefect, flow_run.id, final=True, timeout=300)
    assert ended.state is not None and ended.state.is_completed(), (
        ended.state,
        await setup.logs(flow_run.id),
    )
    async with setup.prefect.client() as prefect:
        deployment = await prefect.read_deployment_by_name("greet/from-cli")
    assert [schedule.schedule.cron for schedule in deployment.schedules] == ["0 3 * * *"]  # type: ignore[union-attr]
    await setup.no_sandbox_within(30)


async def test_the_lifecycle_deployment_in_prefect_yaml_completes_in_a_sandbox_of_the_pool(
    setup: Setup,
) -> None:
    # deployments/prefect.yaml's entry for this pool, deployed from the repository root as its README says.
    deployed = setup.cli(
        "deploy",
        "--name",
        "lifecycle-in-a-sandbox",
        "--prefect-file",
        "deployments/prefect.yaml",
        cwd=REPOSITORY,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    # The flow makes sandboxes itself: its credentials name this server as a sandbox reaches it.
    async with setup.prefect.client() as prefect:
        await OpenComputerCredentials.aregister_type_and_schema(client=prefect)
        reachable = OpenComputerCredentials(
            api_key=setup.opencomputer.api_key,
            api_url=f"http://{HOST_ALIAS}:{urlsplit(setup.opencomputer.url).port}",
        )
        block_id = await reachable.asave("from-the-sandbox", overwrite=True, client=prefect)
        deployment = await prefect.read_deployment_by_name("sandbox-lifecycle/lifecycle-in-a-sandbox")
        flow_run = await prefect.create_flow_run_from_deployment(
            deployment.id, parameters={"credentials": {"$ref": {"block_document_id": str(block_id)}}}
        )

    ended = await _wait_for_state(setup.prefect, flow_run.id, final=True, timeout=540)

    assert ended.state is not None and ended.state.is_completed(), (
        ended.state,
        await setup.logs(flow_run.id),
    )
    await setup.no_sandbox_within(30)


DOOMED = """
import sys
from prefect import flow

flow.from_source(sys.argv[1], "flows.py:linger").deploy(
    name="doomed", work_pool_name="doomed", job_variables={"lost_worker_grace": 3}, print_next_steps=False
)
"""
REAP = """
import asyncio
from prefect_opencomputer.flows import reap_orphaned_sandboxes
asyncio.run(reap_orphaned_sandboxes())
"""


async def test_a_sigkilled_worker_takes_its_run_down_and_the_next_reaper_run_crashes_it_and_kills_its_sandbox(
    setup: Setup,
) -> None:
    created = setup.cli("work-pool", "create", "doomed", "--type", "opencomputer")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = setup.python(DOOMED, str(setup.project))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    worker = _start(
        sys.executable, "-m", "prefect", "worker", "start", "--pool", "doomed", env=setup.prefect.env
    )
    try:
        flow_run = await setup.run("linger/doomed")
        await _wait_for_state(setup.prefect, flow_run.id, final=False, timeout=300)
        logs = await setup.wait_for_log(flow_run.id, "lingering now", timeout=120)
        assert any("lingering now" in line for line in logs), logs
        os.killpg(worker.pid, signal.SIGKILL)
    finally:
        _stop(worker)
    [sandbox] = await setup.sandboxes()
    async with OpenComputerClient(
        api_key=setup.opencomputer.api_key, api_url=setup.opencomputer.url
    ) as client:
        deadline = time.monotonic() + 60
        while any(session.running for session in await client.exec.list(sandbox)):
            assert time.monotonic() < deadline, "the flow-run process outlived its worker's grace"
            await asyncio.sleep(0.5)

    reaped = setup.python(REAP)
    assert reaped.returncode == 0, reaped.stdout + reaped.stderr
    async with setup.prefect.client() as prefect:
        state = (await prefect.read_flow_run(flow_run.id)).state
    assert state is not None and state.is_crashed(), state
    assert "the worker that ran it is gone" in (state.message or ""), state.message
    await setup.no_sandbox_within(30)


async def test_cancelling_a_run_while_its_sandbox_starts_never_runs_it_and_leaves_no_sandbox(
    setup: Setup,
) -> None:
    flow_run = await setup.run("greet/fresh-image")
    # The worker builds the run's image: the run is Pending and in the worker's hands.
    logs = await setup.wait_for_log(flow_run.id, "[build", timeout=120)
    assert any("[build" in line for line in logs), logs
    cancelled = setup.cli("flow-run", "cancel", str(flow_run.id))
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    ended = await _wait_for_state(setup.prefect, flow_run.id, final=True, timeout=60)
    assert ended.state is not None and ended.state.is_cancelled(), ended.state
    await setup.wait_for_log(flow_run.id, "the sandbox is killed", timeout=300)
    logs = await setup.logs(flow_run.id)
    assert any("the sandbox is killed and the flow does not run" in line for line in logs), logs
    assert not any("hello sandbox from" in line for line in logs), logs
    await setup.no_sandbox_within(30)
