"""Prefect fixtures: one real Prefect API for the session, and the local OpenComputer server per test.

The Prefect API is `prefect_test_harness()` (a real server subprocess on a temporary database), started
once. Every test starts from a clean local server (`/_test/reset`), with `OPENCOMPUTER_API_URL` and
`OPENCOMPUTER_API_KEY` pointing at it, so flows run with their default (environment) credentials.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before Prefect is imported: no telemetry, and no sharing of a developer's own Prefect home.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="prefect-home-"))
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
# Ship run logs to the API quickly, so tests can watch them arrive while a command runs.
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.25")

import httpx  # noqa: E402
import pytest  # noqa: E402
from prefect.settings import PREFECT_HOME, temporary_settings  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from prefect_opencomputer.blocks import OpenComputerCredentials  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[None]:
    """One Prefect API for every test of this directory (it takes seconds to start)."""
    with (
        temporary_settings(updates={PREFECT_HOME: _PREFECT_HOME}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield


@dataclass
class ServerControl:
    """The local server's test routes: reset, stats, fault injection."""

    http: httpx.AsyncClient

    async def reset(self) -> None:
        (await self.http.post("/_test/reset")).raise_for_status()

    async def stats(self) -> dict[str, int]:
        response = await self.http.get("/_test/stats")
        response.raise_for_status()
        stats: dict[str, int] = response.json()
        return stats

    async def live_sandboxes(self) -> int:
        return (await self.stats())["liveSandboxes"]

    async def fault(self, method: str, path: str, **fault: Any) -> None:
        (
            await self.http.post("/_test/faults", json={"method": method, "path": path, **fault})
        ).raise_for_status()

    async def clear_faults(self) -> None:
        (await self.http.delete("/_test/faults")).raise_for_status()


@pytest.fixture
async def control(local_server: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ServerControl]:
    """A clean local server, the environment pointing at it, and its test routes."""
    monkeypatch.setenv("OPENCOMPUTER_API_URL", local_server.url)
    monkeypatch.setenv("OPENCOMPUTER_API_KEY", local_server.api_key)
    async with httpx.AsyncClient(
        base_url=local_server.url, headers={"X-API-Key": local_server.api_key}, timeout=60
    ) as http:
        server = ServerControl(http)
        await server.reset()
        try:
            yield server
        finally:
            await server.clear_faults()


@pytest.fixture
def sync_live_sandboxes(local_server: Any) -> Callable[[], int]:
    """For `def` flows and tests: how many sandboxes the local server runs now."""

    def count() -> int:
        response = httpx.get(f"{local_server.url}/_test/stats", headers={"X-API-Key": local_server.api_key})
        response.raise_for_status()
        live: int = response.json()["liveSandboxes"]
        return live

    return count


@pytest.fixture
def credentials(local_server: Any, control: ServerControl) -> OpenComputerCredentials:
    """Credentials for the local server, as a user would build the block."""
    return OpenComputerCredentials(api_key=SecretStr(local_server.api_key), api_url=local_server.url)


class PrefectRecords:
    """What the Prefect API stored about runs: logs, task runs, artifacts, events."""

    async def logs(self, flow_run_id: Any) -> list[str]:
        """The run's log messages stored by the API, after sending what this process still holds."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
        from prefect.logging.handlers import APILogHandler

        await APILogHandler.aflush()
        async with get_client() as prefect:
            logs = await prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        return [log.message for log in logs]

    async def wait_for_log(self, flow_run_id: Any, text: str, *, timeout: float = 15.0) -> list[str]:
        """The run's logs once one contains `text` (logs reach the API in batches, a moment later)."""
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            logs = await self.logs(flow_run_id)
            if any(text in line for line in logs) or loop.time() > deadline:
                return logs
            await asyncio.sleep(0.2)

    async def task_run_names(
        self, flow_run_id: Any, *, wait_for: int = 1, timeout: float = 15.0
    ) -> list[str]:
        """Names of the flow run's task runs, waiting (they are recorded asynchronously) for `wait_for`."""
        import asyncio

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with get_client() as prefect:
            while True:
                runs = await prefect.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
                )
                if len(runs) >= wait_for or loop.time() > deadline:
                    return [run.name for run in runs]
                await asyncio.sleep(0.25)

    async def artifacts(self, flow_run_id: Any) -> list[Any]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        async with get_client() as prefect:
            return await prefect.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )

    async def events(self, resource_id: str, *, wait_for: int = 1, timeout: float = 15.0) -> list[Any]:
        """Events about one resource, waiting (events are persisted asynchronously) for `wait_for` of them."""
        import asyncio

        from prefect.client.orchestration import get_client
        from prefect.events.filters import EventFilter, EventResourceFilter

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with get_client() as prefect:
            while True:
                page = await prefect.read_events(
                    EventFilter(resource=EventResourceFilter(id=[resource_id])), limit=50
                )
                if len(page.events) >= wait_for or loop.time() > deadline:
                    return list(page.events)
                await asyncio.sleep(0.25)


@pytest.fixture
def records() -> PrefectRecords:
    return PrefectRecords()
