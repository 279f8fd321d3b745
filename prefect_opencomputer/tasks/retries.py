"""Which failures a task may retry: only those that prove the request did no work, or can do none twice."""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun

from prefect_opencomputer.client import APIError, ServerError, TransportError

# Delays between task-level attempts; the client already retries refused requests within one attempt.
RETRY_DELAYS = [1.0, 4.0]
_GATEWAY_STATUSES = frozenset({502, 503, 504})


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


def _failure_of(state: State[Any]) -> BaseException | None:
    data = state.data
    return data if isinstance(data, BaseException) else None


def retry_if_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """`retry_condition_fn` for operations that must not run twice (create, fork, exec, checkpoint)."""
    failure = _failure_of(state)
    return failure is not None and is_transient(failure)


def retry_if_replayable(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """`retry_condition_fn` for idempotent operations."""
    failure = _failure_of(state)
    return failure is not None and is_replayable(failure)
