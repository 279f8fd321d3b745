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


async def _run() -> int:
    from prefect_opencomputer.blocks import OpenComputerCredentials
    from prefect_opencomputer.flows import sandbox_lifecycle
    from prefect_opencomputer.tasks.ownership import TAG_FLOW_RUN

    started = time.monotonic()
    state = await sandbox_lifecycle(return_state=True)
    seconds = time.monotonic() - started
    flow_run_id = str(state.state_details.flow_run_id)
    async with OpenComputerCredentials().get_client() as client:
        left = [
            sb.sandbox_id for sb in await client.sandboxes.list() if sb.tags.get(TAG_FLOW_RUN) == flow_run_id
        ]
    if not state.is_completed():
        print(f"\nsandbox_lifecycle ended {state.name} after {seconds:.1f} s: {state.message}")
        print(f"  sandboxes left running: {len(left)} {' '.join(left)}")
        return 1
    report = await state.aresult()
    print(f"\nsandbox_lifecycle completed in {seconds:.1f} s (flow run {flow_run_id})")
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
