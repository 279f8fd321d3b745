"""Tasks that move file contents in and out of a sandbox."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.tasks.naming import TASK_TAG, on_sandbox
from prefect_opencomputer.tasks.references import SandboxRef, sandbox_id_of
from prefect_opencomputer.tasks.retries import RETRY_DELAYS, retry_if_replayable


@task(
    name="write_file",
    task_run_name=on_sandbox("write", "path"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def write_file(
    credentials: OpenComputerCredentials, sandbox: SandboxRef, path: str, content: bytes | str
) -> int:
    """Write `content` (a str is UTF-8 encoded) to `path`, creating parent directories; returns the size.

    A relative `path` is relative to the sandbox user's home, `/home/sandbox`.
    """
    data = content.encode() if isinstance(content, str) else content
    async with credentials.get_client() as client:
        await client.files.write(sandbox_id_of(sandbox), path, data)
    return len(data)


@task(
    name="read_file",
    task_run_name=on_sandbox("read", "path"),
    tags=[TASK_TAG],
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_if_replayable,
)
async def read_file(credentials: OpenComputerCredentials, sandbox: SandboxRef, path: str) -> bytes:
    """The contents of `path` in the sandbox, as bytes (`.decode()` them for text)."""
    async with credentials.get_client() as client:
        return await client.files.read(sandbox_id_of(sandbox), path)
