"""The reaper's look at the `opencomputer` work pool: Pending or Running flow runs that can never finish.

Their sandbox is gone, or their worker died and its flow-run process with it. Nothing else reports such a
run; the reaper ends it Crashed, saying why, and kills what is left of its sandbox. (Sandboxes whose flow
run is over are found with the other orphans, `tasks.find_orphans`.)
"""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterType,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.exceptions import InfrastructureNotAvailable
from prefect.states import Crashed
from pydantic import BaseModel

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import NotFoundError, OpenComputerClient
from prefect_opencomputer.tasks.leakproof import kill_ignoring_missing
from prefect_opencomputer.worker.worker import OpenComputerWorker, parse_infrastructure_id

# The most flow runs the API returns at once, and how many pages one reaper run reads.
_PAGE = 200
_PAGES = 25


class LostFlowRun(BaseModel):
    """A flow run the worker pool started whose sandbox no longer runs."""

    flow_run_id: str
    sandbox_id: str
    reason: str
    crashed: bool = False


async def crash_runs_whose_sandbox_is_gone(
    credentials: OpenComputerCredentials, *, dry_run: bool = False
) -> list[LostFlowRun]:
    """Propose Crashed, saying why, for Pending or Running runs of `opencomputer` pools that are lost.

    Only runs whose infrastructure id names the endpoint `credentials` point at are judged.
    """
    lost: list[LostFlowRun] = []
    async with get_client() as prefect, credentials.get_client() as client:
        flow_runs: list[FlowRun] = []
        for page in range(_PAGES):
            found = await prefect.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
                    )
                ),
                work_pool_filter=WorkPoolFilter(type=WorkPoolFilterType(any_=[OpenComputerWorker.type])),
                limit=_PAGE,
                offset=page * _PAGE,
            )
            flow_runs += found
            if len(found) < _PAGE:
                break
        for flow_run in flow_runs:
            if not flow_run.infrastructure_pid:
                continue
            try:
                api_base, sandbox_id = parse_infrastructure_id(flow_run.infrastructure_pid)
            except InfrastructureNotAvailable:
                continue
            if api_base != client.api_base:
                continue
            reason = await _why_lost(client, sandbox_id, running=flow_run.state_type == StateType.RUNNING)
            if reason is None:
                continue
            run = LostFlowRun(flow_run_id=str(flow_run.id), sandbox_id=sandbox_id, reason=reason)
            if not dry_run:
                crashed: State[None] = Crashed(message=run.reason)
                result = await prefect.set_flow_run_state(flow_run.id, crashed)
                run.crashed = result.state is not None and result.state.is_crashed()
                if run.crashed:
                    await kill_ignoring_missing(client, sandbox_id)
            lost.append(run)
    return lost


async def _why_lost(client: OpenComputerClient, sandbox_id: str, *, running: bool) -> str | None:
    """Why the run in `sandbox_id` can never finish, or None while it may.

    A Running run's worker stays attached to its process, which keeps the sandbox busy: hibernated, or
    running nothing, the worker is gone and its process with it (after the pool's `lost_worker_grace`).
    A Pending run has no process yet, so only a gone sandbox tells.
    """
    try:
        status = (await client.sandboxes.get(sandbox_id)).status
    except NotFoundError:
        status = "unknown to the service"
    if status not in ("running", "hibernated"):
        return f"its sandbox {sandbox_id} is {status}: the flow-run process is gone"
    if not running:
        return None
    if status == "hibernated":
        return f"its sandbox {sandbox_id} hibernated: the worker that ran it is gone"
    try:
        sessions = await client.exec.list(sandbox_id)
    except NotFoundError:
        return f"its sandbox {sandbox_id} is gone: the flow-run process is gone"
    if any(session.running for session in sessions):
        return None
    return f"its sandbox {sandbox_id} runs no flow-run process: the worker that ran it is gone"
