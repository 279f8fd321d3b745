"""A deployment's flow code, when it lives in a directory on the worker's machine: copied into the sandbox.

`flow.from_source("<dir>", ...)` and `prefect deploy` in a project with no remote storage record one pull
step, `set_working_directory` with a path of the machine that deployed. Inside a sandbox that path does not
exist; the worker copies the directory there (same path, so the pull step runs unchanged), up to a size cap.
"""

from __future__ import annotations

import io
import os
import shlex
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect_opencomputer.client import OpenComputerClient

# Never copied: they belong to the machine they were made on, and are often the bulk of a project.
SKIPPED_NAMES = frozenset(
    {".git", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache", ".ruff_cache"}
)
_ARCHIVE = "/tmp/.prefect-flow-code.tar.gz"
_UNPACK_TIMEOUT = 300


class FlowCodeTooLarge(ValueError):
    """The local flow directory is bigger than the pool's `max_code_mb`."""


def local_code_directory(pull_steps: Sequence[dict[str, Any]] | None) -> Path | None:
    """The directory a deployment's only code step names, if it is a directory on this machine."""
    for step in pull_steps or ():
        for name, arguments in step.items():
            if name.endswith("set_working_directory") and isinstance(arguments, dict):
                directory = Path(str(arguments.get("directory", ""))).expanduser()
                if directory.is_absolute() and directory.is_dir():
                    return directory
            else:
                return None  # code from somewhere else (git, a bucket): Prefect pulls it in the sandbox
    return None


def pack_directory(directory: Path, *, max_bytes: int) -> bytes:
    """A gzipped tar of `directory`'s regular files and directories, skipping `SKIPPED_NAMES`."""
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for root, directories, files in os.walk(directory):
            directories[:] = sorted(name for name in directories if name not in SKIPPED_NAMES)
            for name in sorted(files):
                path = Path(root, name)
                if path.is_symlink() or not path.is_file():
                    continue
                total += path.stat().st_size
                if total > max_bytes:
                    raise FlowCodeTooLarge(
                        f"the flow directory {directory} holds more than {max_bytes // (1024 * 1024)} MB; "
                        "raise the work pool's max_code_mb or store the code in git or a bucket"
                    )
                archive.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
    return buffer.getvalue()


async def copy_directory_into(
    client: OpenComputerClient, sandbox_id: str, directory: Path, packed: bytes
) -> None:
    """Unpack `packed` at the same path in the sandbox, owned by the user the flow run runs as."""
    await client.files.write(sandbox_id, _ARCHIVE, packed)
    target = shlex.quote(str(directory))
    script = (
        f'sudo mkdir -p {target} && sudo chown "$(id -u):$(id -g)" {target} && '
        f"tar -xzf {_ARCHIVE} -C {target}; status=$?; sudo rm -f {_ARCHIVE}; exit $status"
    )
    result = await client.exec.run(sandbox_id, script, timeout=_UNPACK_TIMEOUT)
    if result.exit_code != 0:
        raise RuntimeError(
            f"could not unpack the flow code in the sandbox: {(result.stderr or result.stdout)[-500:]}"
        )
