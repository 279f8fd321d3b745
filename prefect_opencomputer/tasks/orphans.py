"""Finding what this integration left behind for flow runs that are over: sandboxes and checkpoints.

The backstop for what no in-process cleanup can cover (SIGKILL, OOM, a lost machine). A sandbox is an
orphan when the flow run named in its `prefect.flow_run_id` tag is in a final state, or unknown to this
Prefect API, or when the process that created it stopped renewing its owner lease (see `leases`): a
locally run flow killed with SIGKILL stays Running in Prefect forever. Candidates are the listed
(running) sandboxes plus those this integration announced in Prefect events and never killed, which finds
orphans that have since hibernated on their idle timeout. Otherwise a sandbox whose flow run is scheduled,
pending, running, paused or cancelling is kept; so is one without this integration's tags, and one tagged
`prefect.retain`.

A checkpoint is an orphan when the event announcing it names a flow run that ended without completing
(failed, crashed, cancelled) or that is gone, no event says it was deleted, it still exists, and its
sandbox is not retained. A completed run that kept a checkpoint meant to keep it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.events import EventPage
from prefect.client.schemas.objects import StateType
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import NotFoundError, OpenComputerClient, Sandbox
from prefect_opencomputer.tasks import events, leases, ownership
from prefect_opencomputer.tasks.factory import opencomputer_task, resolve_credentials
from prefect_opencomputer.tasks.retries import retry_if_replayable

# Prefect keeps events for 7 days by default: older announcements are gone anyway.
_EVENT_WINDOW = timedelta(days=7)
_EVENT_PAGE = 50  # the most the events API returns at once
_EVENT_PAGES = 200


class Orphan(BaseModel):
    """A sandbox whose flow run is over, and why the reaper judged so."""

    sandbox_id: str
    flow_run_id: str
    reason: str
    killed: bool = False
    # Prefect still calls the flow run live, but the process that owned the sandbox is gone.
    owner_gone: bool = False


class KeptSandbox(BaseModel):
    """A sandbox of this integration the reaper left alone, and why."""

    sandbox_id: str
    flow_run_id: str | None
    reason: str


class OrphanedCheckpoint(BaseModel):
    """A checkpoint a flow run made and left when it did not complete."""

    checkpoint_id: str
    sandbox_id: str
    flow_run_id: str
    reason: str
    deleted: bool = False


@dataclass
class _Announcements:
    """What this integration's events say exists: sandboxes never killed, checkpoints never deleted."""

    sandboxes: set[str] = field(default_factory=set)
    # checkpoint id -> (sandbox id, flow run id)
    checkpoints: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Verdict:
    """Why a flow run no longer needs what it made (None while it may still use it)."""

    reason: str | None
    completed: bool = False


async def _flow_run_verdict(flow_run_id: str) -> _Verdict:
    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        return _Verdict(None)  # not a tag we wrote: not ours to judge
    async with get_client() as prefect:
        try:
            flow_run = await prefect.read_flow_run(run_id)
        except ObjectNotFound:
            return _Verdict("flow run not found")
    if flow_run.state is not None and flow_run.state.is_final():
        return _Verdict(
            f"flow run {flow_run.state.name}", completed=flow_run.state.type == StateType.COMPLETED
        )
    return _Verdict(None)


async def _announcements() -> _Announcements:
    """Read this integration's events within the retention window (the sandbox list shows only running
    sandboxes, and there is no list of checkpoints across sandboxes)."""
    found = _Announcements()
    killed: set[str] = set()
    deleted: set[str] = set()
    window = EventFilter(
        occurred=EventOccurredFilter(since=datetime.now(UTC) - _EVENT_WINDOW),
        event=EventNameFilter(
            name=[
                events.SANDBOX_CREATED,
                events.SANDBOX_FORKED,
                events.SANDBOX_KILLED,
                events.CHECKPOINT_CREATED,
                events.CHECKPOINT_DELETED,
            ]
        ),
    )
    async with get_client() as prefect:
        page: EventPage | None = await prefect.read_events(window, limit=_EVENT_PAGE)
        for _ in range(_EVENT_PAGES):
            if page is None:
                break
            for event in page.events:
                sandbox_id = event.resource.id.removeprefix(events.SANDBOX_RESOURCE_PREFIX)
                checkpoint_id = str(event.payload.get("checkpoint_id") or "")
                if event.event == events.SANDBOX_KILLED:
                    killed.add(sandbox_id)
                elif event.event == events.CHECKPOINT_DELETED:
                    deleted.add(checkpoint_id)
                elif event.event == events.CHECKPOINT_CREATED:
                    flow_run_id = event.payload.get("flow_run_id")
                    if checkpoint_id and isinstance(flow_run_id, str):
                        found.checkpoints[checkpoint_id] = (sandbox_id, flow_run_id)
                else:
                    found.sandboxes.add(sandbox_id)
            page = await prefect.read_events_page(str(page.next_page)) if page.next_page else None
    found.sandboxes -= killed
    for checkpoint_id in deleted:
        found.checkpoints.pop(checkpoint_id, None)
    return found


async def _with_tags(client: OpenComputerClient, sandbox: Sandbox) -> Sandbox:
    """The sandbox with its tags (the hosted service's list and GET shapes carry none)."""
    if sandbox.tags:
        return sandbox
    tags = await client.sandboxes.get_tags(sandbox.sandbox_id)
    return sandbox.model_copy(update={"tags": tags.tags})


async def _look_up(client: OpenComputerClient, sandbox_id: str) -> Sandbox | None:
    """A sandbox that may still hold resources (running or hibernated), with its tags; else None."""
    try:
        sandbox = await client.sandboxes.get(sandbox_id)
        if sandbox.status not in ("running", "hibernated"):
            return None
        return await _with_tags(client, sandbox)
    except NotFoundError:
        return None


async def _is_retained(client: OpenComputerClient, sandbox_id: str) -> bool:
    try:
        return ownership.is_retained((await client.sandboxes.get_tags(sandbox_id)).tags)
    except NotFoundError:
        return False


async def _exists(client: OpenComputerClient, sandbox_id: str, checkpoint_id: str) -> bool:
    try:
        return any(cp.id == checkpoint_id for cp in await client.checkpoints.list(sandbox_id))
    except NotFoundError:
        return False


@opencomputer_task("find_orphans", run_name="find-orphans", retry_condition=retry_if_replayable)
async def find_orphans(
    *, credentials: OpenComputerCredentials | None = None
) -> tuple[int, list[Orphan], list[OrphanedCheckpoint], list[KeptSandbox]]:
    """What this integration left for flow runs that are over, or whose owning process is gone.

    Returns:
        How many sandboxes of this integration it examined (orphans plus kept, retained ones included),
        the orphans, the orphaned checkpoints, and the sandboxes kept, each with the reason.

    Example:
        ```python
        examined, sandboxes, checkpoints, kept = find_orphans()
        ```
    """
    credentials = await resolve_credentials(credentials)
    announced = await _announcements()
    owner_leases = await leases.read_leases()
    now = datetime.now(UTC)
    async with credentials.get_client() as client:
        listed = await client.sandboxes.list()
        unlisted = announced.sandboxes - {sb.sandbox_id for sb in listed}
        found = await asyncio.gather(
            *(_with_tags(client, sb) for sb in listed), *(_look_up(client, sid) for sid in sorted(unlisted))
        )
        kept: list[KeptSandbox] = []
        ours: list[Sandbox] = []
        for sb in found:
            if sb is None or not ownership.is_ours(sb.tags) or not sb.tags.get(ownership.TAG_FLOW_RUN):
                continue
            if ownership.is_retained(sb.tags):
                retained = f"retained: {sb.tags[ownership.TAG_RETAIN]}"
                kept.append(
                    KeptSandbox(
                        sandbox_id=sb.sandbox_id, flow_run_id=sb.tags[ownership.TAG_FLOW_RUN], reason=retained
                    )
                )
            else:
                ours.append(sb)
        flow_run_ids = sorted(
            {sb.tags[ownership.TAG_FLOW_RUN] for sb in ours}
            | {run for _, run in announced.checkpoints.values()}
        )
        verdicts = dict(
            zip(flow_run_ids, await asyncio.gather(*map(_flow_run_verdict, flow_run_ids)), strict=True)
        )
        orphans: list[Orphan] = []
        for sb in ours:
            flow_run_id = sb.tags[ownership.TAG_FLOW_RUN]
            if (over := verdicts[flow_run_id].reason) is not None:
                orphans.append(Orphan(sandbox_id=sb.sandbox_id, flow_run_id=flow_run_id, reason=over))
                continue
            owner = leases.judge_owner(sb.tags, sb.started_at, owner_leases, now)
            if owner.gone:
                orphans.append(
                    Orphan(
                        sandbox_id=sb.sandbox_id,
                        flow_run_id=flow_run_id,
                        reason=owner.reason,
                        owner_gone=True,
                    )
                )
            else:
                kept.append(
                    KeptSandbox(sandbox_id=sb.sandbox_id, flow_run_id=flow_run_id, reason=owner.reason)
                )
        examined = len(orphans) + len(kept)
        worker_sandboxes, worker_orphans = await _worker_orphans([sb for sb in found if sb is not None])
        examined += worker_sandboxes
        orphans += worker_orphans
        checkpoints: list[OrphanedCheckpoint] = []
        for checkpoint_id, (sandbox_id, flow_run_id) in sorted(announced.checkpoints.items()):
            verdict = verdicts[flow_run_id]
            if verdict.reason is None or verdict.completed:
                continue
            if await _is_retained(client, sandbox_id) or not await _exists(client, sandbox_id, checkpoint_id):
                continue
            checkpoints.append(
                OrphanedCheckpoint(
                    checkpoint_id=checkpoint_id,
                    sandbox_id=sandbox_id,
                    flow_run_id=flow_run_id,
                    reason=verdict.reason,
                )
            )
    return examined, orphans, checkpoints, kept


async def _worker_orphans(sandboxes: list[Sandbox]) -> tuple[int, list[Orphan]]:
    """Sandboxes an `opencomputer` worker runs flow runs in, and those whose flow run is over (a worker
    that died before its kill leaves one). How many there are, and the orphans among them."""
    runs = [
        (sb, sb.tags[ownership.TAG_WORKER_FLOW_RUN])
        for sb in sandboxes
        if ownership.is_ours(sb.tags)
        and sb.tags.get(ownership.TAG_WORKER_FLOW_RUN)
        and not ownership.is_retained(sb.tags)
    ]
    verdicts = await asyncio.gather(*(_flow_run_verdict(flow_run_id) for _, flow_run_id in runs))
    orphans = [
        Orphan(sandbox_id=sb.sandbox_id, flow_run_id=flow_run_id, reason=f"worker sandbox: {verdict.reason}")
        for (sb, flow_run_id), verdict in zip(runs, verdicts, strict=True)
        if verdict.reason is not None
    ]
    return len(runs), orphans


afind_orphans = find_orphans.aio
