"""Prefect tasks, one per OpenComputer operation, and the cleanup layers around them.

Every task is async, takes an `OpenComputerCredentials` block first and a sandbox as its id or model,
uses `NO_CACHE` (they all have side effects), carries the tag `opencomputer`, and retries only failures
that cannot duplicate work.
"""

from prefect_opencomputer.tasks.checkpoints import (
    create_checkpoint,
    create_sandbox_from_checkpoint,
    delete_checkpoint,
    list_checkpoints,
    restore_checkpoint,
)
from prefect_opencomputer.tasks.cleanup import (
    cleanup_hooks,
    kill_flow_run_sandboxes,
    open_fork,
    open_sandbox,
)
from prefect_opencomputer.tasks.commands import run_command
from prefect_opencomputer.tasks.errors import CommandFailedError, PatchFailedError
from prefect_opencomputer.tasks.files import read_file, write_file
from prefect_opencomputer.tasks.output import OutputLimits
from prefect_opencomputer.tasks.patches import (
    create_checkpoint_patch,
    delete_checkpoint_patch,
    list_checkpoint_patches,
)
from prefect_opencomputer.tasks.previews import create_preview_url, delete_preview_url, list_preview_urls
from prefect_opencomputer.tasks.report import publish_run_report
from prefect_opencomputer.tasks.sandboxes import (
    create_sandbox,
    get_sandbox,
    hibernate_sandbox,
    kill_sandbox,
    list_sandboxes,
    set_sandbox_timeout,
    wake_sandbox,
)
from prefect_opencomputer.tasks.snapshots import create_snapshot, delete_snapshot, list_snapshots

__all__ = [
    "CommandFailedError",
    "OutputLimits",
    "PatchFailedError",
    "cleanup_hooks",
    "create_checkpoint",
    "create_checkpoint_patch",
    "create_preview_url",
    "create_sandbox",
    "create_sandbox_from_checkpoint",
    "create_snapshot",
    "delete_checkpoint",
    "delete_checkpoint_patch",
    "delete_preview_url",
    "delete_snapshot",
    "get_sandbox",
    "hibernate_sandbox",
    "kill_flow_run_sandboxes",
    "kill_sandbox",
    "list_checkpoint_patches",
    "list_checkpoints",
    "list_preview_urls",
    "list_sandboxes",
    "list_snapshots",
    "open_fork",
    "open_sandbox",
    "publish_run_report",
    "read_file",
    "restore_checkpoint",
    "run_command",
    "set_sandbox_timeout",
    "wake_sandbox",
    "write_file",
]
