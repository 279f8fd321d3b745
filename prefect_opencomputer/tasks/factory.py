"""`opencomputer_task`: how every task of this integration is made from one async implementation.

One async implementation per operation becomes two Prefect tasks: `acreate_sandbox` (async) and
`create_sandbox`, which runs the same implementation in `def` flows (on the package's sync bridge) and hands
back the async twin's coroutine in `async def` flows (at the level of the task object so that `.map`,
`.submit` and `.with_options` keep working). Every task is uncached (side effects), tagged `opencomputer`,
named for the UI (`run_names`), retries only failures that cannot duplicate work (`retries`), and has
the parameters every task shares described in its docstring (`parameter_docs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext, get_run_context
from prefect.exceptions import MissingContextError
from prefect.futures import PrefectFuture, PrefectFutureList
from prefect.utilities.annotations import unmapped
from typing_extensions import ParamSpec

from prefect_opencomputer._settings import API_KEY_ENV, API_URL_ENV, CREDENTIALS_BLOCK_ENV
from prefect_opencomputer._sync import run_sync
from prefect_opencomputer.blocks.credentials import OpenComputerCredentials, aload_credentials, is_configured
from prefect_opencomputer.client import (
    APIError,
    ForbiddenError,
    OpenComputerClient,
    UnauthorizedError,
    resolve_api_base,
)
from prefect_opencomputer.tasks import run_registry
from prefect_opencomputer.tasks.errors import MissingCredentialsError
from prefect_opencomputer.tasks.parameter_docs import with_shared_parameters
from prefect_opencomputer.tasks.retries import (
    PRESET_RETRIES,
    RETRY_DELAYS,
    RetryCondition,
    or_if_refused,
    wait_out_retry_after,
)
from prefect_opencomputer.tasks.run_names import RunName

P = ParamSpec("P")
R = TypeVar("R")

# Every task of this integration carries this tag: filter on it in the UI, or cap it with a concurrency limit.
TASK_TAG = "opencomputer"

# -- Credentials ---------------------------------------------------------------------------------------


async def resolve_credentials(credentials: OpenComputerCredentials | None) -> OpenComputerCredentials:
    """The block given, else the saved block named by `OPENCOMPUTER_CREDENTIALS_BLOCK`, else the environment.

    The run remembers them, so its cleanup hooks reach the same service. With neither a key nor a URL
    anywhere, fails at once instead of asking the hosted service without a key.
    """
    resolved = await aload_credentials(credentials=credentials)
    if not is_configured(resolved):
        raise MissingCredentialsError()
    run_registry.remember_credentials(resolved)
    return resolved


@contextlib.asynccontextmanager
async def service_client(credentials: OpenComputerCredentials | None) -> AsyncIterator[OpenComputerClient]:
    """A client of the service the credentials name (resolved as `resolve_credentials` does), for one body."""
    resolved = await resolve_credentials(credentials)
    async with resolved.get_client() as client:
        yield client


def _sent_key(credentials: OpenComputerCredentials | None) -> bool:
    if credentials is not None and credentials.api_key is not None:
        return bool(credentials.api_key.get_secret_value())
    return bool(os.environ.get(API_KEY_ENV))


def _is_key_refused(error: BaseException) -> bool:
    """The service refused the key: missing (401) or not valid (403 "invalid API key")."""
    if isinstance(error, UnauthorizedError):
        return True
    return isinstance(error, ForbiddenError) and "api key" in error.message.lower()


def _with_key_hint(error: APIError, credentials: OpenComputerCredentials | None) -> APIError:
    """The service's answer, saying which URL refused which key and how to give the right one."""
    url = resolve_api_base(credentials.api_url if credentials is not None else None)
    if _sent_key(credentials):
        what = f"the API key was refused by {url}"
        hint = (
            f"check the key in {API_KEY_ENV} or in the credentials block, and that it belongs to this URL "
            f"({API_URL_ENV} or the block's api_url)"
        )
    else:
        what = f"no API key was sent to {url}"
        hint = (
            f"give an API key: set {API_KEY_ENV} in the environment of the process running the flow, or "
            "save an OpenComputerCredentials block with api_key and pass it as credentials= (or name it in "
            f"{CREDENTIALS_BLOCK_ENV})"
        )
    return type(error)(
        error.status_code,
        f"{error.message}: {what}; {hint}",
        code=error.code,
        method=error.method,
        path=error.path,
    )


def _credentials_in_use(kwargs: dict[str, Any]) -> OpenComputerCredentials | None:
    """The block a task was given, else the one its run resolved (None: the environment)."""
    given = kwargs.get("credentials")
    if isinstance(given, OpenComputerCredentials):
        return given
    flow_run_id = run_registry.current_flow_run_id()
    return run_registry.run_credentials(flow_run_id) if flow_run_id else None


def _refuse_positional_credentials(task_name: str, args: Sequence[object]) -> None:
    """A block given in the sandbox's or template's place: say where it goes instead of failing later."""
    if any(isinstance(arg, OpenComputerCredentials) for arg in args):
        raise TypeError(
            f"{task_name}() got the credentials block as a positional argument: pass it as "
            f"credentials=, e.g. {task_name}(..., credentials=block)"
        )


# -- Sync task bodies ------------------------------------------------------------------------------------


class FlowRunInterruptedError(Exception):
    """Raised in a sync task whose flow run is stopping: its remote work was cancelled and cleaned up."""


def in_async_code() -> bool:
    """Whether the caller is async code: an `async def` task or flow run, else a running event loop."""
    try:
        context = get_run_context()
    except MissingContextError:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True
    runnable = getattr(context, "task", None) or getattr(context, "flow", None)
    return bool(getattr(runnable, "isasync", True))


def _runner_cancel_event() -> threading.Event | None:
    """The event Prefect's thread-pool task runner sets for this task run when the flow stops (Ctrl-C,
    SIGTERM: the runner shuts down and waits for its threads).

    Prefect looks at it only between the steps of a task, never during its body: a body that waits on a
    remote command must look at it itself, or the flow process hangs until the command ends.
    """
    task_context = TaskRunContext.get()
    flow_context = FlowRunContext.get()
    if task_context is None or flow_context is None:
        return None
    events = getattr(flow_context.task_runner, "_cancel_events", None)
    event = events.get(task_context.task_run.id) if isinstance(events, dict) else None
    return event if isinstance(event, threading.Event) else None


def run_task_body(coroutine: Coroutine[Any, Any, R]) -> R:
    """Run a task's async body from its sync task on the sync bridge, stopping it (and letting it clean up)
    when the flow run stops while the task runs."""
    stopping = _runner_cancel_event()

    def interrupted() -> BaseException | None:
        if stopping is None or not stopping.is_set():
            return None
        return FlowRunInterruptedError("the flow run was interrupted (Ctrl-C, SIGTERM) while this task ran")

    return run_sync(coroutine, interrupted=interrupted)


# -- The task class and its factory --------------------------------------------------------------------

_UNSET: Any = object()


class OpenComputerTask(Task[P, R]):
    """A Prefect task that knows how a caller who sets `retries` wants to be retried, and that maps over
    sandboxes with the credentials block held fixed.

    `with_options(retries=N)` alone applies `rerun_condition` (the service's 429 and 503 refusals, and for
    `run_command` a failing command, run again); `with_options(retry_condition_fn=None)` clears the preset
    condition (every failure retries). Prefect's own `with_options` can do neither (it keeps the preset
    condition for None).
    """

    rerun_condition: RetryCondition | None = None

    # Defined for the interpreter only, so type checkers keep Prefect's signatures (these extend them).
    if not TYPE_CHECKING:

        def map(self, *args, **kwargs):
            # A block is one value: `.map(sandboxes, credentials=block)` must not iterate over its fields
            # (pydantic models iterate as (name, value) pairs), so it is passed unmapped.
            if isinstance(kwargs.get("credentials"), OpenComputerCredentials):
                kwargs["credentials"] = unmapped(kwargs["credentials"])
            return super().map(*args, **kwargs)

        def with_options(self, **options):
            condition = options.pop("retry_condition_fn", _UNSET)
            new = Task.with_options(self, **options)
            new.__class__ = type(self)
            new.rerun_condition = self.rerun_condition
            if condition is not _UNSET:
                new.retry_condition_fn = condition
            elif "retries" in options and self.rerun_condition is not None:
                new.retry_condition_fn = self.rerun_condition
            if isinstance(self, SyncAsyncTask):
                twin_options = (
                    options if condition is _UNSET else {**options, "retry_condition_fn": condition}
                )
                new.aio = self.aio.with_options(**twin_options)
            return new


class AsyncTwinTask(OpenComputerTask[P, Coroutine[Any, Any, R]]):
    """The async twin of an operation (`arun_command`, `acreate_sandbox`, ...), for `async def` code.

    Fan out with `asyncio.gather` over its calls: `await asyncio.gather(*(arun_command(sb, "make") for sb in
    sandboxes))` runs each call as a task run on this event loop, where `.map` sends every call to a thread
    of its own (2-4x slower). Its `.submit` and `.map` futures resolve to the result itself, and are typed
    so (Prefect's own overloads type them as coroutines).
    """

    if TYPE_CHECKING:

        def submit(  # type: ignore[override]
            self, *args: P.args, **kwargs: P.kwargs
        ) -> PrefectFuture[R]: ...

        def map(self, *args: Any, **kwargs: Any) -> PrefectFutureList[R]: ...  # type: ignore[override]

        # Read as an attribute (`create_sandbox.aio`) it stays a twin; Task's own `__get__` says plain Task.
        def __get__(self, instance: Any, owner: Any) -> AsyncTwinTask[P, R]: ...


class SyncAsyncTask(OpenComputerTask[P, R]):
    """The sync task of an operation; in async code a call returns its async twin's (`aio`) coroutine."""

    aio: AsyncTwinTask[P, R]

    # Defined for the interpreter only: type checkers keep Prefect's overloads (a value in `def` code);
    # async code that wants precise types calls the `a`-prefixed twin.
    if not TYPE_CHECKING:

        def __call__(self, *args, **kwargs):
            if in_async_code():
                return self.aio(*args, **kwargs)
            return super().__call__(*args, **kwargs)


def opencomputer_task(
    name: str,
    *,
    run_name: RunName | str,
    retry_condition: RetryCondition,
    rerun_condition: RetryCondition | None = None,
    on_rollback: Callable[..., Any] | None = None,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], SyncAsyncTask[P, R]]:
    """Make the sync task `name` (its async twin is `.aio`) from one async implementation.

    `retry_condition` says which failures the preset retries cover; `rerun_condition` is what a caller's
    own `retries=` covers (default: the same), always widened to the service's refusals (429 quota, 503
    unavailable), whose `Retry-After` is waited out; `on_rollback` runs when an enclosing transaction rolls
    back.
    """

    def decorate(fn: Callable[P, Coroutine[Any, Any, R]]) -> SyncAsyncTask[P, R]:
        fn.__doc__ = with_shared_parameters(fn)

        @functools.wraps(fn)
        async def run_async(*args: P.args, **kwargs: P.kwargs) -> R:
            _refuse_positional_credentials(name, args)
            try:
                return await fn(*args, **kwargs)
            except (UnauthorizedError, ForbiddenError) as error:
                if not _is_key_refused(error):
                    raise
                raise _with_key_hint(error, _credentials_in_use(kwargs)) from error
            except APIError as error:
                await wait_out_retry_after(error)
                raise

        @functools.wraps(fn)
        def run_sync(*args: P.args, **kwargs: P.kwargs) -> R:
            return run_task_body(run_async(*args, **kwargs))

        options: dict[str, Any] = {
            "name": name,
            "task_run_name": run_name,
            "tags": [TASK_TAG],
            "cache_policy": NO_CACHE,
            "retries": PRESET_RETRIES,
            "retry_delay_seconds": RETRY_DELAYS,
            "retry_condition_fn": retry_condition,
        }
        twin = AsyncTwinTask[P, R](fn=run_async, **options)
        task = SyncAsyncTask[P, R](fn=run_sync, **options)
        twin.rerun_condition = task.rerun_condition = or_if_refused(rerun_condition or retry_condition)
        task.aio = twin
        if on_rollback is not None:
            task.on_rollback(on_rollback)
            twin.on_rollback(on_rollback)
        return task

    return decorate
