"""Ownership tags: what ties a sandbox to the Prefect run that made it, readable from any process.

Cleanup hooks and the reaper find a run's sandboxes by these tags, on the service, long after this process
is gone.
"""

from __future__ import annotations

from prefect.context import FlowRunContext, TaskRunContext

from prefect_opencomputer.tasks import leases

TAG_CREATED_BY = "prefect.created_by"
TAG_FLOW_RUN = "prefect.flow_run_id"
TAG_TASK_RUN = "prefect.task_run_id"
TAG_DEPLOYMENT = "prefect.deployment_id"
# The flow run an `opencomputer` worker runs in the sandbox. Not TAG_FLOW_RUN: the flow's own cleanup hooks
# kill every sandbox tagged with its run, and would kill the one they run in.
TAG_WORKER_FLOW_RUN = "prefect.worker.flow_run_id"
# A sandbox meant to outlive its flow run (say, the one holding a golden checkpoint): hooks and the reaper
# leave it alone whatever the value.
TAG_RETAIN = "prefect.retain"
CREATED_BY = "prefect-opencomputer"
# Every tag this integration sets (the ones above, the owner lease, the concurrency lease) starts so.
OWNERSHIP_TAG_PREFIX = "prefect."

# Idle timeout (seconds) given to every sandbox this integration creates: an orphan hibernates, never
# runs forever. 0 would mean "persistent", which only a caller who asks for it gets.
DEFAULT_IDLE_TIMEOUT = 600


def ownership_tags() -> dict[str, str]:
    """Tags naming the current flow run, task run and deployment (whichever exist), and the lease this
    process renews while it lives (so the reaper knows when the owner is gone)."""
    tags = {TAG_CREATED_BY: CREATED_BY, leases.TAG_OWNER_LEASE: leases.held_lease()}
    task_context = TaskRunContext.get()
    flow_context = FlowRunContext.get()
    if task_context is not None:
        tags[TAG_TASK_RUN] = str(task_context.task_run.id)
        if task_context.task_run.flow_run_id is not None:
            tags[TAG_FLOW_RUN] = str(task_context.task_run.flow_run_id)
    flow_run = flow_context.flow_run if flow_context is not None else None
    if flow_run is not None:
        tags.setdefault(TAG_FLOW_RUN, str(flow_run.id))
        if flow_run.deployment_id is not None:
            tags[TAG_DEPLOYMENT] = str(flow_run.deployment_id)
    return tags


def is_ours(tags: dict[str, str]) -> bool:
    return tags.get(TAG_CREATED_BY) == CREATED_BY


def is_retained(tags: dict[str, str]) -> bool:
    return TAG_RETAIN in tags
