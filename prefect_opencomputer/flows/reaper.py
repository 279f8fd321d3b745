"""`reap_orphaned_sandboxes`: kill the sandboxes, and delete the checkpoints, that this integration made for
flow runs that are over (see `prefect_opencomputer.tasks.find_orphans` for what counts as an orphan)."""

# No `from __future__ import annotations`: Prefect builds each flow's parameter model from its
# annotations, and must resolve them wherever the flow is loaded (a runner loads it by file path).

import asyncio
from collections.abc import Coroutine
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from pydantic import BaseModel, ConfigDict, Field

from prefect_opencomputer.blocks import OpenComputerCredentials, aload_credentials
from prefect_opencomputer.tasks import (
    KeptSandbox,
    Orphan,
    OrphanedCheckpoint,
    adelete_checkpoint,
    afind_orphans,
    akill_sandbox,
    leases,
)
from prefect_opencomputer.worker import crash_runs_whose_sandbox_is_gone


class ReaperParameters(BaseModel):
    """Whether the reaper only reports, or also kills."""

    model_config = ConfigDict(frozen=True)

    dry_run: bool = Field(default=False, description="Report the orphans without killing them.")


class ReaperReport(BaseModel):
    """What one reaper run examined, kept, killed and deleted."""

    dry_run: bool
    examined: int
    kept: int
    orphans: list[Orphan]
    checkpoints: list[OrphanedCheckpoint] = Field(default=[])
    kept_sandboxes: list[KeptSandbox] = Field(default=[])
    # Flow runs Prefect called live whose owning process is gone, proposed Crashed.
    crashed_flow_runs: list[str] = Field(default=[])

    @property
    def killed(self) -> list[str]:
        return [orphan.sandbox_id for orphan in self.orphans if orphan.killed]

    @property
    def deleted_checkpoints(self) -> list[str]:
        return [checkpoint.checkpoint_id for checkpoint in self.checkpoints if checkpoint.deleted]


DEFAULT_PARAMETERS = ReaperParameters()


@flow(name="reap-orphaned-sandboxes")
async def reap_orphaned_sandboxes(
    parameters: ReaperParameters = DEFAULT_PARAMETERS,
    credentials: OpenComputerCredentials | None = None,
    credentials_block: str | None = None,
) -> ReaperReport:
    """Kill the sandboxes and delete the checkpoints of flow runs that are over; publish a table of it.

    Args:
        parameters: Whether to only report (dry run).
        credentials: A saved OpenComputerCredentials block (a picker in the UI).
        credentials_block: Or the name of one; with neither, OPENCOMPUTER_API_KEY and OPENCOMPUTER_API_URL
            are read from the environment.
    """
    credentials = await aload_credentials(credentials_block, credentials=credentials)
    logger = get_run_logger()
    examined, orphans, checkpoints, kept = await afind_orphans(credentials=credentials)
    crashed: list[str] = []
    if not parameters.dry_run:
        # Checkpoints first: a checkpoint is deleted through its sandbox.
        deleted = await _each_at_once(
            [
                adelete_checkpoint(cp.checkpoint_id, sandbox=cp.sandbox_id, credentials=credentials)
                for cp in checkpoints
            ],
            [f"delete checkpoint {cp.checkpoint_id}" for cp in checkpoints],
        )
        for checkpoint, was_deleted in zip(checkpoints, deleted, strict=True):
            checkpoint.deleted = was_deleted
        killed = await _each_at_once(
            [akill_sandbox(orphan.sandbox_id, credentials=credentials) for orphan in orphans],
            [f"kill {orphan.sandbox_id}" for orphan in orphans],
        )
        for orphan, was_killed in zip(orphans, killed, strict=True):
            orphan.killed = was_killed
        crashed = await _crash_runs_whose_owner_is_gone(orphans, kept)
        await leases.delete_expired_leases()
    for sandbox in kept:
        logger.info("Kept %s (flow run %s): %s", sandbox.sandbox_id, sandbox.flow_run_id, sandbox.reason)
    await _crash_worker_runs_whose_sandbox_is_gone(credentials, dry_run=parameters.dry_run)
    report = ReaperReport(
        dry_run=parameters.dry_run,
        examined=examined,
        kept=len(kept),
        orphans=orphans,
        checkpoints=checkpoints,
        kept_sandboxes=kept,
        crashed_flow_runs=crashed,
    )
    verb = "would kill" if parameters.dry_run else "killed"
    logger.info(
        "Examined %d sandbox(es) of this integration; %s %d, kept %d; %d orphaned checkpoint(s)",
        examined,
        verb,
        len(report.killed) if not parameters.dry_run else len(orphans),
        report.kept,
        len(checkpoints),
    )
    if orphans or checkpoints:
        action = "dry run" if parameters.dry_run else "not removed"
        rows = [
            {
                "sandbox": orphan.sandbox_id,
                "checkpoint": "-",
                "flow run": orphan.flow_run_id,
                "reason": orphan.reason,
                "action": "killed" if orphan.killed else action,
            }
            for orphan in orphans
        ] + [
            {
                "sandbox": checkpoint.sandbox_id,
                "checkpoint": checkpoint.checkpoint_id,
                "flow run": checkpoint.flow_run_id,
                "reason": checkpoint.reason,
                "action": "deleted" if checkpoint.deleted else action,
            }
            for checkpoint in checkpoints
        ]
        await acreate_table_artifact(
            table=rows,
            key="opencomputer-reaper",
            description=f"Orphans: {examined} sandbox(es) examined, {len(orphans)} orphaned, "
            f"{len(checkpoints)} orphaned checkpoint(s).",
        )
    return report


async def _crash_runs_whose_owner_is_gone(orphans: list[Orphan], kept: list[KeptSandbox]) -> list[str]:
    """Propose Crashed for each flow run Prefect calls live whose sandboxes all outlived their owner."""
    logger = get_run_logger()
    alive = {sandbox.flow_run_id for sandbox in kept}
    reasons = {
        orphan.flow_run_id: orphan.reason
        for orphan in orphans
        if orphan.owner_gone and orphan.killed and orphan.flow_run_id not in alive
    }
    crashed: list[str] = []
    for flow_run_id, reason in sorted(reasons.items()):
        try:
            if await leases.propose_crashed(flow_run_id, reason):
                crashed.append(flow_run_id)
                logger.info("Flow run %s is Crashed: %s", flow_run_id, reason)
        except Exception as exc:
            logger.warning("Could not mark flow run %s Crashed: %s", flow_run_id, exc)
    return crashed


async def _crash_worker_runs_whose_sandbox_is_gone(
    credentials: OpenComputerCredentials, *, dry_run: bool
) -> None:
    """Flow runs of `opencomputer` work pools whose sandbox is gone: nothing else would ever end them."""
    logger = get_run_logger()
    for lost in await crash_runs_whose_sandbox_is_gone(credentials, dry_run=dry_run):
        verb = "would mark" if dry_run else "marked" if lost.crashed else "could not mark"
        logger.warning("Flow run %s: %s; %s it Crashed", lost.flow_run_id, lost.reason, verb)


async def _each_at_once(removals: list[Coroutine[Any, Any, bool]], actions: list[str]) -> list[bool]:
    """Run the removals together; each says whether it removed its resource. One that fails is logged with
    its action ("kill sb-…") and counts as not removed, so one failure does not stop the others."""
    outcomes = await asyncio.gather(*removals, return_exceptions=True)
    removed: list[bool] = []
    for action, outcome in zip(actions, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            get_run_logger().warning("Could not %s: %s", action, outcome)
        removed.append(outcome is True)
    return removed
