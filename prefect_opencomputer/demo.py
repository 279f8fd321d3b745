"""`make demo`: run `sandbox_lifecycle` end to end and print what happened.

The flow finds its credentials as every flow does (`aload_credentials`: the block named by
`OPENCOMPUTER_CREDENTIALS_BLOCK`, else `OPENCOMPUTER_API_KEY` / `OPENCOMPUTER_API_URL`). With none of them
set it starts the embedded local server (real sandboxes on this machine) and points the flow at it. With no
`PREFECT_API_URL`, Prefect starts a temporary server of its own, as it does for any flow. Exit code 0 means
the flow completed and left no sandbox running.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect_opencomputer._settings import API_KEY_ENV, API_URL_ENV


@contextmanager
def _opencomputer_target() -> Iterator[str]:
    """The service the flow's credentials name, else an embedded local server for the duration (the
    environment points at it meanwhile); yields a line saying which one."""
    from prefect_opencomputer.blocks.credentials import is_configured, load_credentials
    from prefect_opencomputer.client import resolve_api_base

    credentials = load_credentials()
    if is_configured(credentials):
        yield f"OpenComputer: {resolve_api_base(credentials.api_url)} (credentials are configured)"
        return
    from prefect_opencomputer.local import LocalServer

    saved = {name: os.environ.get(name) for name in (API_KEY_ENV, API_URL_ENV)}
    with LocalServer() as server:
        os.environ[API_KEY_ENV], os.environ[API_URL_ENV] = server.api_key, server.url
        try:
            yield f"OpenComputer: embedded local server at {server.url} (no credentials are configured)"
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
    from prefect_opencomputer.blocks import aload_credentials
    from prefect_opencomputer.flows import sandbox_lifecycle
    from prefect_opencomputer.tasks import TAG_FLOW_RUN

    started = time.monotonic()
    state = await sandbox_lifecycle(return_state=True)
    seconds = time.monotonic() - started
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    flow_seconds = await _flow_run_seconds(flow_run_id)
    credentials = await aload_credentials()
    async with credentials.get_client() as client:
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
