"""Tasks that move file contents in and out of a sandbox, and list, make and remove its paths.

The client's signed URLs (`files.download_url` / `upload_url`) have no task: a signed URL reads or writes
the file without a key until it expires, so it is a secret, and a task's result is kept in the run's records.
Ask the client for one (`credentials.get_client()`) where the URL is handed straight on.
"""

from __future__ import annotations

from prefect_opencomputer.blocks.credentials import OpenComputerCredentials
from prefect_opencomputer.client import FileEntry
from prefect_opencomputer.tasks.factory import opencomputer_task, service_client
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
        path: Where; a relative path is relative to the sandbox user's home, `/home/sandbox`.
        content: The bytes, or a str (UTF-8 encoded).

    Returns:
        The number of bytes written.

    Example:
        ```python
        write_file(sandbox, "app/config.toml", "debug = true\\n")
        ```
    """
    data = content.encode() if isinstance(content, str) else content
    async with service_client(credentials) as client:
        await client.files.write(sandbox_id_of(sandbox), path, data)
    return len(data)


@opencomputer_task("read_file", run_name=on_sandbox("read", "path"), retry_condition=retry_if_replayable)
async def read_file(
    sandbox: SandboxRef, path: str, *, credentials: OpenComputerCredentials | None = None
) -> bytes:
    """Read a file from the sandbox.

    Args:
        path: Which file; a relative path is relative to `/home/sandbox`.

    Returns:
        Its contents as bytes (`.decode()` them for text).

    Raises:
        NotFoundError: There is no such file.

    Example:
        ```python
        report = read_file(sandbox, "app/report.txt").decode()
        ```
    """
    async with service_client(credentials) as client:
        return await client.files.read(sandbox_id_of(sandbox), path)


@opencomputer_task("file_exists", run_name=on_sandbox("exists", "path"), retry_condition=retry_if_replayable)
async def file_exists(
    sandbox: SandboxRef, path: str, *, credentials: OpenComputerCredentials | None = None
) -> bool:
    """Whether a file or directory is at `path` in the sandbox, found by listing its parent.

    Args:
        path: What to look for; a relative path is relative to `/home/sandbox`.

    Returns:
        True when something is there (nothing is downloaded to find out).

    Example:
        ```python
        if not file_exists(sandbox, "app/.venv"):
            run_command(sandbox, "python -m venv app/.venv")
        ```
    """
    async with service_client(credentials) as client:
        return await client.files.exists(sandbox_id_of(sandbox), path)


@opencomputer_task("list_files", run_name=on_sandbox("ls", "path"), retry_condition=retry_if_replayable)
async def list_files(
    sandbox: SandboxRef, path: str = ".", *, credentials: OpenComputerCredentials | None = None
) -> list[FileEntry]:
    """The entries of a directory in the sandbox.

    Args:
        path: The directory; a relative path is relative to `/home/sandbox`.

    Returns:
        Its entries (name, path, whether a directory, size), in no particular order.

    Example:
        ```python
        names = sorted(entry.name for entry in list_files(sandbox, "app"))
        ```
    """
    async with service_client(credentials) as client:
        return await client.files.list(sandbox_id_of(sandbox), path)


@opencomputer_task(
    "make_directory", run_name=on_sandbox("mkdir", "path"), retry_condition=retry_if_replayable
)
async def make_directory(
    sandbox: SandboxRef, path: str, *, credentials: OpenComputerCredentials | None = None
) -> None:
    """Make a directory and its parents in the sandbox; one that exists is fine.

    Args:
        path: The directory; a relative path is relative to `/home/sandbox`.

    Returns:
        None.

    Example:
        ```python
        make_directory(sandbox, "app/data/raw")
        ```
    """
    async with service_client(credentials) as client:
        await client.files.mkdir(sandbox_id_of(sandbox), path)


@opencomputer_task("delete_file", run_name=on_sandbox("rm", "path"), retry_condition=retry_if_replayable)
async def delete_file(
    sandbox: SandboxRef, path: str, *, credentials: OpenComputerCredentials | None = None
) -> None:
    """Remove a file, or a directory with all it holds, from the sandbox; a missing path is fine.

    Args:
        path: What to remove; a relative path is relative to `/home/sandbox`.

    Returns:
        None.

    Example:
        ```python
        delete_file(sandbox, "app/.cache")
        ```
    """
    async with service_client(credentials) as client:
        await client.files.delete(sandbox_id_of(sandbox), path)


awrite_file = write_file.aio
aread_file = read_file.aio
afile_exists = file_exists.aio
alist_files = list_files.aio
amake_directory = make_directory.aio
adelete_file = delete_file.aio
