"""Tasks that move file contents in and out of a sandbox."""

from __future__ import annotations

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.tasks.factory import opencomputer_task, resolve_credentials
from prefect_opencomputer.tasks.references import SandboxRef, sandbox_id_of
from prefect_opencomputer.tasks.retries import retry_if_replayable
from prefect_opencomputer.tasks.run_names import on_sandbox


@opencomputer_task("write_file", run_name=on_sandbox("write", "path"), retry_condition=retry_if_replayable)
async def write_file(
    sandbox: SandboxRef,
    path: str,
    content: bytes | str,
    *,
    credentials: OpenComputerCredentials | None = None,
) -> int:
    """Write a file in the sandbox, creating parent directories (a full replace: safe to retry).

    Args:
        sandbox: The sandbox, as its id or its model.
        path: Where; a relative path is relative to the sandbox user's home, `/home/sandbox`.
        content: The bytes, or a str (UTF-8 encoded).
        credentials: The OpenComputer block; default: the environment.

    Returns:
        The number of bytes written.

    Example:
        ```python
        write_file(sandbox, "app/config.toml", "debug = true\\n")
        ```
    """
    credentials = await resolve_credentials(credentials)
    data = content.encode() if isinstance(content, str) else content
    async with credentials.get_client() as client:
        await client.files.write(sandbox_id_of(sandbox), path, data)
    return len(data)


@opencomputer_task("read_file", run_name=on_sandbox("read", "path"), retry_condition=retry_if_replayable)
async def read_file(
    sandbox: SandboxRef, path: str, *, credentials: OpenComputerCredentials | None = None
) -> bytes:
    """Read a file from the sandbox.

    Args:
        sandbox: The sandbox, as its id or its model.
        path: Which file; a relative path is relative to `/home/sandbox`.
        credentials: The OpenComputer block; default: the environment.

    Returns:
        Its contents as bytes (`.decode()` them for text).

    Raises:
        NotFoundError: There is no such file.

    Example:
        ```python
        report = read_file(sandbox, "app/report.txt").decode()
        ```
    """
    credentials = await resolve_credentials(credentials)
    async with credentials.get_client() as client:
        return await client.files.read(sandbox_id_of(sandbox), path)


@opencomputer_task("file_exists", run_name=on_sandbox("exists", "path"), retry_condition=retry_if_replayable)
async def file_exists(
    sandbox: SandboxRef, path: str, *, credentials: OpenComputerCredentials | None = None
) -> bool:
    """Whether a file or directory is at `path` in the sandbox, found by listing its parent.

    Args:
        sandbox: The sandbox, as its id or its model.
        path: What to look for; a relative path is relative to `/home/sandbox`.
        credentials: The OpenComputer block; default: the environment.

    Returns:
        True when something is there (nothing is downloaded to find out).

    Example:
        ```python
        if not file_exists(sandbox, "app/.venv"):
            run_command(sandbox, "python -m venv app/.venv")
        ```
    """
    credentials = await resolve_credentials(credentials)
    async with credentials.get_client() as client:
        return await client.files.exists(sandbox_id_of(sandbox), path)


awrite_file = write_file.aio
aread_file = read_file.aio
afile_exists = file_exists.aio
