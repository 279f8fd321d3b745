"""`checkpoint_fan_out`: prepare one sandbox, checkpoint it, and run a command in N forks in parallel."""

# No `from __future__ import annotations`: Prefect builds each flow's parameter model from its
# annotations, and must resolve them wherever the flow is loaded (a runner loads it by file path).

import asyncio
import time

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_progress_artifact, acreate_table_artifact, aupdate_progress_artifact
from pydantic import BaseModel, ConfigDict, Field

from prefect_opencomputer.blocks import OpenComputerCredentials, aload_credentials
from prefect_opencomputer.client import Checkpoint, OpenComputerError
from prefect_opencomputer.flows.accounting import publish_report, sandboxes_left_by_this_run
from prefect_opencomputer.tasks import (
    acreate_checkpoint,
    adelete_checkpoint,
    arun_command,
    cleanup_hooks,
    open_fork,
    open_sandbox,
)


class FanOutParameters(BaseModel):
    """How `checkpoint_fan_out` prepares the base sandbox and what each fork runs."""

    model_config = ConfigDict(frozen=True)

    template: str = Field(default="base", description="Template of the base sandbox.")
    # A plain default, not a factory: the deployment form shows only defaults that are in the schema.
    prepare_commands: list[str] = Field(
        default=[
            "mkdir -p /home/sandbox/job",
            """echo 'echo "fork $FORK_INDEX of $FORK_COUNT ran in $(hostname)"' > /home/sandbox/job/run.sh""",
        ],
        description="Shell commands run once in the base sandbox, before the checkpoint.",
    )
    forks: int = Field(default=4, ge=1, le=100, description="How many sandboxes to fork from the checkpoint.")
    max_concurrency: int = Field(default=2, ge=1, le=50, description="Forks alive at the same time, at most.")
    command: str = Field(
        default="sh /home/sandbox/job/run.sh",
        description="Shell command run in every fork; FORK_INDEX (0-based) and FORK_COUNT are set.",
    )
    command_timeout: int = Field(default=300, ge=1, description="Seconds the command may run in a fork.")
    idle_timeout: int = Field(default=600, ge=1, description="Idle timeout of each sandbox, in seconds.")
    concurrency_limit: str | None = Field(
        default=None,
        description=(
            "A Prefect global concurrency limit (e.g. opencomputer-sandboxes) whose slots the base sandbox "
            "and every fork hold while they run, shared with every other flow run that names it."
        ),
    )
    concurrency_strict: bool = Field(
        default=False,
        description="Fail when the concurrency limit does not exist, instead of going without it.",
    )


class ForkOutcome(BaseModel):
    """What one fork ran into: its exit code and the end of its output, or the error that stopped it."""

    index: int
    sandbox_id: str | None = None
    exit_code: int | None = None
    output: str = ""
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_code == 0


class FanOutReport(BaseModel):
    """The checkpoint every fork started from, one outcome per fork, and the sandboxes left (zero)."""

    checkpoint_id: str
    outcomes: list[ForkOutcome]
    sandboxes_left: int


class ForkCommandsFailedError(OpenComputerError):
    """Raised by `checkpoint_fan_out` when the command failed in at least one fork."""


DEFAULT_PARAMETERS = FanOutParameters()


@flow(name="checkpoint-fan-out", **cleanup_hooks())
async def checkpoint_fan_out(
    parameters: FanOutParameters = DEFAULT_PARAMETERS,
    credentials: OpenComputerCredentials | None = None,
    credentials_block: str | None = None,
) -> FanOutReport:
    """Prepare once, checkpoint, fork N sandboxes (at most `max_concurrency` at a time), run, clean up.

    Publishes a table of the forks' results and a progress bar; fails if the command failed in any fork.

    Args:
        parameters: How to prepare the base sandbox, how many forks, and what each runs.
        credentials: A saved OpenComputerCredentials block (a picker in the UI).
        credentials_block: Or the name of one; with neither, OPENCOMPUTER_API_KEY and OPENCOMPUTER_API_URL
            are read from the environment.
    """
    credentials = await aload_credentials(credentials_block, credentials=credentials)
    logger = get_run_logger()
    try:
        async with open_sandbox(
            parameters.template,
            credentials=credentials,
            idle_timeout=parameters.idle_timeout,
            concurrency_limit=parameters.concurrency_limit,
            concurrency_strict=parameters.concurrency_strict,
        ) as base:
            for command in parameters.prepare_commands:
                await arun_command(base, command, credentials=credentials, timeout=parameters.command_timeout)
            checkpoint = await acreate_checkpoint(base, "fan-out", credentials=credentials)
            try:
                outcomes = await _run_forks(credentials, checkpoint, parameters)
            finally:
                # Whatever failed, the checkpoint goes too: nothing of this run outlives it.
                await adelete_checkpoint(checkpoint, credentials=credentials)
    finally:
        await publish_report(key="checkpoint-fan-out")
    await acreate_table_artifact(
        table=[_row(outcome) for outcome in outcomes],
        key="checkpoint-fan-out-results",
        description=f"`{parameters.command}` in {parameters.forks} forks of checkpoint {checkpoint.id}.",
    )
    failed = [outcome for outcome in outcomes if not outcome.ok]
    left = await sandboxes_left_by_this_run(credentials)
    if failed:
        summary = "; ".join(f"fork {o.index}: {o.error or f'exit {o.exit_code}'}" for o in failed)
        raise ForkCommandsFailedError(f"{len(failed)} of {len(outcomes)} forks failed: {summary}")
    logger.info("All %d forks succeeded", len(outcomes))
    return FanOutReport(checkpoint_id=checkpoint.id, outcomes=outcomes, sandboxes_left=left)


async def _run_forks(
    credentials: OpenComputerCredentials, checkpoint: Checkpoint, parameters: FanOutParameters
) -> list[ForkOutcome]:
    progress_id = await acreate_progress_artifact(
        progress=0.0, key="checkpoint-fan-out-progress", description="Forks finished."
    )
    slots = asyncio.Semaphore(parameters.max_concurrency)
    # Updates are sent one at a time, in order: two in flight could land 100% before 80%.
    progress_lock = asyncio.Lock()
    done = 0

    async def run_fork(index: int) -> ForkOutcome:
        nonlocal done
        outcome = ForkOutcome(index=index)
        started = time.monotonic()
        async with slots:
            try:
                envs = {"FORK_INDEX": str(index), "FORK_COUNT": str(parameters.forks)}
                async with open_fork(
                    checkpoint,
                    credentials=credentials,
                    idle_timeout=parameters.idle_timeout,
                    concurrency_limit=parameters.concurrency_limit,
                    concurrency_strict=parameters.concurrency_strict,
                ) as fork:
                    outcome.sandbox_id = fork.sandbox_id
                    result = await arun_command(
                        fork,
                        parameters.command,
                        credentials=credentials,
                        envs=envs,
                        timeout=parameters.command_timeout,
                        check=False,
                    )
                    outcome.exit_code = result.exit_code
                    outcome.output = (result.stdout.strip() or result.stderr.strip())[-300:]
            except Exception as exc:
                outcome.error = str(exc)[:300]
        outcome.seconds = round(time.monotonic() - started, 2)
        async with progress_lock:
            done += 1
            await aupdate_progress_artifact(progress_id, 100.0 * done / parameters.forks)
        return outcome

    return list(await asyncio.gather(*(run_fork(index) for index in range(parameters.forks))))


def _row(outcome: ForkOutcome) -> dict[str, str]:
    return {
        "fork": str(outcome.index),
        "sandbox": outcome.sandbox_id or "-",
        "exit code": "-" if outcome.exit_code is None else str(outcome.exit_code),
        "seconds": f"{outcome.seconds:.2f}",
        "output or error": outcome.error or outcome.output,
    }
