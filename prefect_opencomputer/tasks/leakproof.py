"""Sandboxes come and go without leaking: shielded creates, lost answers recovered, kills that finish.

The service has no idempotency keys, so a create that may have reached it cannot be replayed. Each create
and fork therefore carries a marker of its own, the sandbox environment variable
`PREFECT_OPENCOMPUTER_CREATE_ID` set to a fresh random value. When the answer is lost (connection dropped,
or a 5xx that may have come after the work), the sandbox that request made is the recent, untagged one whose
environment holds that value; a sandbox without it (anyone else's) is never adopted, tagged or killed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar, cast
from uuid import UUID, uuid4

import anyio
from prefect.transactions import BaseTransaction, Transaction, get_transaction

from prefect_opencomputer._settings import CREATE_MARKER_ENV
from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import (
    NotFoundError,
    OpenComputerClient,
    OpenComputerError,
    RateLimitedError,
    Sandbox,
    ServerError,
    TransportError,
)
from prefect_opencomputer.tasks import events, ownership, quota, run_registry, run_report

T = TypeVar("T")

# Allowance for the service's clock running behind ours.
CLOCK_SKEW = timedelta(seconds=30)
KILL_TIMEOUT = 30.0
# How long a create under a concurrency limit waits out the service's 429: other tools share the quota.
QUOTA_PATIENCE = 600.0
_QUOTA_POLL_MAX = 10.0
# The list may show a new sandbox a moment after its create (the hosted index is written asynchronously).
_LOOKUPS = 3
_LOOKUP_PAUSE = 0.5


async def finish_despite_cancellation(awaitable: Awaitable[T], *, timeout: float) -> T:
    """Await `awaitable` to the end even if this task is cancelled meanwhile, then re-raise the cancellation.

    An anyio shield covers Prefect's timeouts (anyio cancel scopes); a separate asyncio task covers native
    cancellation (`Task.cancel()`, as `asyncio.run` does when a flow process is terminated), which pierces
    anyio shields. Raises `TimeoutError` if the work takes longer than `timeout` seconds.
    """
    work = asyncio.ensure_future(awaitable)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    interrupted = timed_out = False
    with anyio.CancelScope(shield=True):
        while not work.done():
            remaining = deadline - loop.time()
            if remaining <= 0 and not timed_out:
                work.cancel()
                timed_out = True
            try:
                await asyncio.wait({work}, timeout=None if timed_out else remaining)
            except asyncio.CancelledError:
                interrupted = True
    if interrupted:
        raise asyncio.CancelledError
    if timed_out:
        raise TimeoutError(f"gave up after {timeout:g} s")
    return work.result()


# -- Lost answers ---------------------------------------------------------------------------------------


def may_have_taken_effect(error: BaseException) -> bool:
    """The request may have done its work even though it failed."""
    if isinstance(error, TransportError):
        return error.ambiguous
    return isinstance(error, ServerError) and not error.retryable


async def _carries_marker(client: OpenComputerClient, sandbox_id: str, marker: str) -> bool:
    """Whether the sandbox's environment holds this request's marker (a read-only `printenv`)."""
    try:
        result = await client.exec.run(sandbox_id, ["printenv", CREATE_MARKER_ENV], timeout=15)
    except OpenComputerError:
        return False
    return result.ok and result.stdout.strip() == marker


async def find_lost_sandbox(client: OpenComputerClient, asked_at: datetime, marker: str) -> Sandbox | None:
    """The running, untagged sandbox started since `asked_at` that carries `marker`, if there is one."""
    earliest = asked_at - CLOCK_SKEW
    for lookup in range(_LOOKUPS):
        candidates = [
            sandbox
            for sandbox in await client.sandboxes.list()
            if sandbox.is_running
            and not sandbox.tags
            and sandbox.started_at is not None
            and sandbox.started_at >= earliest
        ]
        for candidate in candidates:
            if await _carries_marker(client, candidate.sandbox_id, marker):
                return candidate
        if lookup < _LOOKUPS - 1:
            await asyncio.sleep(_LOOKUP_PAUSE)
    return None


async def create_or_find(
    client: OpenComputerClient, create: Callable[[Mapping[str, str]], Awaitable[Sandbox]]
) -> Sandbox:
    """Run `create` with this request's marker envs; if its answer is lost, adopt the sandbox it made.

    `create` receives the marker as a sandbox environment to merge into its `envs`.
    """
    marker = uuid4().hex
    asked_at = datetime.now(UTC)
    return await done_or_recovered(
        lambda: create({CREATE_MARKER_ENV: marker}),
        lambda: find_lost_sandbox(client, asked_at, marker),
        lambda error, found: (
            f"Lost the answer to a sandbox create ({error}); adopting {found.sandbox_id}, which carries this "
            "request's marker"
        ),
    )


async def done_or_recovered(
    request: Callable[[], Awaitable[T]],
    recover: Callable[[], Awaitable[T | None]],
    describe: Callable[[OpenComputerError, T], str],
) -> T:
    """The request's answer; if the answer is lost after the work may have been done, what `recover` finds
    of that work (logged as `describe` says). With nothing found, the request's own error."""
    try:
        return await request()
    except OpenComputerError as error:
        if not may_have_taken_effect(error):
            raise
        found = await recover()
        if found is None:
            raise
        run_registry.run_logger().warning("%s", describe(error, found))
        return found


# -- Adoption and rollback ------------------------------------------------------------------------------

# Keys under which a create task leaves what its rollback hook needs in the task's transaction.
_ROLLBACK_SANDBOX = "opencomputer.sandbox_id"
_ROLLBACK_CREDENTIALS = "opencomputer.credentials"


async def adopt_new_sandbox(
    client: OpenComputerClient,
    credentials: OpenComputerCredentials,
    sandbox: Sandbox,
    *,
    tags: Mapping[str, str] | None,
    idle_timeout: int | None,
) -> Sandbox:
    """Tag a sandbox this task just created (and set its idle timeout); on any failure, kill it.

    Runs right after the create/fork request, so the sandbox is never left running without the tags that
    let cleanup hooks and the reaper find it.
    """
    transaction = get_transaction()
    if transaction is not None:
        transaction.set(_ROLLBACK_SANDBOX, sandbox.sandbox_id)
        transaction.set(_ROLLBACK_CREDENTIALS, credentials)
    try:
        applied = await client.sandboxes.set_tags(
            sandbox.sandbox_id, {**(tags or {}), **ownership.ownership_tags()}
        )
        if idle_timeout is not None:
            await client.sandboxes.set_timeout(sandbox.sandbox_id, idle_timeout)
    except BaseException:
        await finish_despite_cancellation(
            kill_ignoring_missing(client, sandbox.sandbox_id), timeout=KILL_TIMEOUT
        )
        raise
    return sandbox.model_copy(
        update={"tags": applied.tags, "tags_last_updated_at": applied.tags_last_updated_at}
    )


async def kill_on_rollback(transaction: BaseTransaction) -> None:
    """`on_rollback` hook of the create tasks: a rolled-back transaction leaves no sandbox behind."""
    sandbox_id = transaction.get(_ROLLBACK_SANDBOX, None)
    credentials = transaction.get(_ROLLBACK_CREDENTIALS, None)
    if sandbox_id is None or credentials is None:
        return
    await kill_sandbox_now(credentials, sandbox_id, reason="transaction rolled back")


# Prefect types rollback hooks as sync; both transaction kinds also await coroutine hooks.
rollback_hook = cast("Callable[[Transaction], None]", kill_on_rollback)


# -- Quota slots ----------------------------------------------------------------------------------------


@dataclass
class SlotClaim:
    """The concurrency slot a create holds (none without a limit, or when the limit does not exist)."""

    limit: str | None
    strict: bool
    lease: UUID | None = None
    bound: bool = False

    @property
    def tags(self) -> dict[str, str]:
        return quota.lease_tags(self.lease)

    def bind(self, sandbox_id: str) -> None:
        """The create answered: the slot is the sandbox's now, given back when it is killed."""
        if self.limit is not None:
            quota.bind(sandbox_id, self.lease, self.limit, strict=self.strict)
        self.bound = True


@contextlib.asynccontextmanager
async def slot_for_create(limit: str | None, *, strict: bool) -> AsyncIterator[SlotClaim]:
    """Wait for a slot of `limit` (none when None) for the length of a create; given back if it fails."""
    claim = SlotClaim(limit, strict)
    if limit is not None:
        claim.lease = await quota.take_slot(limit, strict=strict)
    try:
        yield claim
    except BaseException:
        if claim.lease is not None and not claim.bound:
            await finish_despite_cancellation(quota.give_back(claim.lease), timeout=KILL_TIMEOUT)
        raise


async def wait_out_full_quota(create: Callable[[], Awaitable[T]], *, patient: bool) -> T:
    """`create()`, and when `patient`, again after each 429 (refused at the door: nothing was created)
    for up to `QUOTA_PATIENCE` seconds; the 429 is raised as `RateLimitedError` past that, or at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + QUOTA_PATIENCE
    delay = 1.0
    while True:
        try:
            return await create()
        except RateLimitedError as error:
            if not patient or loop.time() + delay > deadline:
                raise
            run_registry.run_logger().info(
                "The service's sandbox quota is full (%s); trying again in %.0f s", error, delay
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, _QUOTA_POLL_MAX)


# -- Kills and deletions ---------------------------------------------------------------------------------


async def removed_by_this_call(removal: Awaitable[object]) -> bool:
    """Await a kill or a delete: True when this call removed the thing, False when it was already gone (404),
    so that every kill and delete can be retried and still say what it did."""
    try:
        await removal
    except NotFoundError:
        return False
    return True


async def kill_ignoring_missing(
    client: OpenComputerClient, sandbox_id: str, *, tags: Mapping[str, str] | None = None
) -> bool:
    """Kill; False when it was already gone. Either way its concurrency slot (held here, or named in the
    sandbox's `tags`) is given back."""
    killed = await removed_by_this_call(client.sandboxes.kill(sandbox_id))
    await quota.release_slot_of(sandbox_id, tags)
    quota.forget(sandbox_id)
    return killed


async def kill_sandbox_now(
    credentials: OpenComputerCredentials,
    sandbox_id: str,
    *,
    reason: str,
    flow_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> bool:
    """Kill a sandbox outside any task run (cleanup paths); finishes even while the caller is cancelled.

    Returns True when this call killed it, False when it was already gone. `tags`, the sandbox's, name its
    concurrency slot when another process took it.
    """

    async def kill() -> bool:
        async with credentials.get_client() as client:
            return await kill_ignoring_missing(client, sandbox_id, tags=tags)

    killed = await finish_despite_cancellation(kill(), timeout=KILL_TIMEOUT)
    record_kill(sandbox_id, reason, killed, flow_run_id=flow_run_id)
    return killed


def record_kill(sandbox_id: str, reason: str, killed: bool, *, flow_run_id: str | None = None) -> None:
    """A kill shows in the run's report, as an event related to the run, and in its log."""
    run_report.record("kill", sandbox_id, reason, "killed" if killed else "already gone")
    if killed:
        events.emit_sandbox_event(
            events.SANDBOX_KILLED, sandbox_id, payload={"reason": reason}, flow_run_id=flow_run_id
        )
        run_registry.run_logger().info("Killed sandbox %s (%s)", sandbox_id, reason)


async def delete_checkpoint_now(
    credentials: OpenComputerCredentials, sandbox_id: str, checkpoint_id: str, *, reason: str
) -> bool:
    """Delete a checkpoint outside any task run (cleanup paths); False when it was already gone."""

    async def delete() -> bool:
        async with credentials.get_client() as client:
            return await removed_by_this_call(client.checkpoints.delete(sandbox_id, checkpoint_id))

    deleted = await finish_despite_cancellation(delete(), timeout=KILL_TIMEOUT)
    record_checkpoint_deleted(sandbox_id, checkpoint_id, reason, deleted)
    return deleted


def record_checkpoint_deleted(sandbox_id: str, checkpoint_id: str, reason: str, deleted: bool) -> None:
    """A deletion (or a checkpoint found already gone) leaves the run's cleanup list, shows in its report,
    and is announced, so the reaper stops counting the checkpoint."""
    run_registry.forget_checkpoint(sandbox_id, checkpoint_id)
    run_report.record(
        "delete-checkpoint",
        sandbox_id,
        f"{checkpoint_id[:8]} ({reason})",
        "deleted" if deleted else "already gone",
    )
    events.emit_sandbox_event(
        events.CHECKPOINT_DELETED,
        sandbox_id,
        checkpoint_id=checkpoint_id,
        payload={"checkpoint_id": checkpoint_id, "reason": reason},
    )
