"""Benchmark 4, fan-out: 20 forks of one checkpoint, each running `sleep 1`, against one fork+run.

The baseline is a single fork + `sleep 1` + kill. The fan-out runs 20 of those at once; then again with at
most 5 in flight (an `asyncio.Semaphore`), and the server's own count of live sandboxes (`/_test/stats`)
shows whether the cap held. Last, on a throwaway Prefect API, the same 20 forks each holding a slot of a
Prefect global concurrency limit of 20 (the integration's `concurrency_limit=`: a lease taken before the
fork, given back after the kill) against the same 20 without it, rounds interleaved: the limit's overhead at
the same parallelism.
"""

from __future__ import annotations

import asyncio
import time

from bench import services
from bench.results import BenchmarkResult, Row, Samples
from prefect_opencomputer.client import OpenComputerClient
from prefect_opencomputer.local import LocalServer
from prefect_opencomputer.tasks import quota

WIDTH = 20
CAP = 5
SINGLE_ROUNDS = 3
LIMIT_ROUNDS = 3
LIMIT_NAME = "bench-opencomputer-sandboxes"


def run(result: BenchmarkResult) -> None:
    with services.local_server(test_routes=True) as server:
        asyncio.run(_measure(result, server))
        with services.prefect_api():
            asyncio.run(_measure_limit(result, server))


async def _fork_and_run(oc: OpenComputerClient, checkpoint_id: str) -> None:
    fork = await oc.checkpoints.fork(checkpoint_id)
    try:
        outcome = await oc.exec.run(fork.sandbox_id, "sleep 1")
        assert outcome.exit_code == 0, outcome
    finally:
        await oc.sandboxes.kill(fork.sandbox_id)


async def _measure(result: BenchmarkResult, server: LocalServer) -> None:
    async with services.our_client(server) as oc:
        source = await oc.sandboxes.create(template="base", timeout=600)
        try:
            await oc.files.write(source.sandbox_id, "/home/sandbox/state.txt", "forked state\n")
            checkpoint = await oc.checkpoints.create(source.sandbox_id, "fanout")
            checkpoint = await oc.checkpoints.wait_ready(
                source.sandbox_id, checkpoint.id, timeout=120, poll_interval=0.01
            )

            single = Samples("one fork + sleep 1")
            for _ in range(SINGLE_ROUNDS):
                with single.time():
                    await _fork_and_run(oc, checkpoint.id)
            result.rows.append(single.row())

            # The source sandbox stays live throughout: the fan-out's own peak is the server's minus it.
            live_before = (await services.server_stats(server))["liveSandboxes"]
            gate = asyncio.Semaphore(CAP)

            async def capped() -> None:
                async with gate:
                    await _fork_and_run(oc, checkpoint.id)

            started = time.perf_counter()
            await asyncio.gather(*(capped() for _ in range(WIDTH)))
            capped_ms = (time.perf_counter() - started) * 1000
            peak = (await services.server_stats(server))["peakSandboxes"] - live_before

            started = time.perf_counter()
            await asyncio.gather(*(_fork_and_run(oc, checkpoint.id) for _ in range(WIDTH)))
            wide_ms = (time.perf_counter() - started) * 1000
            stats = await services.server_stats(server)
        finally:
            await oc.sandboxes.kill(source.sandbox_id)

    result.rows.append(
        Row(
            name=f"fan-out of {WIDTH}, wall time",
            n=1,
            p50=wide_ms,
            baseline=single.name,
            baseline_p50=single.p50,
            target="<= 2 x one fork+run",
            met=wide_ms <= 2 * single.p50,
        )
    )
    result.rows.append(
        Row(
            name=f"fan-out of {WIDTH}, cap {CAP}, wall time",
            n=1,
            p50=capped_ms,
            baseline=single.name,
            baseline_p50=single.p50,
        )
    )
    result.rows.append(
        Row(
            name=f"peak live sandboxes, cap {CAP}",
            n=1,
            p50=peak,
            unit="",
            target=f"<= {CAP}",
            met=peak <= CAP,
        )
    )
    result.notes.append(
        f"Server stats after the run: {stats['peakSandboxes']} peak live sandboxes "
        f"(uncapped fan-out plus the source), {stats['liveSandboxes']} live."
    )


async def _fork_and_run_holding_a_slot(oc: OpenComputerClient, checkpoint_id: str) -> None:
    lease = await quota.take_slot(LIMIT_NAME, strict=True)
    assert lease is not None
    try:
        await _fork_and_run(oc, checkpoint_id)
    finally:
        await quota.give_back(lease)


async def _measure_limit(result: BenchmarkResult, server: LocalServer) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    async with get_client() as prefect:
        await prefect.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=LIMIT_NAME, limit=WIDTH)
        )
    unlimited = Samples(f"fan-out of {WIDTH}, no limit")
    limited = Samples(f"fan-out of {WIDTH}, concurrency limit of {WIDTH}")
    async with services.our_client(server) as oc:
        source = await oc.sandboxes.create(template="base", timeout=600)
        try:
            checkpoint = await oc.checkpoints.create(source.sandbox_id, "fanout-limit")
            checkpoint = await oc.checkpoints.wait_ready(
                source.sandbox_id, checkpoint.id, timeout=120, poll_interval=0.01
            )
            for _ in range(LIMIT_ROUNDS):
                with unlimited.time():
                    await asyncio.gather(*(_fork_and_run(oc, checkpoint.id) for _ in range(WIDTH)))
                with limited.time():
                    await asyncio.gather(
                        *(_fork_and_run_holding_a_slot(oc, checkpoint.id) for _ in range(WIDTH))
                    )
        finally:
            await oc.sandboxes.kill(source.sandbox_id)
    result.rows.append(unlimited.row())
    result.rows.append(
        limited.row(
            baseline=unlimited,
            target="<= 1.1 x no limit",
            met=limited.p50 <= 1.1 * unlimited.p50,
        )
    )
