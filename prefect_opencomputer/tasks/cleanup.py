"""Cleanup that does not depend on the flow's code reaching its end.

- `open_sandbox` / `open_fork`: async context managers that kill on exit, also when cancelled.
- `kill_flow_run_sandboxes`: kills every sandbox a flow run created (found by tag, and by this process's
  own record for sandboxes the service does not list).
- `cleanup_hooks()`: `on_failure`, `on_cancellation` and `on_crashed` hooks doing the above; they may run
  in another process (the runner, for cancellation), so they load credentials by block name or from env.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict, cast

from prefect.client.schemas.objects import FlowRun, State
from prefect.flows import Flow, FlowStateHook

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials, load_credentials
from prefect_opencomputer.client import Image, Sandbox
from prefect_opencomputer.tasks import report
from prefect_opencomputer.tasks.checkpoints import create_sandbox_from_checkpoint
from prefect_opencomputer.tasks.ownership import DEFAULT_IDLE_TIMEOUT, TAG_FLOW_RUN, is_ours, is_retained
from prefect_opencomputer.tasks.references import CheckpointRef
from prefect_opencomputer.tasks.run_logger import run_logger
from prefect_opencomputer.tasks.sandboxes import create_sandbox, kill_sandbox_now

# The flow parameter a hook reads to find the credentials block of the run it cleans up after.
CREDENTIALS_BLOCK_PARAMETER = "credentials_block"


@asynccontextmanager
async def open_sandbox(
    credentials: OpenComputerCredentials,
    template: str = "base",
    *,
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT,
    envs: dict[str, str] | None = None,
    memory_mb: int | None = None,
    tags: dict[str, str] | None = None,
    image: Image | None = None,
    snapshot: str | None = None,
) -> AsyncIterator[Sandbox]:
    """`async with open_sandbox(credentials) as sandbox:` creates a sandbox and kills it on the way out.

    With `image` or `snapshot` the sandbox starts from that build instead of `template`.
    """
    sandbox = await create_sandbox(
        credentials,
        template,
        idle_timeout=idle_timeout,
        envs=envs,
        memory_mb=memory_mb,
        tags=tags,
        image=image,
        snapshot=snapshot,
    )
    try:
        yield sandbox
    finally:
        await kill_sandbox_now(credentials, sandbox.sandbox_id, reason="end of its `open_sandbox` block")


@asynccontextmanager
async def open_fork(
    credentials: OpenComputerCredentials,
    checkpoint: CheckpointRef,
    *,
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT,
    envs: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    check_patches: bool = True,
) -> AsyncIterator[Sandbox]:
    """`async with open_fork(credentials, checkpoint) as fork:` forks a sandbox, kills it on the way out."""
    fork = await create_sandbox_from_checkpoint(
        credentials, checkpoint, idle_timeout=idle_timeout, envs=envs, tags=tags, check_patches=check_patches
    )
    try:
        yield fork
    finally:
        await kill_sandbox_now(credentials, fork.sandbox_id, reason="end of its `open_fork` block")


async def kill_flow_run_sandboxes(credentials: OpenComputerCredentials, flow_run_id: str) -> list[str]:
    """Kill every sandbox the flow run created that is still alive; returns the ids it killed.

    Sandboxes tagged `prefect.retain` are left alone.
    """
    suspects = report.live_sandboxes(flow_run_id)
    async with credentials.get_client() as client:
        for sandbox in await client.sandboxes.list():
            if not is_ours(sandbox.tags) or sandbox.tags.get(TAG_FLOW_RUN) != flow_run_id:
                continue
            if is_retained(sandbox.tags):
                suspects.discard(sandbox.sandbox_id)
            else:
                suspects.add(sandbox.sandbox_id)
    reason = f"cleanup of flow run {flow_run_id}"
    outcomes = await asyncio.gather(
        *(kill_sandbox_now(credentials, sandbox_id, reason=reason) for sandbox_id in sorted(suspects)),
        return_exceptions=True,
    )
    killed: list[str] = []
    for sandbox_id, outcome in zip(sorted(suspects), outcomes, strict=True):
        if isinstance(outcome, BaseException):
            run_logger().warning("Could not kill sandbox %s: %s", sandbox_id, outcome)
        elif outcome:
            killed.append(sandbox_id)
    return killed


class CleanupHooks(TypedDict):
    """Keyword arguments of `@flow` that install the cleanup hooks."""

    on_failure: list[FlowStateHook[..., Any]]
    on_cancellation: list[FlowStateHook[..., Any]]
    on_crashed: list[FlowStateHook[..., Any]]


def cleanup_hooks(credentials_block: str | None = None) -> CleanupHooks:
    """Flow hooks that kill the run's sandboxes when it fails, is cancelled or crashes.

    Use as `@flow(**cleanup_hooks())`. Credentials come from the saved block `credentials_block`, else
    the run's `credentials_block` parameter, else the environment of the process running the hook.
    """

    async def kill_flow_run_sandboxes_hook(
        flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]
    ) -> None:
        parameter = flow_run.parameters.get(CREDENTIALS_BLOCK_PARAMETER)
        block_name = credentials_block or (parameter if isinstance(parameter, str) else None)
        credentials = await load_credentials(block_name)
        killed = await kill_flow_run_sandboxes(credentials, str(flow_run.id))
        if killed:
            run_logger().warning(
                "Flow run %s ended %s: killed %d sandbox(es): %s",
                flow_run.name,
                state.name,
                len(killed),
                ", ".join(killed),
            )

    hook = cast("FlowStateHook[..., Any]", kill_flow_run_sandboxes_hook)
    return CleanupHooks(on_failure=[hook], on_cancellation=[hook], on_crashed=[hook])
