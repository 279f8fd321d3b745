"""`opencomputer_task`: how every task of this integration is made, named and retried.

One async implementation per operation becomes two Prefect tasks: `acreate_sandbox` (async) and
`create_sandbox`, which runs the same implementation in `def` flows and hands back the async twin's
coroutine in `async def` flows (Prefect 3's sync/async dispatch, at the level of the task object so that
`.map`, `.submit` and `.with_options` keep working). Every task is uncached (side effects), tagged
`opencomputer`, named for the UI, and retries only failures that cannot duplicate work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast

from prefect import Task
from prefect._internal.compatibility.async_dispatch import is_in_async_context
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import FlowRunContext, TaskRunContext
from prefect.futures import PrefectFuture, PrefectFutureList
from prefect.tasks import TaskRunNameCallbackWithParameters
from prefect.utilities.annotations import unmapped
from typing_extensions import ParamSpec

from prefect_opencomputer._settings import API_KEY_ENV, API_URL_ENV, CREDENTIALS_BLOCK_ENV
from prefect_opencomputer.blocks.credentials import OpenComputerCredentials, aload_credentials, is_configured
from prefect_opencomputer.blocks.sync_client import EventLoopThread
from prefect_opencomputer.client import (
    APIError,
    Checkpoint,
    ForbiddenError,
    Sandbox,
    ServerError,
    TransportError,
    UnauthorizedError,
    resolve_api_base,
)
from prefect_opencomputer.tasks import tracking
from prefect_opencomputer.tasks.errors import MissingCredentialsError

P = ParamSpec("P")
R = TypeVar("R")

# Every task of this integration carries this tag: filter on it in the UI, or cap it with a concurrency limit.
TASK_TAG = "opencomputer"

# -- References: a sandbox or checkpoint as its id or as the model a previous task returned ---------------

SandboxRef: TypeAlias = Sandbox | str
CheckpointRef: TypeAlias = Checkpoint | str


def sandbox_id_of(sandbox: SandboxRef) -> str:
    return sandbox.sandbox_id if isinstance(sandbox, Sandbox) else sandbox


def checkpoint_id_of(checkpoint: CheckpointRef) -> str:
    return checkpoint.id if isinstance(checkpoint, Checkpoint) else checkpoint


def short_checkpoint_id(checkpoint: CheckpointRef) -> str:
    """`cp-1a2b3c4d`: checkpoint ids are UUIDs, too long for a task run name."""
    return f"cp-{checkpoint_id_of(checkpoint)[:8]}"


def short_command(command: str | Sequence[str], limit: int = 48) -> str:
    text = command if isinstance(command, str) else " ".join(command)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- Task run names a person can read: `run[sb-1a2b3c4d]: pytest -q`, `fork[cp-5e6f7a8b] #2` --------------

RunName = TaskRunNameCallbackWithParameters


def on_sandbox(verb: str, detail: str | None = None) -> RunName:
    """`verb[sb-…]`, followed by `: <parameter detail>` when that parameter is set."""

    def name(parameters: dict[str, Any]) -> str:
        label = f"{verb}[{sandbox_id_of(parameters['sandbox'])}]"
        value = parameters.get(detail) if detail else None
        return f"{label}: {short_command(str(value))}" if value not in (None, "") else label

    return cast(RunName, name)


def on_checkpoint(verb: str, *, numbered: bool = False) -> RunName:
    """`verb[cp-…]`; `numbered` adds ` #n`, counted per flow run, so N forks of one checkpoint differ."""

    def name(parameters: dict[str, Any]) -> str:
        label = f"{verb}[{short_checkpoint_id(parameters['checkpoint'])}]"
        return f"{label} #{tracking.next_number(label)}" if numbered else label

    return cast(RunName, name)


# -- Retries: only failures that prove the request did no work, or can do none twice ---------------------

# Delays between task-level attempts; the client already retries refused requests within one attempt.
RETRY_DELAYS = [1.0, 4.0]
PRESET_RETRIES = 2
_GATEWAY_STATUSES = frozenset({502, 503, 504})

RetryCondition = Callable[[Task[..., Any], TaskRun, State[Any]], bool]


def is_transient(error: BaseException) -> bool:
    """The service refused the request and said to retry, or the request never left this machine."""
    if isinstance(error, TransportError):
        return not error.ambiguous
    return isinstance(error, APIError) and error.retryable


def is_replayable(error: BaseException) -> bool:
    """A failure worth retrying for an idempotent operation (a read, a delete, a full replace).

    Not a plain 500: the service answers most runtime errors (a missing file, a missing exec session) so.
    """
    if isinstance(error, ServerError):
        return error.status_code in _GATEWAY_STATUSES or error.retryable
    return is_transient(error) or isinstance(error, TransportError)


# The service's "not now" answers: the org's sandbox quota (429, no Retry-After on the hosted service) and
# "unavailable" (503). The request did no work, so a caller who asks for retries gets them for these too.
_REFUSED_STATUSES = frozenset({429, 503})
# The longest Retry-After a task waits out before its next attempt, so a bad header cannot stall a flow.
RETRY_AFTER_MAX = 60.0


def is_refused(error: BaseException) -> bool:
    """The service refused the request for now (quota, unavailable): nothing was done, a retry may pass."""
    return isinstance(error, APIError) and error.status_code in _REFUSED_STATUSES


def failure_of(state: State[Any]) -> BaseException | None:
    data = state.data
    return data if isinstance(data, BaseException) else None


def retry_if_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """`retry_condition_fn` for operations that must not run twice (create, fork, exec, checkpoint)."""
    failure = failure_of(state)
    return failure is not None and is_transient(failure)


def retry_if_replayable(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """`retry_condition_fn` for idempotent operations."""
    failure = failure_of(state)
    return failure is not None and is_replayable(failure)


def or_if_refused(condition: RetryCondition) -> RetryCondition:
    """`condition`, widened to the service's refusals (429, 503): what a caller's own `retries=` covers."""

    def retry_if_refused_or(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
        failure = failure_of(state)
        return (failure is not None and is_refused(failure)) or condition(task, task_run, state)

    retry_if_refused_or.__name__ = f"{getattr(condition, '__name__', 'condition')}_or_refused"
    return retry_if_refused_or


async def wait_out_retry_after(error: BaseException) -> None:
    """Before a task attempt that will be retried ends, wait the `Retry-After` the service asked for.

    Prefect's retry delay is fixed per task; waiting here makes the next attempt come no sooner than the
    service said (Prefect's own delay follows).
    """
    context = TaskRunContext.get()
    if not isinstance(error, APIError) or error.retry_after is None or context is None:
        return
    if context.task_run.run_count > context.task.retries:
        return  # the last attempt: nothing will follow it
    await asyncio.sleep(min(error.retry_after, RETRY_AFTER_MAX))


# -- Credentials ---------------------------------------------------------------------------------------


async def resolve_credentials(credentials: OpenComputerCredentials | None) -> OpenComputerCredentials:
    """The block given, else the saved block named by `OPENCOMPUTER_CREDENTIALS_BLOCK`, else the environment.

    The run remembers them, so its cleanup hooks reach the same service. With neither a key nor a URL
    anywhere, fails at once instead of asking the hosted service without a key.
    """
    resolved = await aload_credentials(credentials=credentials)
    if not is_configured(resolved):
        raise MissingCredentialsError()
    tracking.remember_credentials(resolved)
    return resolved


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
    flow_run_id = tracking.current_flow_run_id()
    return tracking.run_credentials(flow_run_id) if flow_run_id else None


def _refuse_positional_credentials(task_name: str, args: Sequence[object]) -> None:
    """A block given in the sandbox's or template's place: say where it goes instead of failing later."""
    if any(isinstance(arg, OpenComputerCredentials) for arg in args):
        raise TypeError(
            f"{task_name}() got the credentials block as a positional argument: pass it as "
            f"credentials=, e.g. {task_name}(..., credentials=block)"
        )


# -- Sync task bodies ------------------------------------------------------------------------------------

_task_loop: EventLoopThread | None = None
_task_loop_lock = threading.Lock()
# How long a sync task waits at a time: a task timeout or cancellation raised into its thread lands
# between two waits (it cannot interrupt one).
_WAIT_SLICE = 0.2
_CLEANUP_TIMEOUT = 30.0


class FlowRunInterruptedError(Exception):
    """Raised in a sync task whose flow run is stopping: its remote work was cancelled and cleaned up."""


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


def run_on_task_loop(coroutine: Coroutine[Any, Any, R]) -> R:
    """Run a task's async body from its sync task, on one private loop that all sync tasks share.

    The caller's context (the task run, its logger, its transaction) goes with the coroutine. If the sync
    task is interrupted (its timeout, a cancellation), the coroutine is cancelled and given time to clean
    up (kill the remote command, tag or kill a new sandbox) before the interruption goes on; so is it when
    the flow run stops (Ctrl-C, SIGTERM) while the task runs.
    """
    global _task_loop
    with _task_loop_lock:
        if _task_loop is None:
            _task_loop = EventLoopThread()
        loop = _task_loop
    finished = threading.Event()

    async def supervised() -> R:
        try:
            return await coroutine
        finally:
            finished.set()

    interrupted = _runner_cancel_event()
    future = asyncio.run_coroutine_threadsafe(supervised(), loop.loop)
    try:
        while not future.done():
            concurrent.futures.wait([future], timeout=_WAIT_SLICE)
            if interrupted is not None and interrupted.is_set() and not future.done():
                raise FlowRunInterruptedError(
                    "the flow run was interrupted (Ctrl-C, SIGTERM) while this task ran"
                )
        return future.result()
    except BaseException:
        future.cancel()
        finished.wait(_CLEANUP_TIMEOUT)
        raise


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
            if is_in_async_context():
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
            return run_on_task_loop(run_async(*args, **kwargs))

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
