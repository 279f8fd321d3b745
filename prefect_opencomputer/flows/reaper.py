"""`reap_orphaned_sandboxes`: kill sandboxes this integration created for flow runs that are over.

The backstop for what no in-process cleanup can cover (SIGKILL, OOM, a lost machine): a sandbox is an
orphan when the flow run named in its `prefect.flow_run_id` tag is in a final state, or unknown to this
Prefect API. Candidates are the listed (running) sandboxes plus those this integration announced in Prefect
events and never killed, which finds orphans that have since hibernated on their idle timeout. A sandbox
whose flow run is scheduled, pending, running, paused or cancelling is never touched; neither is one
without this integration's tags, nor one tagged `prefect.retain`.
"""

# No `from __future__ import annotations`: Prefect builds each flow's parameter model from its
# annotations, and must resolve them wherever the flow is loaded (a runner loads it by file path).

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.events import EventPage
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel, ConfigDict, Field

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials, load_credentials
from prefect_opencomputer.client import NotFoundError, OpenComputerClient, Sandbox
from prefect_opencomputer.tasks import kill_sandbox
from prefect_opencomputer.tasks.events import (
    SANDBOX_CREATED,
    SANDBOX_FORKED,
    SANDBOX_KILLED,
    SANDBOX_RESOURCE_PREFIX,
)
from prefect_opencomputer.tasks.naming import TASK_TAG
from prefect_opencomputer.tasks.ownership import TAG_FLOW_RUN, is_ours, is_retained

# Prefect keeps events for 7 days by default: older announcements are gone anyway.
_EVENT_WINDOW = timedelta(days=7)
_EVENT_PAGE = 50  # the most the events API returns at once
_EVENT_PAGES = 200


class ReaperParameters(BaseModel):
    """Whether the reaper only reports, or also kills."""

    model_config = ConfigDict(frozen=True)

    dry_run: bool = Field(default=False, description="Report the orphans without killing them.")


class Orphan(BaseModel):
    """A sandbox whose flow run is over, and why the reaper judged so."""

    sandbox_id: str
    flow_run_id: str
    reason: str
    killed: bool = False


class ReapReport(BaseModel):
    """What one reaper run examined, kept and killed."""

    dry_run: bool
    examined: int
    kept: int
    orphans: list[Orphan]

    @property
    def killed(self) -> list[str]:
        return [orphan.sandbox_id for orphan in self.orphans if orphan.killed]


async def _flow_run_verdict(flow_run_id: str) -> str | None:
    """Why the flow run no longer needs its sandboxes, or None while it may still use them."""
    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        return None  # not a tag we wrote: not ours to judge
    async with get_client() as prefect:
        try:
            flow_run = await prefect.read_flow_run(run_id)
        except ObjectNotFound:
            return "flow run not found"
    if flow_run.state is not None and flow_run.state.is_final():
        return f"flow run {flow_run.state.name}"
    return None


async def _announced_sandboxes() -> set[str]:
    """Sandboxes this integration announced (created or forked) within the event retention window and
    never announced killed: the list route shows only running sandboxes, so hibernated orphans are found
    this way."""
    announced: set[str] = set()
    killed: set[str] = set()
    window = EventFilter(
        occurred=EventOccurredFilter(since=datetime.now(UTC) - _EVENT_WINDOW),
        event=EventNameFilter(name=[SANDBOX_CREATED, SANDBOX_FORKED, SANDBOX_KILLED]),
    )
    async with get_client() as prefect:
        page: EventPage | None = await prefect.read_events(window, limit=_EVENT_PAGE)
        for _ in range(_EVENT_PAGES):
            if page is None:
                break
            for event in page.events:
                sandbox_id = event.resource.id.removeprefix(SANDBOX_RESOURCE_PREFIX)
                (killed if event.event == SANDBOX_KILLED else announced).add(sandbox_id)
            page = await prefect.read_events_page(str(page.next_page)) if page.next_page else None
    return announced - killed


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


@task(name="find_orphaned_sandboxes", task_run_name="find-orphans", tags=[TASK_TAG], cache_policy=NO_CACHE)
async def find_orphaned_sandboxes(credentials: OpenComputerCredentials) -> tuple[int, list[Orphan]]:
    """(how many reapable sandboxes of this integration exist, those among them whose flow run is over)."""
    async with credentials.get_client() as client:
        listed = await client.sandboxes.list()
        unlisted = await _announced_sandboxes() - {sb.sandbox_id for sb in listed}
        found = await asyncio.gather(
            *(_with_tags(client, sb) for sb in listed), *(_look_up(client, sid) for sid in sorted(unlisted))
        )
    ours = [
        sb
        for sb in found
        if sb is not None and is_ours(sb.tags) and sb.tags.get(TAG_FLOW_RUN) and not is_retained(sb.tags)
    ]
    flow_run_ids = sorted({sb.tags[TAG_FLOW_RUN] for sb in ours})
    verdicts = dict(
        zip(flow_run_ids, await asyncio.gather(*map(_flow_run_verdict, flow_run_ids)), strict=True)
    )
    orphans = [
        Orphan(sandbox_id=sb.sandbox_id, flow_run_id=sb.tags[TAG_FLOW_RUN], reason=reason)
        for sb in ours
        if (reason := verdicts[sb.tags[TAG_FLOW_RUN]]) is not None
    ]
    return len(ours), orphans


DEFAULT_PARAMETERS = ReaperParameters()


@flow(name="reap-orphaned-sandboxes")
async def reap_orphaned_sandboxes(
    parameters: ReaperParameters = DEFAULT_PARAMETERS, credentials_block: str | None = None
) -> ReapReport:
    """Kill the sandboxes of flow runs that are over; publish a table of what it killed and why.

    Args:
        parameters: Whether to only report (dry run).
        credentials_block: Name of a saved OpenComputerCredentials block; empty reads
            OPENCOMPUTER_API_KEY and OPENCOMPUTER_API_URL from the environment.
    """
    credentials = await load_credentials(credentials_block)
    logger = get_run_logger()
    examined, orphans = await find_orphaned_sandboxes(credentials)
    if not parameters.dry_run:
        outcomes = await asyncio.gather(
            *(kill_sandbox(credentials, orphan.sandbox_id) for orphan in orphans), return_exceptions=True
        )
        for orphan, outcome in zip(orphans, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                logger.warning("Could not kill %s: %s", orphan.sandbox_id, outcome)
            else:
                orphan.killed = outcome
    report = ReapReport(
        dry_run=parameters.dry_run, examined=examined, kept=examined - len(orphans), orphans=orphans
    )
    verb = "would kill" if parameters.dry_run else "killed"
    logger.info(
        "Examined %d sandbox(es) of this integration; %s %d, kept %d",
        examined,
        verb,
        len(report.killed) if not parameters.dry_run else len(orphans),
        report.kept,
    )
    if orphans:
        await acreate_table_artifact(
            table=[
                {
                    "sandbox": orphan.sandbox_id,
                    "flow run": orphan.flow_run_id,
                    "reason": orphan.reason,
                    "action": "killed"
                    if orphan.killed
                    else ("dry run" if parameters.dry_run else "not killed"),
                }
                for orphan in orphans
            ],
            key="opencomputer-reaper",
            description=f"Orphaned sandboxes: {examined} examined, {len(orphans)} orphaned.",
        )
    return report
