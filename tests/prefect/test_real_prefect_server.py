"""Against a real `prefect server start`: cancelling a served run, deploy + worker, and the Prefect UI.

These need what the test harness cannot give: a standalone Prefect server, with its UI, that a runner
(`serve`), a process worker and a browser talk to from their own processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling

from prefect_opencomputer.client import OpenComputerClient

REPOSITORY = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@dataclass
class PrefectServer:
    api_url: str
    env: dict[str, str]

    @asynccontextmanager
    async def client(self) -> AsyncIterator[PrefectClient]:
        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            async with get_client() as client:
                yield client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(*args: str, env: dict[str, str], cwd: str | None = None) -> subprocess.Popen[bytes]:
    """Start a process in a session of its own, so `_stop` can take its children down with it."""
    return subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process and everything in its session (it was started in one of its own)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


@pytest.fixture(scope="module")
def prefect_server(local_server: Any) -> Iterator[PrefectServer]:
    home = tempfile.mkdtemp(prefix="prefect-server-")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=home,
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="true",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PREFECT_WORKER_QUERY_SECONDS="1",
        DO_NOT_TRACK="1",
        OPENCOMPUTER_API_URL=local_server.url,
        OPENCOMPUTER_API_KEY=local_server.api_key,
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
        yield PrefectServer(api_url, env)
    finally:
        _stop(server)
        shutil.rmtree(home, ignore_errors=True)


async def _wait_for_state(server: PrefectServer, flow_run_id: Any, *, final: bool, timeout: float) -> FlowRun:
    deadline = time.monotonic() + timeout
    async with server.client() as prefect:
        while True:
            flow_run = await prefect.read_flow_run(flow_run_id)
            state = flow_run.state
            if state is not None and (state.is_final() if final else state.is_running()):
                return flow_run
            assert time.monotonic() < deadline, (
                f"flow run still {state.name if state else None}: {state.message if state else None}"
            )
            await asyncio.sleep(0.5)


async def _running_command(oc: OpenComputerClient, marker: str, timeout: float) -> None:
    """Wait until a command whose argv contains `marker` runs (not any earlier, short one)."""
    deadline = time.monotonic() + timeout
    while True:
        for sandbox in await oc.sandboxes.list():
            for session in await oc.exec.list(sandbox.sandbox_id):
                if session.running and marker in " ".join([session.command, *session.args]):
                    return
        assert time.monotonic() < deadline, f"no command with {marker!r} started running"
        await asyncio.sleep(0.3)


SERVE = """
from prefect_opencomputer.flows import sandbox_lifecycle
sandbox_lifecycle.serve(name="cancel-me")
"""


async def test_cancelling_a_served_run_mid_command_leaves_zero_sandboxes(
    prefect_server: PrefectServer, control: Any, oc: OpenComputerClient
) -> None:
    runner = _start(sys.executable, "-c", SERVE, env=prefect_server.env)
    try:
        async with prefect_server.client() as prefect:
            deadline = time.monotonic() + 60
            while True:
                try:
                    deployment = await prefect.read_deployment_by_name("sandbox-lifecycle/cancel-me")
                    break
                except Exception:
                    assert time.monotonic() < deadline, "the served deployment never appeared"
                    await asyncio.sleep(0.5)
            flow_run = await prefect.create_flow_run_from_deployment(
                deployment.id, parameters={"parameters": {"fork_command": "echo forked; sleep 600"}}
            )
        await _wait_for_state(prefect_server, flow_run.id, final=False, timeout=60)
        await _running_command(oc, "sleep 600", timeout=60)
        assert await control.live_sandboxes() == 2

        async with prefect_server.client() as prefect:
            await prefect.set_flow_run_state(flow_run.id, Cancelling(), force=True)
        ended = await _wait_for_state(prefect_server, flow_run.id, final=True, timeout=90)
        assert ended.state is not None and ended.state.is_cancelled(), ended.state
        deadline = time.monotonic() + 30
        while await control.live_sandboxes():
            assert time.monotonic() < deadline, "sandboxes outlived the cancelled run"
            await asyncio.sleep(0.3)
    finally:
        _stop(runner)


def _prefect(server: PrefectServer, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        # PWD as a shell in the repository sets it: prefect.yaml reads it as `{{ $PWD }}`.
        env={**server.env, "PWD": str(REPOSITORY)},
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_deploy_all_then_a_worker_completes_a_lifecycle_run(
    prefect_server: PrefectServer, control: Any
) -> None:
    registered = _prefect(prefect_server, "block", "register", "-m", "prefect_opencomputer")
    assert registered.returncode == 0 and "OpenComputer Credentials" in registered.stdout, registered.stdout
    created = _prefect(prefect_server, "work-pool", "create", "opencomputer", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    created = _prefect(prefect_server, "work-pool", "create", "sandboxes", "--type", "opencomputer")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _prefect(prefect_server, "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    async with prefect_server.client() as prefect:
        names = {
            "sandbox-lifecycle/lifecycle",
            "checkpoint-fan-out/fan-out",
            "reap-orphaned-sandboxes/reaper",
            "rebuild-golden-checkpoint/golden-checkpoint-nightly",
            "sandbox-lifecycle/lifecycle-in-a-sandbox",
        }
        deployments = {name: await prefect.read_deployment_by_name(name) for name in names}
        in_a_sandbox = deployments["sandbox-lifecycle/lifecycle-in-a-sandbox"]
        assert in_a_sandbox.work_pool_name == "sandboxes"
        pool = await prefect.read_work_pool("sandboxes")
        assert pool.type == "opencomputer"
        # The checkout it was deployed from, which the worker copies into the run's sandbox.
        assert in_a_sandbox.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPOSITORY)}}
        ]
        reaper = deployments["reap-orphaned-sandboxes/reaper"]
        assert [schedule.schedule.interval.total_seconds() for schedule in reaper.schedules] == [900]  # type: ignore[union-attr]
        golden = deployments["rebuild-golden-checkpoint/golden-checkpoint-nightly"]
        assert [schedule.schedule.cron for schedule in golden.schedules] == ["0 3 * * *"]  # type: ignore[union-attr]
        lifecycle = deployments["sandbox-lifecycle/lifecycle"]
        assert lifecycle.parameter_openapi_schema is not None
        assert "parameters" in lifecycle.parameter_openapi_schema["properties"]
        # No values of its own: the run form shows the flow's defaults, lists included.
        assert lifecycle.parameters == {}
        setup = lifecycle.parameter_openapi_schema["definitions"]["LifecycleParameters"]["properties"]
        assert setup["setup_commands"]["default"]
        flow_run = await prefect.create_flow_run_from_deployment(lifecycle.id)

    # Anywhere but the checkout: the entrypoints are module paths of the installed package.
    worker = _start(
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        "opencomputer",
        env=prefect_server.env,
        cwd=tempfile.gettempdir(),
    )
    try:
        ended = await _wait_for_state(prefect_server, flow_run.id, final=True, timeout=180)
    finally:
        _stop(worker)
    assert ended.state is not None and ended.state.is_completed(), ended.state
    assert await control.live_sandboxes() == 0


LIFECYCLE = """
import asyncio
from prefect_opencomputer.flows import sandbox_lifecycle
state = asyncio.run(sandbox_lifecycle(return_state=True))
print(state.state_details.flow_run_id)
"""
# What Debian's chromium needs to run headless as root on a machine with no network of its own.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# `make screenshots` sets this to docs/images: the README's pictures come from this test's run.
SCREENSHOTS_ENV = "PREFECT_OPENCOMPUTER_SCREENSHOTS"


@pytest.mark.browser
async def test_the_prefect_ui_shows_a_lifecycle_run_its_task_names_logs_and_artifact(
    prefect_server: PrefectServer, control: Any, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("no browser: `make test` installs Debian's chromium when run as root")
    from playwright.async_api import async_playwright

    from prefect_opencomputer.blocks.credentials import LOGO_PATH, LOGO_URL, OpenComputerCredentials

    shots = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    async with prefect_server.client() as prefect:
        await OpenComputerCredentials.aregister_type_and_schema(client=prefect)
    flow = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LIFECYCLE, env=prefect_server.env, stdout=PIPE, stderr=PIPE
    )
    stdout, stderr = await asyncio.wait_for(flow.communicate(), 180)
    assert flow.returncode == 0, stderr.decode()[-2000:]
    flow_run_id = stdout.decode().strip().splitlines()[-1]
    origin = prefect_server.api_url.removesuffix("/api")

    async with async_playwright() as playwright:
        # Playwright gives the browser a fresh, empty profile of its own.
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            # No internet here: the block's logo comes from the packaged copy of the published file.
            await page.route(LOGO_URL, lambda route: route.fulfill(path=str(LOGO_PATH)))
            await page.goto(f"{origin}/runs/flow-run/{flow_run_id}")
            # The run graph and the logs render the readable task run names and what the fork saw.
            for text in (
                "Completed",
                "sandbox-lifecycle",
                "create-sandbox[base]",
                "applied by the checkpoint patch",
            ):
                await page.get_by_text(text).first.wait_for(timeout=60_000)
            await page.wait_for_timeout(1500)  # let the graph finish laying out before the picture
            await page.screenshot(path=str(shots / "run-graph.png"))
            await page.get_by_text("Killed sandbox").first.scroll_into_view_if_needed()
            await page.screenshot(path=str(shots / "run-logs.png"))
            await page.get_by_text("Artifacts", exact=True).first.click()
            # The run's table artifact: its sandboxes, commands, checkpoints and kills.
            await page.get_by_text("Sandboxes, commands and checkpoints").first.wait_for(timeout=30_000)
            await page.get_by_text("Sandboxes, commands and checkpoints").first.click()
            await page.get_by_text("open_sandbox").first.wait_for(timeout=30_000)  # the table's kill rows
            await page.screenshot(path=str(shots / "run-artifacts.png"))
            # Its last rows: each sandbox's running time, memory GiB-seconds and cost estimate, and the total.
            await page.set_viewport_size({"width": 2100, "height": 1000})  # room for the cost columns
            await page.get_by_text("usage total").first.scroll_into_view_if_needed()
            await page.get_by_text("cost USD (estimate)").first.wait_for(timeout=30_000)
            await page.screenshot(path=str(shots / "run-cost.png"))
            await page.set_viewport_size({"width": 1400, "height": 1000})
            # The run's events: sandboxes created, forked and killed, the checkpoint made and deleted.
            await page.goto(f"{origin}/events?resource=prefect.flow-run.{flow_run_id}")
            await page.get_by_text("opencomputer.sandbox.killed").first.wait_for(timeout=60_000)
            await page.get_by_text("opencomputer.sandbox.killed").first.scroll_into_view_if_needed()
            await page.screenshot(path=str(shots / "run-events.png"))
            # The credentials block form, as a person saving a block sees it.
            await page.goto(f"{origin}/blocks/catalog/opencomputer-credentials/create")
            await page.get_by_text("API Key").first.wait_for(timeout=30_000)
            await page.screenshot(path=str(shots / "block-form.png"))
        finally:
            await browser.close()


@pytest.mark.browser
async def test_the_prefect_ui_shows_an_opencomputer_pools_job_variable_form(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("no browser: `make test` installs Debian's chromium when run as root")
    from playwright.async_api import async_playwright

    from prefect_opencomputer.blocks.credentials import LOGO_PATH, LOGO_URL

    shots = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    created = _prefect(prefect_server, "work-pool", "create", "flows-in-sandboxes", "--type", "opencomputer")
    assert created.returncode == 0, created.stdout + created.stderr
    origin = prefect_server.api_url.removesuffix("/api")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1600})
            await page.route(LOGO_URL, lambda route: route.fulfill(path=str(LOGO_PATH)))
            # The pool's edit page: its base job template's defaults, as a form of the job variables.
            await page.goto(f"{origin}/work-pools/work-pool/flows-in-sandboxes/edit")
            for text in ("Memory of the sandbox in MB.", "Fork a prepared checkpoint"):
                await page.get_by_text(text).first.wait_for(timeout=60_000)
            await page.get_by_text("The OpenComputer credentials block").first.scroll_into_view_if_needed()
            await page.wait_for_timeout(1000)  # let the form finish laying out before the picture
            await page.screenshot(path=str(shots / "work-pool-form.png"))
        finally:
            await browser.close()
