"""`make demo`: run `sandbox_lifecycle` end to end and print what happened.

With no `OPENCOMPUTER_API_KEY` in the environment it starts the embedded local server (real sandboxes on
this machine) and points the flow at it; with the key set, the same flow runs against the service at
`OPENCOMPUTER_API_URL` (the hosted service by default). With no `PREFECT_API_URL`, Prefect starts a
temporary server of its own, as it does for any flow. Exit code 0 means the flow completed and left no
sandbox running.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

API_KEY_ENV = "OPENCOMPUTER_API_KEY"
API_URL_ENV = "OPENCOMPUTER_API_URL"


@contextmanager
def _opencomputer_target() -> Iterator[str]:
    """Point OPENCOMPUTER_* at a service for the duration; yields a line saying which one."""
    if os.environ.get(API_KEY_ENV):
        yield f"OpenComputer: {os.environ.get(API_URL_ENV) or 'the hosted service'} ({API_KEY_ENV} is set)"
        return
    from prefect_opencomputer.local import LocalServer

    saved = {name: os.environ.get(name) for name in (API_KEY_ENV, API_URL_ENV)}
    with LocalServer() as server:
        os.environ[API_KEY_ENV], os.environ[API_URL_ENV] = server.api_key, server.url
        try:
            yield f"OpenComputer: embedded local server at {server.url} ({API_KEY_ENV} is not set)"
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _prepare_prefect() -> str:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A cold temporary server on a loaded machine can take longer than Prefect's default 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    api_url = os.environ.get("PREFECT_API_URL")
    return (
        f"Prefect: {api_url}" if api_url else "Prefect: a temporary local server (PREFECT_API_URL is not set)"
    )


async def _flow_run_seconds(flow_run_id: UUID) -> float | None:
    """The flow run's own duration as Prefect recorded it (from Running to its final state)."""
    from prefect.client.orchestration import get_client

    async with get_client() as prefect:
        flow_run = await prefect.read_flow_run(flow_run_id)
    if flow_run.start_time is None or flow_run.end_time is None:
        return None
    elapsed: float = (flow_run.end_time - flow_run.start_time).total_seconds()
    return elapsed


async def _run() -> int:
    from prefect_opencomputer.blocks import OpenComputerCredentials
    from prefect_opencomputer.flows import sandbox_lifecycle
    from prefect_opencomputer.tasks import TAG_FLOW_RUN

    started = time.monotonic()
    state = await sandbox_lifecycle(return_state=True)
    seconds = time.monotonic() - started
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    flow_seconds = await _flow_run_seconds(flow_run_id)
    async with OpenComputerCredentials().get_client() as client:
        left = [
            sb.sandbox_id
            for sb in await client.sandboxes.list()
            if sb.tags.get(TAG_FLOW_RUN) == str(flow_run_id)
        ]
    # The flow's own time, apart from starting Prefect (a temporary server when PREFECT_API_URL is unset).
    timing = f"{seconds:.1f} s in all"
    if flow_seconds is not None:
        timing = f"{flow_seconds:.1f} s (flow run), {seconds:.1f} s in all with Prefect's start-up"
    if not state.is_completed():
        print(f"\nsandbox_lifecycle ended {state.name} after {timing}: {state.message}")
        print(f"  sandboxes left running: {len(left)} {' '.join(left)}")
        return 1
    report = await state.aresult()
    print(f"\nsandbox_lifecycle completed in {timing} (flow run {flow_run_id})")
    print(f"  sandbox      {report.sandbox_id}   set up, then checkpointed")
    print(f"  checkpoint   {report.checkpoint_id}   + patch {report.patch_id}")
    print(f"  fork         {report.fork_id}   saw:")
    for line in report.fork_output.strip().splitlines() or ["(no output)"]:
        print(f"                 {line}")
    print(f"  sandboxes left running: {len(left)}")
    return 0 if not left else 1


def main() -> int:
    """Run the demo; returns the process exit code."""
    prefect_line = _prepare_prefect()
    try:
        with _opencomputer_target() as target_line:
            print(target_line)
            print(prefect_line)
            return asyncio.run(_run())
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
