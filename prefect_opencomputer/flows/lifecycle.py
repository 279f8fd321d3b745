"""`sandbox_lifecycle`: create, set up, checkpoint, patch, fork (sees the patch), run in it, kill all."""

# No `from __future__ import annotations`: Prefect builds each flow's parameter model from its
# annotations, and must resolve them wherever the flow is loaded (a runner loads it by file path).

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from prefect_opencomputer.blocks import OpenComputerCredentials, aload_credentials
from prefect_opencomputer.flows.accounting import publish_report, sandboxes_left_by_this_run
from prefect_opencomputer.tasks import (
    acreate_checkpoint,
    acreate_checkpoint_patch,
    adelete_checkpoint,
    arun_command,
    cleanup_hooks,
    open_fork,
    open_sandbox,
)


class LifecycleParameters(BaseModel):
    """What `sandbox_lifecycle` sets up, how it patches the checkpoint, and what it runs in the fork."""

    model_config = ConfigDict(frozen=True)

    template: str = Field(default="base", description="Template of the first sandbox.")
    # A plain default, not a factory: the deployment form shows only defaults that are in the schema.
    setup_commands: list[str] = Field(
        default=[
            "mkdir -p /home/sandbox/app",
            "echo 'prepared before the checkpoint' > /home/sandbox/app/setup.txt",
        ],
        description="Shell commands run in the first sandbox before the checkpoint, in order.",
    )
    checkpoint_name: str = Field(default="lifecycle", description="Name of the checkpoint.")
    patch_script: str = Field(
        default="echo 'applied by the checkpoint patch' > /home/sandbox/app/patch.txt",
        description="Bash script attached to the checkpoint; it runs in the fork before anything else.",
    )
    fork_command: str = Field(
        default="cat /home/sandbox/app/setup.txt /home/sandbox/app/patch.txt",
        description="Shell command run in the fork; its output is the flow's result.",
    )
    command_timeout: int = Field(default=300, ge=1, description="Seconds any one command may run.")
    idle_timeout: int = Field(default=600, ge=1, description="Idle timeout of each sandbox, in seconds.")


class LifecycleReport(BaseModel):
    """What `sandbox_lifecycle` created, what the fork saw, and how many sandboxes it left (zero)."""

    sandbox_id: str
    checkpoint_id: str
    patch_id: str
    fork_id: str
    fork_output: str
    sandboxes_left: int


DEFAULT_PARAMETERS = LifecycleParameters()


@flow(name="sandbox-lifecycle", **cleanup_hooks())
async def sandbox_lifecycle(
    parameters: LifecycleParameters = DEFAULT_PARAMETERS,
    credentials: OpenComputerCredentials | None = None,
    credentials_block: str | None = None,
) -> LifecycleReport:
    """Walk one sandbox through its whole life, and leave nothing behind whatever step fails.

    Args:
        parameters: What to set up, how to patch the checkpoint, and what to run in the fork.
        credentials: A saved OpenComputerCredentials block (a picker in the UI).
        credentials_block: Or the name of one; with neither, OPENCOMPUTER_API_KEY and OPENCOMPUTER_API_URL
            are read from the environment.
    """
    credentials = await aload_credentials(credentials_block, credentials=credentials)
    logger = get_run_logger()
    try:
        async with open_sandbox(
            parameters.template, credentials=credentials, idle_timeout=parameters.idle_timeout
        ) as sandbox:
            for command in parameters.setup_commands:
                await arun_command(
                    sandbox, command, credentials=credentials, timeout=parameters.command_timeout
                )
            checkpoint = await acreate_checkpoint(
                sandbox, parameters.checkpoint_name, credentials=credentials
            )
            try:
                patch = await acreate_checkpoint_patch(
                    checkpoint, parameters.patch_script, "sandbox_lifecycle patch", credentials=credentials
                )
                async with open_fork(
                    checkpoint, credentials=credentials, idle_timeout=parameters.idle_timeout
                ) as fork:
                    result = await arun_command(
                        fork,
                        parameters.fork_command,
                        credentials=credentials,
                        timeout=parameters.command_timeout,
                    )
            finally:
                # Whatever failed, the checkpoint goes too: nothing of this run outlives it.
                await adelete_checkpoint(checkpoint, credentials=credentials)
    finally:
        await publish_report(key="sandbox-lifecycle")
    left = await sandboxes_left_by_this_run(credentials)
    logger.info("The fork saw: %s", " | ".join(result.stdout.strip().splitlines()))
    return LifecycleReport(
        sandbox_id=sandbox.sandbox_id,
        checkpoint_id=checkpoint.id,
        patch_id=patch.id,
        fork_id=fork.sandbox_id,
        fork_output=result.stdout,
        sandboxes_left=left,
    )
