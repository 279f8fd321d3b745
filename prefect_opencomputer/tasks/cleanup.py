"""Cleanup that does not depend on the flow's code reaching its end.

- `open_sandbox` / `open_fork`: context managers (`with` and `async with`) that kill on exit, also when
  cancelled.
- `kill_flow_run_sandboxes` / `akill_flow_run_sandboxes`: kill every sandbox a flow run created and delete
  the checkpoints it made (found by tag, and by this process's own record for what the service does not list).
- `cleanup_hooks()`: flow hooks doing the above when a run fails, is cancelled or crashes, and when a retry
  begins (so the new attempt starts with nothing of the failed one alive). They may run in another process
  (the runner, for cancellation), so they find credentials by block name, block reference or environment.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypedDict, cast

from prefect.client.schemas.objects import FlowRun, State
from prefect.flows import Flow, FlowStateHook
from typing_extensions import ParamSpec

from prefect_opencomputer._sync import run_sync
from prefect_opencomputer.blocks.credentials import OpenComputerCredentials, aload_credentials, is_configured
from prefect_opencomputer.client import ForbiddenError, Sandbox, TransportError, UnauthorizedError
from prefect_opencomputer.tasks import run_registry
from prefect_opencomputer.tasks.checkpoints import fork_checkpoint
from prefect_opencomputer.tasks.factory import SyncAsyncTask
from prefect_opencomputer.tasks.leakproof import delete_checkpoint_now, kill_sandbox_now
from prefect_opencomputer.tasks.ownership import TAG_FLOW_RUN, is_ours, is_retained
from prefect_opencomputer.tasks.sandboxes import create_sandbox

P = ParamSpec("P")

# The flow parameters a hook reads to find the credentials of the run it cleans up after.
CREDENTIALS_BLOCK_PARAMETER = "credentials_block"
CREDENTIALS_PARAMETER = "credentials"


@dataclass
class SandboxScope:
    """A sandbox for the length of a `with` or `async with` block: created on entry, killed on exit.

    The kill finishes even while the block is being cancelled, and shows in the run as an
    `opencomputer.sandbox.killed` event and a row of the run report.
    """

    create: SyncAsyncTask[..., Sandbox]
    # Not in the repr: what the block was given may hold a credentials block.
    args: tuple[object, ...] = field(repr=False)
    kwargs: dict[str, Any] = field(repr=False)
    name: str
    kept: bool = False
    sandbox: Sandbox | None = None

    def keep(self) -> None:
        """Do not kill the sandbox on exit (it is meant to outlive the block, e.g. after `retain_sandbox`)."""
        self.kept = True

    async def __aenter__(self) -> Sandbox:
        self.sandbox = await self.create.aio(*self.args, **self.kwargs)
        return self.sandbox

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self._kill()

    def __enter__(self) -> Sandbox:
        created: object = self.create(*self.args, **self.kwargs)
        if inspect.isawaitable(created):
            # In `async def` code the sync task hands back its async twin's call, not yet started.
            if inspect.iscoroutine(created):
                created.close()
            raise TypeError(
                f"{self.name}() is used with `with` inside async code: write `async with "
                f"{self.name}(...) as sandbox:` in an `async def` flow or task"
            )
        assert isinstance(created, Sandbox)
        self.sandbox = created
        return self.sandbox

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        run_sync(self._kill())

    async def _kill(self) -> None:
        if self.sandbox is None or self.kept:
            return
        given = self.kwargs.get("credentials")
        credentials = await aload_credentials(
            credentials=given if isinstance(given, OpenComputerCredentials) else None
        )
        await kill_sandbox_now(credentials, self.sandbox.sandbox_id, reason=f"end of its `{self.name}` block")


def _scoped(create: SyncAsyncTask[P, Sandbox], name: str, doc: str) -> Callable[P, SandboxScope]:
    """The context manager of a task that makes a sandbox: the task's very parameters, and a kill on exit."""

    def open_scope(*args: P.args, **kwargs: P.kwargs) -> SandboxScope:
        return SandboxScope(create, args, kwargs, name)

    open_scope.__name__ = open_scope.__qualname__ = name
    open_scope.__doc__ = doc
    open_scope.__module__ = __name__
    parameters = inspect.signature(create.fn).parameters.values()
    setattr(  # noqa: B010 -- the signature a reader (help(), the reference page) sees: the task's own
        open_scope, "__signature__", inspect.Signature(list(parameters), return_annotation="SandboxScope")
    )
    return open_scope


open_sandbox = _scoped(
    create_sandbox,
    "open_sandbox",
    """A sandbox that is killed when the block ends, however it ends.

    `with open_sandbox() as sandbox:` in `def` code, `async with open_sandbox() as sandbox:` in `async def`
    code. It takes exactly what `create_sandbox` takes.

    Returns:
        A context manager whose value is the running sandbox.

    Example:
        ```python
        with open_sandbox("python", memory_mb=4096) as sandbox:
            run_command(sandbox, "python --version")
        ```
    """,
)

open_fork = _scoped(
    fork_checkpoint,
    "open_fork",
    """A fork of a checkpoint that is killed when the block ends (`with` or `async with`).

    It takes exactly what `fork_checkpoint` takes, and holds what it says: the checkpoint's files, and on
    the hosted service (a `full` checkpoint) its running processes too.

    Returns:
        A context manager whose value is the running fork.

    Example:
        ```python
        with open_fork(checkpoint) as fork:
            run_command(fork, "cat ~/patched.txt")
        ```
    """,
)


async def akill_flow_run_sandboxes(credentials: OpenComputerCredentials, flow_run_id: str) -> list[str]:
    """Delete the checkpoints the flow run made, then kill every sandbox it created that is still alive.

    Sandboxes tagged `prefect.retain` are left alone. Returns the ids of the sandboxes it killed.
    """
    logger = run_registry.run_logger()
    for sandbox_id, checkpoint_id in sorted(run_registry.live_checkpoints(flow_run_id)):
        try:
            await delete_checkpoint_now(
                credentials, sandbox_id, checkpoint_id, reason=f"cleanup of flow run {flow_run_id}"
            )
        except Exception as exc:
            logger.warning("Could not delete checkpoint %s of %s: %s", checkpoint_id, sandbox_id, exc)
    suspects = run_registry.live_sandboxes(flow_run_id)
    tags_of: dict[str, dict[str, str]] = {}
    async with credentials.get_client() as client:
        for sandbox in await client.sandboxes.list():
            if not is_ours(sandbox.tags) or sandbox.tags.get(TAG_FLOW_RUN) != flow_run_id:
                continue
            if is_retained(sandbox.tags):
                suspects.discard(sandbox.sandbox_id)
            else:
                suspects.add(sandbox.sandbox_id)
                tags_of[sandbox.sandbox_id] = sandbox.tags
    reason = f"cleanup of flow run {flow_run_id}"
    outcomes = await asyncio.gather(
        *(
            kill_sandbox_now(
                credentials, sandbox_id, reason=reason, flow_run_id=flow_run_id, tags=tags_of.get(sandbox_id)
            )
            for sandbox_id in sorted(suspects)
        ),
        return_exceptions=True,
    )
    killed: list[str] = []
    for sandbox_id, outcome in zip(sorted(suspects), outcomes, strict=True):
        if isinstance(outcome, BaseException):
            logger.warning("Could not kill sandbox %s: %s", sandbox_id, outcome)
        elif outcome:
            killed.append(sandbox_id)
    return killed


def kill_flow_run_sandboxes(credentials: OpenComputerCredentials, flow_run_id: str) -> list[str]:
    """Delete the checkpoints the flow run made, then kill every sandbox it created that is still alive
    (`akill_flow_run_sandboxes` in async code).

    Sandboxes tagged `prefect.retain` are left alone. Returns the ids of the sandboxes it killed.
    """
    return run_sync(akill_flow_run_sandboxes(credentials, flow_run_id))


async def credentials_of_run(flow_run: FlowRun, block_name: str | None = None) -> OpenComputerCredentials:
    """The credentials a flow run's tasks used: this process's record of the run, else the saved block
    `block_name`, else the run's own parameters in the order `aload_credentials` gives them (its
    `credentials` block, then its `credentials_block` name), else the environment."""
    if block_name is None and (used := run_registry.run_credentials(str(flow_run.id))) is not None:
        return used
    if block_name:
        return await aload_credentials(block_name)
    given = flow_run.parameters.get(CREDENTIALS_PARAMETER)
    if isinstance(given, dict) and isinstance(reference := given.get("$ref"), dict | str):
        given = await OpenComputerCredentials.aload_from_ref(reference)
    name = flow_run.parameters.get(CREDENTIALS_BLOCK_PARAMETER)
    return await aload_credentials(
        name if isinstance(name, str) else None,
        credentials=given if isinstance(given, OpenComputerCredentials) else None,
    )


class CleanupHooks(TypedDict):
    """Keyword arguments of `@flow` that install the cleanup hooks."""

    on_running: list[FlowStateHook[..., Any]]
    on_failure: list[FlowStateHook[..., Any]]
    on_cancellation: list[FlowStateHook[..., Any]]
    on_crashed: list[FlowStateHook[..., Any]]


def cleanup_hooks(
    credentials_block: str | None = None,
    *,
    on_running: Sequence[FlowStateHook[..., Any]] = (),
    on_failure: Sequence[FlowStateHook[..., Any]] = (),
    on_cancellation: Sequence[FlowStateHook[..., Any]] = (),
    on_crashed: Sequence[FlowStateHook[..., Any]] = (),
) -> CleanupHooks:
    """Flow hooks that kill the run's sandboxes (and delete its checkpoints) when it fails, is cancelled or
    crashes, and when a retry of the run begins.

    Use as `@flow(**cleanup_hooks())`. Hooks of your own go through it, since Python refuses the same
    keyword twice: `@flow(**cleanup_hooks(on_failure=[notify]))` runs `notify` after the cleanup. Credentials
    come from the saved block `credentials_block`, else what the run's tasks used, else the run's
    `credentials_block` / `credentials` parameter, else the environment.

    Args:
        credentials_block: Name of a saved OpenComputerCredentials block.
        on_running: Your own hooks for when the run starts running.
        on_failure: Your own hooks for when the run fails.
        on_cancellation: Your own hooks for when the run is cancelled.
        on_crashed: Your own hooks for when the run crashes.

    Returns:
        `on_running`, `on_failure`, `on_cancellation` and `on_crashed` hook lists for `@flow(...)`.

    Example:
        ```python
        @flow(retries=1, **cleanup_hooks(on_failure=[notify_team]))
        def nightly() -> None: ...
        ```
    """

    hook = _cleanup_hook(credentials_block, on_retry=False)
    retry_hook = _cleanup_hook(credentials_block, on_retry=True)
    return CleanupHooks(
        on_running=[retry_hook, *on_running],
        on_failure=[hook, *on_failure],
        on_cancellation=[hook, *on_cancellation],
        on_crashed=[hook, *on_crashed],
    )


def _cleanup_hook(credentials_block: str | None, *, on_retry: bool) -> FlowStateHook[..., Any]:
    """A hook that cleans up after the run; `on_retry`: only when the run enters a new attempt."""

    async def kill_flow_run_sandboxes_hook(
        flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]
    ) -> None:
        if on_retry and not run_registry.is_new_attempt(str(flow_run.id), flow_run.run_count):
            return
        credentials = await credentials_of_run(flow_run, credentials_block)
        if not is_configured(credentials):
            return  # no task could reach the service either: nothing of this run exists there
        try:
            killed = await akill_flow_run_sandboxes(credentials, str(flow_run.id))
        except (UnauthorizedError, ForbiddenError, TransportError) as exc:
            # The run's own failure already says why (a refused key, an unreachable URL): one line, no
            # second traceback for the same cause.
            run_registry.run_logger().warning(
                "Could not clean up after flow run %s: %s", flow_run.name, exc.args[0] if exc.args else exc
            )
            return
        if killed:
            why = "is retrying: its failed attempt left" if on_retry else f"ended {state.name}: it left"
            run_registry.run_logger().warning(
                "Flow run %s %s %d sandbox(es), killed: %s",
                flow_run.name,
                why,
                len(killed),
                ", ".join(killed),
            )

    return cast("FlowStateHook[..., Any]", kill_flow_run_sandboxes_hook)
