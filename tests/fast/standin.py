"""A stand-in sandbox runtime for the fast tier: plain host processes in a directory per sandbox.

It satisfies `prefect_opencomputer.local.sandbox.protocol.Runtime`, so the real app, backend and
records run above it over real HTTP; only what boots and runs sandboxes is replaced. A sandbox is a
directory (its "layer") holding ``/home/sandbox``, ``/tmp`` and a ``/usr/bin`` of stubs naming the
host commands it may start; commands run as the current user, in that directory, with no isolation
at all. A checkpoint is a copy of the directory. It lives in the test tree on purpose: a runtime
that isolates nothing must never be something a server can be started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from prefect_opencomputer.local.sandbox import processes
from prefect_opencomputer.local.sandbox.cgroups import Limits
from prefect_opencomputer.local.sandbox.fileagents import Listing, OpenedFile
from prefect_opencomputer.local.sandbox.fileops import DirEntry, RootedFiles
from prefect_opencomputer.local.sandbox.ids import SANDBOX_HOME
from prefect_opencomputer.local.sandbox.runtime import BASE_ENV, SandboxNotRunning, SandboxRuntime, kill_group

# The host commands a stand-in sandbox may start (the backend looks a command up on the sandbox's
# PATH before it spawns it, as the hosted agent does).
COMMANDS = (
    "sh", "bash", "echo", "cat", "sleep", "true", "false", "env", "pwd", "ls", "printf", "test",
    "mkdir", "rm", "head", "tail", "wc", "yes", "kill", "python3", "id", "sort", "tr", "seq", "dd",
)  # fmt: skip


class StandinRuntime:
    """Sandboxes as directories under ``root`` and host process groups; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._running: set[str] = set()
        self._frozen: set[str] = set()
        # Every process group started in a sandbox since its boot: stopped with it.
        self._groups: dict[str, set[int]] = {}

    # -- the server's own lifecycle --------------------------------------------------------------

    async def open(self, templates: Collection[str] = ()) -> None:
        (self.root / "layers").mkdir(parents=True, exist_ok=True)
        (self.root / "checkpoints").mkdir(parents=True, exist_ok=True)

    async def shutdown(self, grace: float = 10.0) -> None:
        for sandbox_id in list(self._running):
            await self.stop(sandbox_id)

    # -- a sandbox's processes -------------------------------------------------------------------

    def is_running(self, sandbox_id: str) -> bool:
        return sandbox_id in self._running

    def is_frozen(self, sandbox_id: str) -> bool:
        return sandbox_id in self._frozen

    def running_ids(self) -> list[str]:
        return sorted(self._running)

    async def start(
        self,
        sandbox_id: str,
        *,
        template: str,
        hostname: str | None = None,
        network: bool = True,
        limits: Limits | None = None,
    ) -> None:
        if sandbox_id in self._frozen:
            self._signal_all(sandbox_id, signal.SIGCONT)
            self._frozen.discard(sandbox_id)
            return
        if sandbox_id in self._running:
            return
        if not self.layer_exists(sandbox_id):
            raise FileNotFoundError(f"no layer for sandbox {sandbox_id}")
        self._running.add(sandbox_id)
        self._groups[sandbox_id] = set()

    async def freeze(self, sandbox_id: str) -> bool:
        """Pause every process group of the sandbox (SIGSTOP): memory kept, as a freezer does."""
        if sandbox_id not in self._running:
            return False
        self._signal_all(sandbox_id, signal.SIGSTOP)
        self._frozen.add(sandbox_id)
        return True

    async def resize(self, sandbox_id: str, limits: Limits) -> bool:
        self._require_running(sandbox_id)
        return False  # no cgroups here: sizes are recorded, not enforced (as with --no-limits)

    async def stop(self, sandbox_id: str) -> None:
        self._signal_all(sandbox_id, signal.SIGKILL)
        if sandbox_id in self._frozen:
            self._signal_all(sandbox_id, signal.SIGCONT)  # a stopped process dies only once continued
        self._running.discard(sandbox_id)
        self._frozen.discard(sandbox_id)
        self._groups.pop(sandbox_id, None)

    async def destroy(self, sandbox_id: str) -> None:
        await self.stop(sandbox_id)
        self.discard_layer(sandbox_id)

    def memory_sample(self, sandbox_id: str) -> tuple[int, int] | None:
        return None

    # -- layers and checkpoints ------------------------------------------------------------------

    def _layer(self, sandbox_id: str) -> Path:
        return self.root / "layers" / sandbox_id

    def _checkpoint(self, checkpoint_id: str) -> Path:
        return self.root / "checkpoints" / checkpoint_id

    def create_layer(self, sandbox_id: str, disk_mb: int | None = None) -> None:
        layer = self._layer(sandbox_id)
        for directory in (SANDBOX_HOME, "/tmp", "/root", "/usr/bin", "/etc"):
            (layer / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for name in COMMANDS:
            found = shutil.which(name)
            if found is not None:
                stub = layer / "usr" / "bin" / name
                stub.write_text(f'#!/bin/sh\nexec {found} "$@"\n')
                stub.chmod(0o755)

    def layer_exists(self, sandbox_id: str) -> bool:
        return self._layer(sandbox_id).is_dir()

    def discard_layer(self, sandbox_id: str) -> None:
        shutil.rmtree(self._layer(sandbox_id), ignore_errors=True)

    async def checkpoint(self, sandbox_id: str, checkpoint_id: str) -> int:
        target = self._checkpoint(checkpoint_id)
        await asyncio.to_thread(shutil.copytree, self._layer(sandbox_id), target, symlinks=True)
        return sum(path.lstat().st_size for path in target.rglob("*")) or 1

    def checkpoint_exists(self, checkpoint_id: str) -> bool:
        return self._checkpoint(checkpoint_id).is_dir()

    async def fork_layer(self, checkpoint_id: str, sandbox_id: str) -> None:
        await asyncio.to_thread(
            shutil.copytree, self._checkpoint(checkpoint_id), self._layer(sandbox_id), symlinks=True
        )

    async def restore_layer(self, checkpoint_id: str, sandbox_id: str) -> None:
        self.discard_layer(sandbox_id)
        await self.fork_layer(checkpoint_id, sandbox_id)

    async def remove_checkpoint(self, checkpoint_id: str) -> None:
        shutil.rmtree(self._checkpoint(checkpoint_id), ignore_errors=True)

    # -- inside a running sandbox ----------------------------------------------------------------

    def _require_running(self, sandbox_id: str) -> Path:
        if sandbox_id not in self._running:
            raise SandboxNotRunning(sandbox_id)
        return self._layer(sandbox_id)

    def _host_argv(self, sandbox_id: str, argv: Sequence[str], cwd: str | None) -> list[str]:
        """``argv`` run in the host directory that stands for ``cwd`` inside the sandbox."""
        inside = cwd or SANDBOX_HOME
        if not inside.startswith("/"):
            inside = f"{SANDBOX_HOME}/{inside}"
        directory = self._require_running(sandbox_id) / inside.lstrip("/")
        return ["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(directory), *argv]

    def _env(self, sandbox_id: str, env: Mapping[str, str] | None) -> dict[str, str]:
        home = str(self._layer(sandbox_id) / SANDBOX_HOME.lstrip("/"))
        return {**BASE_ENV, "HOME": home, **(env or {})}

    async def spawn(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bool = False,
        as_root: bool = False,
    ) -> processes.ChildProcess:
        process = await processes.spawn(
            self._host_argv(sandbox_id, argv, cwd), env=self._env(sandbox_id, env), stdin=stdin
        )
        self._groups[sandbox_id].add(process.pid)
        return process

    def spawn_on_terminal(
        self, sandbox_id: str, argv: Sequence[str], *, env: Mapping[str, str], terminal: int
    ) -> subprocess.Popen[bytes]:
        popen = subprocess.Popen(
            self._host_argv(sandbox_id, argv, None),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env=self._env(sandbox_id, env),
            start_new_session=True,
        )
        self._groups[sandbox_id].add(popen.pid)
        return popen

    # The real runtime's own rules (timeout, output cap, exit codes) over this runtime's `spawn`.
    run = SandboxRuntime.run

    def files(self, sandbox_id: str) -> RootedFiles:
        layer = self._require_running(sandbox_id)
        return RootedFiles(layer, home=SANDBOX_HOME)

    def file_ops(self, sandbox_id: str) -> InProcessFiles:
        return InProcessFiles(self.files(sandbox_id))

    async def open_connection(
        self, sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The sandbox's processes share the host's network: its port is the host's loopback port."""
        self._require_running(sandbox_id)
        return await asyncio.open_connection("127.0.0.1", port)

    def _signal_all(self, sandbox_id: str, signum: int) -> None:
        for group in self._groups.get(sandbox_id, ()):
            if signum == signal.SIGKILL:
                kill_group(group)
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signum)


class InProcessFiles:
    """The files API's operations in threads of the server, as its user: a stand-in has no agents."""

    def __init__(self, files: RootedFiles) -> None:
        self._files = files

    async def open_read(self, path: str) -> OpenedFile:
        handle = await asyncio.to_thread(self._files.open_read, path)
        size = os.fstat(handle.fileno()).st_size

        async def chunks() -> AsyncGenerator[bytes, None]:
            with handle:
                while chunk := await asyncio.to_thread(handle.read, 256 * 1024):
                    yield chunk

        return OpenedFile(size, chunks())

    async def open_write(self, path: str) -> _InProcessWriter:
        return _InProcessWriter(await asyncio.to_thread(self._files.open_write, path))

    async def list(self, path: str) -> Listing:
        entries = await asyncio.to_thread(self._files.list, path)

        async def batches() -> AsyncGenerator[list[DirEntry], None]:
            yield entries

        return Listing(batches())

    async def mkdir(self, path: str) -> None:
        await asyncio.to_thread(self._files.mkdir, path)

    async def remove(self, path: str) -> None:
        await asyncio.to_thread(self._files.remove, path)


class _InProcessWriter:
    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle

    async def write(self, block: bytes) -> None:
        await asyncio.to_thread(self._handle.write, block)

    async def close(self) -> None:
        await asyncio.to_thread(self._handle.close)

    def abort(self) -> None:
        self._handle.close()
