"""What the benchmarks run against: the embedded local server, its test stats, and a Prefect API."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from prefect_opencomputer.client import OpenComputerClient
from prefect_opencomputer.local import LocalServer, LocalServerConfig


@contextmanager
def local_server(*, test_routes: bool = False, max_running: int = 50) -> Iterator[LocalServer]:
    """The embedded OpenComputer-compatible server, as a user runs it.

    `test_routes` adds `/_test/stats` (live and peak sandbox counts), and with it the fault-injection and
    request-counting middleware that every request then passes through: only the fan-out needs it.
    `max_running` lifts the hosted cap of 50 running sandboxes, for the scale benchmark.
    """
    with tempfile.TemporaryDirectory(prefix="bench-local-", ignore_cleanup_errors=True) as data_dir:
        config = LocalServerConfig(
            data_dir=Path(data_dir), enable_test_routes=test_routes, max_running_sandboxes=max_running
        )
        with LocalServer(config) as server:
            yield server


def our_client(server: LocalServer) -> OpenComputerClient:
    return OpenComputerClient(api_key=server.api_key, api_url=server.url, timeout=120.0)


async def server_stats(server: LocalServer) -> dict[str, int]:
    """`GET /_test/stats`: live and peak sandbox counts, requests served."""
    async with httpx.AsyncClient(headers={"X-API-Key": server.api_key}, timeout=30) as http:
        response = await http.get(f"{server.url.rstrip('/')}/_test/stats")
        response.raise_for_status()
        stats: dict[str, int] = response.json()
        return stats


@contextmanager
def prefect_api() -> Iterator[None]:
    """A throwaway Prefect API on a temporary database, as the test suite uses.

    The runner gives each benchmark process its own `PREFECT_HOME` before Prefect is imported.
    """
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
