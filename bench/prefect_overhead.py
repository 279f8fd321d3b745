"""Benchmark 3, Prefect overhead: `run_command` as a task against the direct client call, in one flow.

Both run `sh -c true` in the same sandbox, interleaved, inside one flow run on a throwaway Prefect API.
Two more figures split the difference: the client's streamed exec (`exec.stream`, the wire path the task
uses so that output reaches the run log while the command runs) and an empty Prefect task (what Prefect
itself costs per task run).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from bench import services
from bench.results import BenchmarkResult, Samples
from prefect_opencomputer.blocks import OpenComputerCredentials
from prefect_opencomputer.client import ExecExit
from prefect_opencomputer.local import LocalServer
from prefect_opencomputer.tasks import arun_command

ROUNDS = 40
WARMUP = 3
Timings = dict[str, list[float]]


@task(cache_policy=NO_CACHE)
async def empty_task() -> None:
    return None


@flow(name="bench-prefect-overhead", log_prints=False)
async def overhead_flow(sandbox_id: str, rounds: int, warmup: int) -> Timings:
    # No fields set: the block reads the key and URL from this process's environment.
    credentials = OpenComputerCredentials()
    async with credentials.get_client() as oc:

        async def as_task() -> None:
            outcome = await arun_command(sandbox_id, "true", credentials=credentials)
            assert outcome.exit_code == 0

        async def direct() -> None:
            outcome = await oc.exec.run(sandbox_id, "true")
            assert outcome.exit_code == 0

        async def streamed() -> None:
            codes = [
                event.exit_code
                async for event in oc.exec.stream(sandbox_id, "sh", args=["-c", "true"])
                if isinstance(event, ExecExit)
            ]
            assert codes == [0], codes

        async def prefect_only() -> None:
            await empty_task()

        calls: dict[str, Callable[[], Awaitable[None]]] = {
            "run_command task": as_task,
            "direct exec.run": direct,
            "direct exec.stream": streamed,
            "empty Prefect task": prefect_only,
        }
        timings: Timings = {name: [] for name in calls}
        for index in range(warmup + rounds):
            for name, call in calls.items():
                started = time.perf_counter()
                await call()
                if index >= warmup:
                    timings[name].append((time.perf_counter() - started) * 1000)
        return timings


def run(result: BenchmarkResult) -> None:
    with services.local_server() as server:
        os.environ["OPENCOMPUTER_API_URL"] = server.url
        os.environ["OPENCOMPUTER_API_KEY"] = server.api_key
        with services.prefect_api():
            timings = asyncio.run(_measure(server))
    samples = {}
    for name, values in timings.items():
        samples[name] = Samples(name)
        samples[name].values = values
    task_run, direct = samples["run_command task"], samples["direct exec.run"]
    overhead = task_run.p50 - direct.p50
    result.rows.append(direct.row())
    result.rows.append(task_run.row(baseline=direct, target="<= direct + 10 ms", met=overhead <= 10.0))
    result.rows.append(samples["direct exec.stream"].row(baseline=direct))
    result.rows.append(samples["empty Prefect task"].row())
    result.notes.append(
        f"Task overhead over the direct call: {overhead:+.1f} ms at p50 "
        f"(streamed exec {samples['direct exec.stream'].p50 - direct.p50:+.1f} ms, "
        f"an empty Prefect task {samples['empty Prefect task'].p50:.1f} ms)."
    )


async def _measure(server: LocalServer) -> Timings:
    async with services.our_client(server) as oc:
        sandbox = await oc.sandboxes.create(template="base", timeout=600)
        try:
            return await overhead_flow(sandbox.sandbox_id, ROUNDS, WARMUP)
        finally:
            await oc.sandboxes.kill(sandbox.sandbox_id)
