"""What the backend asks of a sandbox runtime: the seam below the API.

The backend holds a `Runtime` and nothing else of the host. `SandboxRuntime` (real, isolated
sandboxes; built by `factory.build_runtime`) is the one the server runs; a stand-in that runs
commands as plain host processes satisfies the same shape, so routes and backend behaviour can be
tested over real HTTP without root, cgroups or root filesystems.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol, TypedDict, Unpack

from prefect_opencomputer.local.sandbox.cgroups import Limits
from prefect_opencomputer.local.sandbox.fileagents import FileOps
from prefect_opencomputer.local.sandbox.fileops import RootedFiles
from prefect_opencomputer.local.sandbox.processes import ChildProcess
from prefect_opencomputer.local.sandbox.runtime import CommandResult


class BootOptions(TypedDict, total=False):
    """How a sandbox boots: its hostname, whether it has a network, its cgroup limits."""

    hostname: str | None
    network: bool
    limits: Limits | None


class CommandOptions(TypedDict, total=False):
    """How a command runs inside a sandbox: extra environment, working directory, as its root."""

    env: Mapping[str, str] | None
    cwd: str | None
    as_root: bool


class RunOptions(CommandOptions, total=False):
    output_limit: int  # bytes kept of each stream


class Runtime(Protocol):
    """Boots, stops, freezes, enters and clones sandboxes, each on a layer (disk) of its own."""

    # -- the server's own lifecycle --------------------------------------------------------------

    async def open(self, templates: Collection[str] = ()) -> None:
        """Ready the host as the server starts, ``templates`` built up front.

        Raises `RuntimeUnavailable` with a readable reason.
        """

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop every sandbox, keeping their layers, and let go of what `open` took."""

    # -- a sandbox's processes -------------------------------------------------------------------

    def is_running(self, sandbox_id: str) -> bool: ...

    def is_frozen(self, sandbox_id: str) -> bool: ...

    def running_ids(self) -> list[str]: ...

    async def start(self, sandbox_id: str, *, template: str, **boot: Unpack[BootOptions]) -> None: ...

    async def freeze(self, sandbox_id: str) -> bool: ...

    async def resize(self, sandbox_id: str, limits: Limits) -> bool: ...

    async def stop(self, sandbox_id: str) -> None: ...

    async def destroy(self, sandbox_id: str) -> None: ...

    def memory_sample(self, sandbox_id: str) -> tuple[int, int] | None: ...

    # -- layers and checkpoints ------------------------------------------------------------------

    def create_layer(self, sandbox_id: str, disk_mb: int | None = None) -> None:
        """A fresh layer for a new sandbox (blocking: callers run it in a thread)."""

    def layer_exists(self, sandbox_id: str) -> bool: ...

    def discard_layer(self, sandbox_id: str) -> None: ...

    async def checkpoint(self, sandbox_id: str, checkpoint_id: str) -> int: ...

    def checkpoint_exists(self, checkpoint_id: str) -> bool: ...

    async def fork_layer(self, checkpoint_id: str, sandbox_id: str) -> None: ...

    async def restore_layer(self, checkpoint_id: str, sandbox_id: str) -> None: ...

    async def remove_checkpoint(self, checkpoint_id: str) -> None: ...

    # -- inside a running sandbox ----------------------------------------------------------------

    async def spawn(
        self, sandbox_id: str, argv: Sequence[str], *, stdin: bool = False, **how: Unpack[CommandOptions]
    ) -> ChildProcess:
        """A process inside the sandbox with piped output, in its own process group."""

    def spawn_on_terminal(
        self, sandbox_id: str, argv: Sequence[str], *, env: Mapping[str, str], terminal: int
    ) -> subprocess.Popen[bytes]: ...

    async def run(
        self, sandbox_id: str, argv: Sequence[str], *, timeout: float = 60.0, **how: Unpack[RunOptions]
    ) -> CommandResult:
        """A command run to completion; a timeout is a result (exit code -1), not an error."""

    def files(self, sandbox_id: str) -> RootedFiles:
        """Lookups (stats) on the sandbox's root, for the checks before a command starts."""

    def file_ops(self, sandbox_id: str) -> FileOps:
        """The files API's operations inside the sandbox, as its root; never as host root."""

    async def open_connection(
        self, sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...
