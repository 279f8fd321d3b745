"""When a task is retried: only after failures that prove the request did no work, or can do none twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext

from prefect_opencomputer.client import APIError, ServerError, TransportError

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
