"""Benchmark 6, the `opencomputer` work pool: submit-to-Completed of a trivial flow run.

Three pools in one run, against one Prefect API and one local server: (a) Prefect's process worker, (b) the
`opencomputer` pool's first run, which builds its image (a cold cache), (c) its later runs, which start
from the cached image. Each worker runs as `prefect worker start` and polls every second; a run counts
from its creation to the moment its Completed state is read (polled every 0.1 s). Also: creation to the
flow's first log line, as its logs store it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.results import BenchmarkResult, Samples
from prefect_opencomputer.local import LocalServer, LocalServerConfig

ROUNDS = 3
FLOW = """
from prefect import flow, get_run_logger


@flow
def trivial() -> int:
    get_run_logger().info("trivial flow ran")
    return 1
"""
DEPLOY = """
import sys
from prefect import flow

flow.from_source(sys.argv[1], "flows.py:trivial").deploy(
    name=sys.argv[2], work_pool_name=sys.argv[2], print_next_steps=False
)
"""


def run(result: BenchmarkResult) -> None:

    project = Path(tempfile.mkdtemp(prefix="bench-flow-"))
    (project / "flows.py").write_text(FLOW)
    try:
        _run_in(project, result)
    finally:
        shutil.rmtree(project, ignore_errors=True)


def _run_in(project: Path, result: BenchmarkResult) -> None:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=90),
        tempfile.TemporaryDirectory(prefix="bench-local-", ignore_cleanup_errors=True) as data_dir,
    ):
        api_url = str(PREFECT_API_URL.value())
        port = urlsplit(api_url).port
        assert port is not None
        config = LocalServerConfig(data_dir=Path(data_dir), allow_host_ports=(port,))
        with LocalServer(config) as server:
            env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
            env.update(
                PREFECT_API_URL=api_url,
                PREFECT_HOME=os.environ.get("PREFECT_HOME", tempfile.mkdtemp()),
                PREFECT_WORKER_QUERY_SECONDS="1",
                PREFECT_LOGGING_TO_API_BATCH_INTERVAL="0.3",
                DO_NOT_TRACK="1",
                OPENCOMPUTER_API_URL=server.url,
                OPENCOMPUTER_API_KEY=server.api_key,
            )
            workers = []
            try:
                for pool, kind in (("process", "process"), ("opencomputer", "opencomputer")):
                    _cli(env, "work-pool", "create", pool, "--type", kind)
                    subprocess.run(
                        [sys.executable, "-c", DEPLOY, str(project), pool], env=env, check=True, timeout=300
                    )
                    workers.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool],
                            env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            start_new_session=True,
                        )
                    )
                asyncio.run(_measure(result))
            finally:
                for worker in workers:
                    worker.terminate()
                    worker.wait(30)


def _cli(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "prefect", *args], env=env, check=True, timeout=120, capture_output=True
    )


async def _measure(result: BenchmarkResult) -> None:
    from prefect.client.orchestration import get_client

    process = Samples("(a) process worker")
    cold = Samples("(b) opencomputer, image not cached")
    cached = Samples("(c) opencomputer, cached image")
    first_log = {name: Samples(f"first flow log, {name}") for name in ("process", "cached")}
    async with get_client() as prefect:
        deployments = {
            pool: (await prefect.read_deployment_by_name(f"trivial/{pool}")).id
            for pool in ("process", "opencomputer")
        }
        await _submit(prefect, deployments["process"])  # warm the process worker's imports too
        total, log_at = await _submit(prefect, deployments["opencomputer"])
        cold.add_seconds(total)
        for _ in range(ROUNDS):
            total, log_at = await _submit(prefect, deployments["process"])
            process.add_seconds(total)
            first_log["process"].add_seconds(log_at)
            total, log_at = await _submit(prefect, deployments["opencomputer"])
            cached.add_seconds(total)
            first_log["cached"].add_seconds(log_at)
    result.rows.append(process.row())
    result.rows.append(cold.row(baseline=process))
    result.rows.append(
        cached.row(baseline=process, target="<= 1.5x (a)", met=cached.p50 <= 1.5 * process.p50)
    )
    for samples in first_log.values():
        result.rows.append(samples.row())
    result.notes.append(
        "Workers poll every second (PREFECT_WORKER_QUERY_SECONDS=1), which both pools pay alike; the cold "
        "run includes building the image (pip install of Prefect from PyPI) and checkpointing it."
    )


async def _submit(prefect: Any, deployment_id: Any) -> tuple[float, float]:
    """Seconds from creating a run to reading it Completed, and to its flow's first log line."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    started = time.perf_counter()
    flow_run = await prefect.create_flow_run_from_deployment(deployment_id)
    while True:
        state = (await prefect.read_flow_run(flow_run.id)).state
        if state is not None and state.is_final():
            break
        await asyncio.sleep(0.1)
    total = time.perf_counter() - started
    if not state.is_completed():
        raise RuntimeError(f"the benchmark's flow run ended {state.name}: {state.message}")
    flow_logs: list[Any] = []
    for _ in range(100):  # logs reach the API in batches, a moment after the state
        logs = await prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
        flow_logs = [log for log in logs if log.message == "trivial flow ran"]
        if flow_logs:
            break
        await asyncio.sleep(0.1)
    created = flow_run.created.timestamp()
    first = (flow_logs[0].timestamp.timestamp() - created) if flow_logs else float("nan")
    return total, first
