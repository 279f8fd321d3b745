"""`sandbox_lifecycle`: create, set up, checkpoint, patch, fork (sees the patch), run in it, kill all."""

# No `from __future__ import annotations`: Prefect builds each flow's parameter model from its
# annotations, and must resolve them wherever the flow is loaded (a runner loads it by file path).

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from prefect_opencomputer.blocks.credentials import load_credentials
from prefect_opencomputer.flows.accounting import publish_report, sandboxes_left_by_this_run
from prefect_opencomputer.tasks import (
    cleanup_hooks,
    create_checkpoint,
    create_checkpoint_patch,
    delete_checkpoint,
    open_fork,
    open_sandbox,
    run_command,
)


class LifecycleParameters(BaseModel):
    """What `sandbox_lifecycle` sets up, how it patches the checkpoint, and what it runs in the fork."""

    model_config = ConfigDict(frozen=True)

    template: str = Field(default="base", description="Template of the first sandbox.")
    setup_commands: list[str] = Field(
        default_factory=lambda: [
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
    parameters: LifecycleParameters = DEFAULT_PARAMETERS, credentials_block: str | None = None
) -> LifecycleReport:
    """Walk one sandbox through its whole life, and leave nothing running whatever step fails.

    Args:
        parameters: What to set up, how to patch the checkpoint, and what to run in the fork.
        credentials_block: Name of a saved OpenComputerCredentials block; empty reads
            OPENCOMPUTER_API_KEY and OPENCOMPUTER_API_URL from the environment.
    """
    credentials = await load_credentials(credentials_block)
    logger = get_run_logger()
    try:
        async with open_sandbox(
            credentials, parameters.template, idle_timeout=parameters.idle_timeout
        ) as sandbox:
            for command in parameters.setup_commands:
                await run_command(credentials, sandbox, command, timeout=parameters.command_timeout)
            checkpoint = await create_checkpoint(credentials, sandbox, parameters.checkpoint_name)
            patch = await create_checkpoint_patch(
                credentials, checkpoint, parameters.patch_script, description="sandbox_lifecycle patch"
            )
            async with open_fork(credentials, checkpoint, idle_timeout=parameters.idle_timeout) as fork:
                result = await run_command(
                    credentials, fork, parameters.fork_command, timeout=parameters.command_timeout
                )
            await delete_checkpoint(credentials, sandbox, checkpoint)
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
