"""The `opencomputer` work pool type without a sandbox running a flow: registration, the pool's template,
cancellation's kill, bad credentials. Against the local server and the session's Prefect API.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import InfrastructureNotAvailable, InfrastructureNotFound
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr

from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import OpenComputerClient
from prefect_opencomputer.worker import OpenComputerJobConfiguration, OpenComputerWorker
from prefect_opencomputer.worker.worker import infrastructure_id


def _prefect_cli(*args: str, api_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = os.environ["PREFECT_HOME"]
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_default_template_is_typed_and_described_with_no_server() -> None:
    printed = _prefect_cli("work-pool", "get-default-base-job-template", "--type", "opencomputer")
    assert printed.returncode == 0, printed.stdout + printed.stderr
    template = json.loads(printed.stdout)
    variables = template["variables"]["properties"]
    for name in (
        "credentials",
        "template",
        "snapshot",
        "image",
        "checkpoint_id",
        "memory_mb",
        "cpu_count",
        "disk_mb",
        "idle_timeout",
        "env",
        "tags",
        "command",
        "working_dir",
        "kill_on_exit",
        "output_lines",
        "prefect_api_url",
    ):
        assert variables[name].get("description"), name
    assert variables["idle_timeout"]["exclusiveMinimum"] == 0
    assert variables["kill_on_exit"]["default"] is True
    assert template["job_configuration"]["checkpoint_id"] == "{{ checkpoint_id }}"


def test_prefect_work_pool_create_knows_the_opencomputer_type() -> None:
    created = _prefect_cli(
        "work-pool", "create", "made-by-the-cli", "--type", "opencomputer", api_url=PREFECT_API_URL.value()
    )
    assert created.returncode == 0, created.stdout + created.stderr
    shown = _prefect_cli("work-pool", "inspect", "made-by-the-cli", api_url=PREFECT_API_URL.value())
    assert "opencomputer" in shown.stdout, shown.stdout


def test_two_ways_to_start_are_refused() -> None:
    with pytest.raises(ValueError, match="at most one of template, snapshot, image and checkpoint_id"):
        OpenComputerJobConfiguration(template="base", checkpoint_id="0b6a-…")


def test_the_flow_run_command_gets_no_worker_paths_and_a_prefect_api_the_sandbox_reaches() -> None:
    configuration = OpenComputerJobConfiguration(
        env={
            "PREFECT_HOME": "/home/worker/.prefect",
            "PREFECT_LOCAL_STORAGE_PATH": "/home/worker/.prefect/storage",
            "PREFECT_API_URL": "http://127.0.0.1:4200/api",
            "GREETING": "hello",
        }
    )

    env = configuration.command_env(local_server=True)

    assert env == {"PREFECT_API_URL": "http://host.opencomputer.internal:4200/api", "GREETING": "hello"}


async def test_kill_infrastructure_kills_running_and_hibernated_sandboxes_and_knows_what_is_not_its_own(
    credentials: OpenComputerCredentials, oc: OpenComputerClient, control: Any
) -> None:
    worker = OpenComputerWorker(work_pool_name="kills")
    configuration = OpenComputerJobConfiguration(credentials=credentials)
    running = await oc.sandboxes.create(timeout=300)
    hibernated = await oc.sandboxes.create(timeout=300)
    await oc.sandboxes.hibernate(hibernated.sandbox_id)

    for sandbox in (running, hibernated):
        await worker.kill_infrastructure(infrastructure_id(oc.api_base, sandbox.sandbox_id), configuration)
        assert (await oc.sandboxes.get(sandbox.sandbox_id)).status == "stopped"
    assert await control.live_sandboxes() == 0

    with pytest.raises(InfrastructureNotFound):
        await worker.kill_infrastructure(infrastructure_id(oc.api_base, running.sandbox_id), configuration)
    with pytest.raises(InfrastructureNotFound):
        await worker.kill_infrastructure(infrastructure_id(oc.api_base, "sb-00000000"), configuration)
    elsewhere = await oc.sandboxes.create(timeout=300)
    with pytest.raises(InfrastructureNotAvailable, match=r"runs on https://elsewhere\.example/api"):
        await worker.kill_infrastructure(
            infrastructure_id("https://elsewhere.example/api", elsewhere.sandbox_id), configuration
        )
    assert await oc.sandboxes.is_running(elsewhere.sandbox_id)
    with pytest.raises(InfrastructureNotAvailable):
        await worker.kill_infrastructure("12345", configuration)
    await oc.sandboxes.kill(elsewhere.sandbox_id)


async def test_a_bad_credentials_block_ends_the_run_crashed_saying_so(
    local_server: Any, control: Any, records: Any
) -> None:
    wrong_key = "osb_this-key-is-wrong-0123456789"
    block_id = await OpenComputerCredentials(api_key=SecretStr(wrong_key), api_url=local_server.url).save(
        "wrong-key", overwrite=True
    )
    async with (
        get_client() as prefect,
        OpenComputerWorker(work_pool_name="bad-credentials", create_pool_if_not_found=True) as worker,
    ):
        await worker.sync_with_backend()
        flow_id = await prefect.create_flow_from_name("never-runs")
        deployment_id = await prefect.create_deployment(
            flow_id,
            "bad-credentials",
            work_pool_name="bad-credentials",
            entrypoint="flows.py:never_runs",
            job_variables={"credentials": {"$ref": {"block_document_id": str(block_id)}}},
        )
        flow_run = await prefect.create_flow_run_from_deployment(deployment_id)
        await worker.get_and_submit_flow_runs()
        for _ in range(120):
            state = (await prefect.read_flow_run(flow_run.id)).state
            if state is not None and state.is_final():
                break
            await asyncio.sleep(0.5)
    assert state is not None and state.is_crashed(), state
    assert "refused the credentials" in (state.message or ""), state.message
    logs = await records.logs(flow_run.id)
    assert not any(wrong_key in line for line in logs)
    assert wrong_key not in (state.message or "")
    assert await control.live_sandboxes() == 0


async def test_the_reaper_kills_worker_sandboxes_of_ended_runs_and_crashes_runs_whose_sandbox_is_gone(
    credentials: OpenComputerCredentials, oc: OpenComputerClient, control: Any
) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Completed, Running

    from prefect_opencomputer.flows import reap_orphaned_sandboxes
    from prefect_opencomputer.tasks.ownership import CREATED_BY, TAG_CREATED_BY, TAG_WORKER_FLOW_RUN

    async with get_client() as prefect:
        await prefect.create_work_pool(WorkPoolCreate(name="reaped", type="opencomputer"), overwrite=True)
        flow_id = await prefect.create_flow_from_name("reaped")
        deployment_id = await prefect.create_deployment(
            flow_id, "reaped", work_pool_name="reaped", entrypoint="flows.py:reaped"
        )
        ended, lost, abandoned, alive = [
            await prefect.create_flow_run_from_deployment(deployment_id) for _ in range(4)
        ]

        async def worker_sandbox(flow_run: Any) -> str:
            tags = {TAG_CREATED_BY: CREATED_BY, TAG_WORKER_FLOW_RUN: str(flow_run.id)}
            sandbox = await oc.sandboxes.create(timeout=300)
            await oc.sandboxes.set_tags(sandbox.sandbox_id, tags)
            await prefect.update_flow_run(
                flow_run.id, infrastructure_pid=infrastructure_id(oc.api_base, sandbox.sandbox_id)
            )
            return sandbox.sandbox_id

        ended_sandbox, lost_sandbox, abandoned_sandbox, alive_sandbox = [
            await worker_sandbox(run) for run in (ended, lost, abandoned, alive)
        ]
        await oc.sandboxes.kill(lost_sandbox)  # as if the machine under it went away
        # The live run's process runs; the abandoned run's died with its worker.
        await oc.exec.start(alive_sandbox, "sleep", args=["600"])
        await prefect.set_flow_run_state(ended.id, Completed(), force=True)
        for run in (lost, abandoned, alive):
            await prefect.set_flow_run_state(run.id, Running(), force=True)

        await reap_orphaned_sandboxes(credentials=credentials)

        assert not await oc.sandboxes.is_running(ended_sandbox)
        assert await oc.sandboxes.is_running(alive_sandbox)
        crashed = (await prefect.read_flow_run(lost.id)).state
        assert crashed is not None and crashed.is_crashed(), crashed
        assert f"its sandbox {lost_sandbox} is stopped" in (crashed.message or "")
        crashed = (await prefect.read_flow_run(abandoned.id)).state
        assert crashed is not None and crashed.is_crashed(), crashed
        assert "runs no flow-run process" in (crashed.message or ""), crashed.message
        assert not await oc.sandboxes.is_running(abandoned_sandbox)
        still = (await prefect.read_flow_run(alive.id)).state
        assert still is not None and still.is_running(), still
    await oc.sandboxes.kill(alive_sandbox)


async def test_run_waits_out_a_full_quota_and_reports_a_failing_command_with_its_output(
    credentials: OpenComputerCredentials, control: Any, records: Any
) -> None:
    async with (
        get_client() as prefect,
        OpenComputerWorker(work_pool_name="direct", create_pool_if_not_found=True) as worker,
    ):
        await worker.sync_with_backend()
        flow_id = await prefect.create_flow_from_name("direct")
        deployment_id = await prefect.create_deployment(
            flow_id, "direct", work_pool_name="direct", entrypoint="flows.py:direct"
        )
        flow_run = await prefect.create_flow_run_from_deployment(deployment_id)
        configuration = OpenComputerJobConfiguration(
            credentials=credentials,
            template="base",
            command="echo first line; sleep 2; echo last words >&2; exit 3",
        )
        configuration.prepare_for_flow_run(flow_run)
        # The org stays full past the client's own retries (4 attempts).
        await control.fault("POST", "/api/sandboxes", status=429, times=5)
        result = await worker.run(flow_run, configuration)
    assert result.status_code == 3
    logs = await records.wait_for_log(flow_run.id, "[stderr] last words")
    assert sum("Sandbox quota reached" in line for line in logs) == 1, logs
    assert "first line" in logs, logs
    assert any("exited with code 3" in line for line in logs), logs
    assert "[stderr] last words" in logs, logs
    assert await control.live_sandboxes() == 0
