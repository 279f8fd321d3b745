"""Benchmark 1, client overhead: the same sequential calls through our client, raw httpx and the official SDK.

All three send the same request to the same sandbox on the same server: `POST .../exec/run` of
`sh -c true` (the body every one of them sends for a string command) and `GET /sandboxes/{id}`. Rounds are
interleaved, each in a rotating order, so a noisy moment on the machine lands on all three alike.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Awaitable, Callable

import httpx
from opencomputer import Sandbox as SdkSandbox

from bench import services
from bench.results import BenchmarkResult, Samples
from prefect_opencomputer.client import OpenComputerClient

EXEC_ROUNDS = 250
GET_ROUNDS = 300
WARMUP = 10
# Our client's pool settings (prefect_opencomputer/client/_transport.py), for the raw baseline.
KEEPALIVE = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def run(result: BenchmarkResult) -> None:
    with services.local_server() as server:
        asyncio.run(_measure(result, server.url, server.api_key))


async def _measure(result: BenchmarkResult, url: str, api_key: str) -> None:
    # The SDK reads these when no argument is given; set both so it cannot reach anything else.
    os.environ["OPENCOMPUTER_API_URL"] = url
    os.environ["OPENCOMPUTER_API_KEY"] = api_key
    exec_body = {"cmd": "sh", "args": ["-c", "true"], "timeout": 60}
    async with (
        OpenComputerClient(api_key=api_key, api_url=url) as ours,
        httpx.AsyncClient(
            base_url=f"{url}/api", headers={"X-API-Key": api_key}, timeout=30.0, limits=KEEPALIVE
        ) as raw,
    ):
        sandbox = await ours.sandboxes.create(template="base", timeout=600)
        sandbox_id = sandbox.sandbox_id
        sdk = await SdkSandbox.connect(sandbox_id, api_key=api_key, api_url=url)
        try:

            async def ours_exec() -> None:
                outcome = await ours.exec.run(sandbox_id, "true")
                assert outcome.exit_code == 0, outcome

            async def raw_exec() -> None:
                response = await raw.post(f"/sandboxes/{sandbox_id}/exec/run", json=exec_body)
                response.raise_for_status()
                assert response.json()["exitCode"] == 0

            async def sdk_exec() -> None:
                outcome = await sdk.exec.run("true")
                assert outcome.exit_code == 0, outcome

            async def ours_get() -> None:
                await ours.sandboxes.get(sandbox_id)

            async def raw_get() -> None:
                response = await raw.get(f"/sandboxes/{sandbox_id}")
                response.raise_for_status()
                response.json()

            async def sdk_get() -> None:
                # The SDK's only way to read a sandbox: connect() opens a new HTTP client each time.
                connected = await SdkSandbox.connect(sandbox_id, api_key=api_key, api_url=url)
                await connected.close()

            exec_samples = await _interleaved(
                EXEC_ROUNDS,
                {
                    "exec true: our client": ours_exec,
                    "exec true: raw httpx": raw_exec,
                    "exec true: SDK": sdk_exec,
                },
            )
            get_samples = await _interleaved(
                GET_ROUNDS,
                {
                    "GET sandbox: our client": ours_get,
                    "GET sandbox: raw httpx": raw_get,
                    "GET sandbox: SDK connect": sdk_get,
                },
            )
        finally:
            await sdk.close()
            await ours.sandboxes.kill(sandbox_id)

    for samples in (exec_samples, get_samples):
        mine, bare, official = samples
        result.rows += [bare.row(), official.row()]
        result.rows.append(
            mine.row(
                name=f"{mine.name} vs raw",
                baseline=bare,
                target="<= 1.10 x raw httpx",
                met=mine.p50 <= 1.10 * bare.p50,
            )
        )
        result.rows.append(
            mine.row(
                name=f"{mine.name} vs SDK", baseline=official, target="<= SDK", met=mine.p50 <= official.p50
            )
        )
        # Rounds are paired (same moment, same server state): the median of the differences is steadier.
        paired_raw = statistics.median(a - b for a, b in zip(mine.values, bare.values, strict=True))
        paired_sdk = statistics.median(a - b for a, b in zip(mine.values, official.values, strict=True))
        result.notes.append(
            f"{mine.name}: median of per-round differences {paired_raw:+.3f} ms against raw httpx, "
            f"{paired_sdk:+.3f} ms against the SDK."
        )
    result.notes.append(
        "Server and client share one process (the embedded server runs in a thread), as in `make demo`."
    )


async def _interleaved(rounds: int, calls: dict[str, Callable[[], Awaitable[None]]]) -> list[Samples]:
    samples = {name: Samples(name) for name in calls}
    names = list(calls)
    for _ in range(WARMUP):
        for name in names:
            await calls[name]()
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            with samples[name].time():
                await calls[name]()
    return [samples[name] for name in names]
