"""`rebuild_golden_checkpoint`: rebuild the checkpoint that other flows fork from, keeping its patches.

A nightly deployment runs this. It builds a fresh sandbox, checkpoints it, re-attaches the patch chain of
the previous golden checkpoint (in order), checks that a fork of the new one starts cleanly, and only then
points the Prefect Variable `variable_name` at it and retires the previous golden checkpoint.

The builder sandbox is kept, hibernated and, once all went well, tagged `prefect.retain` (hooks and the
reaper leave it alone): the service deletes a checkpoint only through a sandbox that is not stopped, so the
next rebuild needs it to retire this checkpoint, and then kills it.
"""

# No `from __future__ import annotations`: Prefect builds each flow's parameter model from its
# annotations, and must resolve them wherever the flow is loaded (a runner loads it by file path).

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.variables import Variable
from pydantic import BaseModel, ConfigDict, Field

from prefect_opencomputer.blocks import OpenComputerCredentials, aload_credentials
from prefect_opencomputer.client import OpenComputerError
from prefect_opencomputer.flows.accounting import publish_report
from prefect_opencomputer.tasks import (
    acreate_checkpoint,
    acreate_checkpoint_patch,
    adelete_checkpoint,
    ahibernate_sandbox,
    akill_sandbox,
    alist_checkpoint_patches,
    aretain_sandbox,
    arun_command,
    cleanup_hooks,
    open_fork,
    open_sandbox,
)


class GoldenCheckpointParameters(BaseModel):
    """How the golden sandbox is built, where its checkpoint id is published, and how it is checked."""

    model_config = ConfigDict(frozen=True)

    template: str = Field(default="base", description="Template the golden sandbox starts from.")
    snapshot: str | None = Field(
        default=None, description="Snapshot the golden sandbox starts from instead of the template."
    )
    # A plain default, not a factory: the deployment form shows only defaults that are in the schema.
    setup_commands: list[str] = Field(
        default=[
            "mkdir -p /home/sandbox/golden",
            "date -u +%Y-%m-%dT%H:%M:%SZ > /home/sandbox/golden/built-at",
        ],
        description="Shell commands that build the golden sandbox, in order.",
    )
    verify_command: str = Field(
        default="test -f /home/sandbox/golden/built-at",
        description="Shell command run in a fork of the new checkpoint; a failure keeps the old one.",
    )
    name_prefix: str = Field(default="golden", description="Checkpoint names are this plus a UTC timestamp.")
    variable_name: str = Field(
        default="opencomputer-golden-checkpoint",
        description="Prefect Variable holding the current golden checkpoint (read, then replaced).",
    )
    keep_previous: bool = Field(default=False, description="Keep the previous golden checkpoint.")
    command_timeout: int = Field(default=1800, ge=1, description="Seconds any one command may run.")
    idle_timeout: int = Field(default=600, ge=1, description="Idle timeout of each sandbox, in seconds.")


class GoldenCheckpointReport(BaseModel):
    """The golden checkpoint, as stored in the Prefect Variable."""

    checkpoint_id: str
    sandbox_id: str
    name: str
    patch_ids: list[str] = Field(default_factory=list)
    built_at: datetime


DEFAULT_PARAMETERS = GoldenCheckpointParameters()


@flow(name="rebuild-golden-checkpoint", **cleanup_hooks())
async def rebuild_golden_checkpoint(
    parameters: GoldenCheckpointParameters = DEFAULT_PARAMETERS,
    credentials: OpenComputerCredentials | None = None,
    credentials_block: str | None = None,
) -> GoldenCheckpointReport:
    """Build a new golden checkpoint with the previous one's patches, verify it, then publish it.

    Args:
        parameters: How to build and verify the golden sandbox, and where to publish its checkpoint.
        credentials: A saved OpenComputerCredentials block (a picker in the UI).
        credentials_block: Or the name of one; with neither, OPENCOMPUTER_API_KEY and OPENCOMPUTER_API_URL
            are read from the environment.
    """
    credentials = await aload_credentials(credentials_block, credentials=credentials)
    logger = get_run_logger()
    stored = await Variable.aget(parameters.variable_name)
    previous = GoldenCheckpointReport.model_validate(stored) if isinstance(stored, dict) else None
    built_at = datetime.now(UTC)
    name = f"{parameters.name_prefix}-{built_at:%Y%m%d-%H%M%S}"
    try:
        # Until it is verified and retained, the builder is killed on the way out like any sandbox.
        builder_scope = open_sandbox(
            parameters.template,
            credentials=credentials,
            snapshot=parameters.snapshot,
            idle_timeout=parameters.idle_timeout,
        )
        async with builder_scope as builder:
            for command in parameters.setup_commands:
                await arun_command(
                    builder, command, credentials=credentials, timeout=parameters.command_timeout
                )
            checkpoint = await acreate_checkpoint(builder, name, credentials=credentials)
            try:
                patch_ids: list[str] = []
                if previous is not None:
                    for patch in await alist_checkpoint_patches(
                        previous.checkpoint_id, credentials=credentials
                    ):
                        copied = await acreate_checkpoint_patch(
                            checkpoint, patch.script, patch.description, credentials=credentials
                        )
                        patch_ids.append(copied.id)
                async with open_fork(
                    checkpoint, credentials=credentials, idle_timeout=parameters.idle_timeout
                ) as fork:
                    await arun_command(
                        fork,
                        parameters.verify_command,
                        credentials=credentials,
                        timeout=parameters.command_timeout,
                    )
            except BaseException:
                # Not published: the half-built golden checkpoint must not linger.
                await adelete_checkpoint(checkpoint, credentials=credentials)
                raise
            # From here on cleanup hooks and the reaper leave the builder alone: it holds the checkpoint.
            await aretain_sandbox(builder, "golden", credentials=credentials)
            await ahibernate_sandbox(builder, credentials=credentials)
            builder_scope.keep()
    finally:
        await publish_report(key="rebuild-golden-checkpoint")
    golden = GoldenCheckpointReport(
        checkpoint_id=checkpoint.id,
        sandbox_id=builder.sandbox_id,
        name=name,
        patch_ids=patch_ids,
        built_at=built_at,
    )
    await Variable.aset(parameters.variable_name, golden.model_dump(mode="json"), overwrite=True)
    logger.info("Golden checkpoint is now %s (%s) with %d patch(es)", name, checkpoint.id, len(patch_ids))
    if previous is not None and not parameters.keep_previous:
        await _retire(credentials, previous)
    return golden


async def _retire(credentials: OpenComputerCredentials, golden: GoldenCheckpointReport) -> None:
    """Delete a superseded golden checkpoint, then the sandbox that held it."""
    try:
        await adelete_checkpoint(golden.checkpoint_id, sandbox=golden.sandbox_id, credentials=credentials)
    except OpenComputerError as exc:
        get_run_logger().warning("Could not delete the previous golden checkpoint %s: %s", golden.name, exc)
    await akill_sandbox(golden.sandbox_id, credentials=credentials)
