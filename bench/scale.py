"""Benchmark 5, scale: the server with 1, 10, 50 and 100 live, idle sandboxes.

At each size: the server process's RSS, what the server and every process it started cost together (sum
of PSS, so shared pages count once), the host kernel's own memory (slab, kernel stacks, page tables: what
namespaces, mounts and processes cost outside any process), and the p50 of `exec true` spread over the
live sandboxes. Memory per idle sandbox is the growth since the server had none, divided by the count.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random

from bench import memory, services
from bench.results import BenchmarkResult, Row, Samples
from prefect_opencomputer.client import OpenComputerClient

SIZES = (1, 10, 50, 100)
EXECS = 80
WARMUP = 5
CREATE_BATCH = 10
_SETTLE_SECONDS = 1.0


def run(result: BenchmarkResult) -> None:
    with services.local_server(max_running=max(SIZES)) as server:
        asyncio.run(_measure(result, services.our_client(server)))


def _snapshot() -> tuple[memory.TreeMemory, int]:
    gc.collect()
    return memory.tree_memory(os.getpid()), memory.kernel_kib()


async def _measure(result: BenchmarkResult, oc: OpenComputerClient) -> None:
    async with oc:
        # Touch the server once so its lazily built state (the layer mask, imports) is in the baseline.
        warm = await oc.sandboxes.create(template="base", timeout=600)
        await oc.exec.run(warm.sandbox_id, ["true"])
        await oc.sandboxes.kill(warm.sandbox_id)
        await asyncio.sleep(_SETTLE_SECONDS)
        empty, empty_kernel = _snapshot()

        live: list[str] = []
        exec_at: dict[int, Samples] = {}
        try:
            for size in SIZES:
                while len(live) < size:
                    batch = min(CREATE_BATCH, size - len(live))
                    made = await asyncio.gather(
                        *(oc.sandboxes.create(template="base", timeout=600) for _ in range(batch))
                    )
                    live += [sandbox.sandbox_id for sandbox in made]
                await asyncio.sleep(_SETTLE_SECONDS)
                tree, kernel = _snapshot()
                exec_at[size] = await _exec_p50(oc, live, size)
                _memory_rows(result, size, empty, empty_kernel, tree, kernel)
            # Back to one live sandbox and measure again: the baseline pools both, so a machine that got
            # busier (or quieter) during the run does not pass for an effect of the sandbox count.
            await asyncio.gather(*(oc.sandboxes.kill(sandbox_id) for sandbox_id in live[1:]))
            del live[1:]
            again = await _exec_p50(oc, live, 1)
            exec_at[1].values += again.values
        finally:
            await asyncio.gather(*(oc.sandboxes.kill(sandbox_id) for sandbox_id in live))

    one = exec_at[1]
    one.name = "exec true at 1 live (before and after)"
    for size, samples in exec_at.items():
        if size == 1:
            result.rows.append(samples.row())
            continue
        ratio = samples.p50 / one.p50
        target = "<= 1.2 x at 1" if size == max(SIZES) else ""
        met = ratio <= 1.2 if target else None
        result.rows.append(samples.row(baseline=one, target=target, met=met))


async def _exec_p50(oc: OpenComputerClient, live: list[str], size: int) -> Samples:
    samples = Samples(f"exec true at {size} live")
    picks = random.Random(size)
    for _ in range(WARMUP):
        await oc.exec.run(live[0], ["true"])
    for _ in range(EXECS):
        sandbox_id = picks.choice(live)
        with samples.time():
            outcome = await oc.exec.run(sandbox_id, ["true"])
        assert outcome.exit_code == 0, outcome
    return samples


def _memory_rows(
    result: BenchmarkResult,
    size: int,
    empty: memory.TreeMemory,
    empty_kernel: int,
    tree: memory.TreeMemory,
    kernel: int,
) -> None:
    mib = 1024.0
    result.rows.append(Row(name=f"server RSS at {size} live", n=1, p50=tree.root_rss_kib / mib, unit="MB"))
    result.rows.append(
        Row(
            name=f"server + sandbox processes (PSS) at {size} live",
            n=1,
            p50=tree.total_pss_kib / mib,
            unit="MB",
        )
    )
    per_sandbox_user = (tree.total_pss_kib - empty.total_pss_kib) / size / mib
    per_sandbox_kernel = (kernel - empty_kernel) / size / mib
    judged = size == max(SIZES)
    result.rows.append(
        Row(
            name=f"memory per idle sandbox at {size} (processes + kernel)",
            n=size,
            p50=per_sandbox_user + per_sandbox_kernel,
            unit="MB",
            target="<= 2 MB" if judged else "",
            met=per_sandbox_user + per_sandbox_kernel <= 2.0 if judged else None,
        )
    )
    result.notes.append(
        f"At {size} live: {tree.descendants} processes under the server; per sandbox "
        f"{per_sandbox_user:.2f} MB in processes (PSS) + {per_sandbox_kernel:.2f} MB of kernel memory."
    )
