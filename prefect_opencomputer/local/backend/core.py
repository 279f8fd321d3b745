"""The sandboxes core: their records, their runtime, their locks and their lifecycle.

What every resource of the local server shares about a sandbox lives here once: how one is admitted,
launched (created or forked), booted, frozen, stopped and discarded, and how a data call holds one
awake. It is the only part of the backend that talks to the runtime; every resource takes it as its
dependency, and `LocalBackend` composes them for the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Unpack

from prefect_opencomputer.local.backend import sizing
from prefect_opencomputer.local.backend.exec import ExecSessionTable
from prefect_opencomputer.local.backend.idle import IdleTracker
from prefect_opencomputer.local.backend.records import (
    MemorySample,
    SandboxRecord,
    SandboxStatus,
    new_sandbox_id,
    utc_now,
)
from prefect_opencomputer.local.backend.startup import started
from prefect_opencomputer.local.backend.state import StateStore
from prefect_opencomputer.local.backend.terminals import TerminalTable
from prefect_opencomputer.local.backend.warm import WarmPool
from prefect_opencomputer.local.config import LocalServerConfig
from prefect_opencomputer.local.errors import (
    BackendError,
    NotFound,
    RetryLater,
    Stopped,
    TooMany,
    Unreachable,
)
from prefect_opencomputer.local.sandbox.cgroups import Limits
from prefect_opencomputer.local.sandbox.fileagents import FileOps
from prefect_opencomputer.local.sandbox.fileops import RootedFiles
from prefect_opencomputer.local.sandbox.processes import ChildProcess
from prefect_opencomputer.local.sandbox.protocol import BootOptions, CommandOptions, RunOptions, Runtime
from prefect_opencomputer.local.sandbox.runtime import CommandResult, SandboxNotRunning

logger = logging.getLogger("prefect_opencomputer.local.backend.service")
MIB = 1024 * 1024
# Processes per sandbox: enough for a build with parallel jobs, not enough to fork-bomb the host.
MAX_PROCESSES = 4096


def sandbox_limits(record: SandboxRecord) -> Limits:
    """The cgroup limits of a sandbox's size: its memory tier, its vCPUs as a CPU quota."""
    return Limits(record.memory_mb * MIB, MAX_PROCESSES, float(record.cpu_count))


class SandboxCore:
    """Every sandbox's record, processes and lifecycle; the one place that boots or stops one."""

    def __init__(self, config: LocalServerConfig, runtime: Runtime) -> None:
        self.config = config
        self._runtime = runtime
        self.idle = IdleTracker(self._hibernate_if_idle)
        self.exec_sessions = ExecSessionTable()
        self.terminals = TerminalTable()
        self._store: StateStore | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        # Sandboxes whose layer is being copied into a checkpoint: data calls wait for the copy.
        self._paused: dict[str, asyncio.Event] = {}
        # Bumped whenever a sandbox's processes start or stop: an operation that sees it change
        # knows the sandbox moved under it (its files vanished with the mount, not by a mistake).
        self._epochs: dict[str, int] = {}
        self.peak = 0
        # Tests lower it through `/_test/limits`; `reset()` restores the configured value.
        self.max_running_sandboxes = config.max_running_sandboxes
        self.warm = WarmPool(self, config.warm_sandboxes)

    # -- the server's lifecycle ---------------------------------------------------------------

    async def open_host(self) -> None:
        """Ready the runtime, the default template built up front so no create waits for it."""
        await self._runtime.open((sizing.DEFAULT_TEMPLATE,))

    def recover(self) -> None:
        """After a start: what was running comes back hibernated; what a killed server left half-made goes."""
        for record in self.store.sandboxes():
            if record.status == "pending":
                # Created but never acknowledged: nobody knows its id.
                self._runtime.discard_layer(record.id)
                self.store.delete_sandbox(record.id)
            elif record.status == "running":
                record.status = "hibernated"
                self.store.save_sandbox(record)
            elif record.status == "stopped" and self._runtime.layer_exists(record.id):
                self._runtime.discard_layer(record.id)  # killed, but the server died before its disk went

    async def shutdown_host(self) -> None:
        """Stop every sandbox's processes (their layers stay) and let go of the host."""
        await self._runtime.shutdown()

    async def destroy_everything(self) -> None:
        """Every sandbox's processes and layer, and every checkpoint's copy, go (test isolation)."""
        await self.warm.drain()
        known = {record.id for record in self.store.sandboxes()}
        for sandbox_id in known | set(self._runtime.running_ids()):
            async with self.lifecycle_lock(sandbox_id):
                self.idle.forget(sandbox_id)
                await self._runtime.destroy(sandbox_id)
        for checkpoint in self.store.checkpoints():
            await self._runtime.remove_checkpoint(checkpoint.id)

    def live_count(self) -> int:
        """Sandboxes (image builders included) whose processes run now."""
        return len(set(self._runtime.running_ids()) - self.warm.ids)

    def open(self, store: StateStore | None) -> None:
        """Use ``store`` for the records from now on (None once the server has closed it)."""
        self._store = store

    @property
    def opened(self) -> StateStore | None:
        """The store, or None while the server is not started."""
        return self._store

    @property
    def store(self) -> StateStore:
        return started(self._store)

    def sandbox(self, sandbox_id: str) -> SandboxRecord:
        """The sandbox, whatever its status; 404 when this server never had it."""
        record = self.store.sandbox(sandbox_id)
        if record is None or record.status == "pending":
            raise NotFound("sandbox not found")
        return record

    @contextlib.asynccontextmanager
    async def data_plane(self, sandbox_id: str) -> AsyncIterator[SandboxRecord]:
        """Hold a sandbox awake for one operation, waking it first if it hibernates.

        404 for an unknown sandbox, 410 for a stopped one.
        """
        with self.idle.busy(sandbox_id):
            record = await self.awake(sandbox_id)
            epoch = self._epochs.get(sandbox_id)
            try:
                yield record
            except (SandboxNotRunning, BackendError, OSError) as error:
                if isinstance(error, BackendError) and not isinstance(error, NotFound):
                    raise
                if self._epochs.get(sandbox_id) == epoch and not isinstance(error, SandboxNotRunning):
                    raise
                raise RetryLater(
                    f"sandbox {sandbox_id} was stopped or restarted during the request, retry",
                    headers={"Retry-After": "1"},
                    retryable=True,
                ) from None

    def require_live(self, sandbox_id: str) -> SandboxRecord:
        """Fail now (404/410) for a sandbox no data call can reach, without waking it."""
        record = self.sandbox(sandbox_id)
        if record.status not in ("running", "hibernated"):
            raise Stopped(f"sandbox {sandbox_id} has been stopped")
        return record

    def touch(self, sandbox_id: str) -> None:
        """Record traffic on a sandbox (restarts its idle timer)."""
        self.idle.touch(sandbox_id)

    def lifecycle_lock(self, sandbox_id: str) -> asyncio.Lock:
        lock = self._locks.get(sandbox_id)
        if lock is None:
            lock = self._locks[sandbox_id] = asyncio.Lock()
        return lock

    def admit_sandbox(self) -> str:
        """The id for a sandbox about to be created; 429 at the cap of running sandboxes.

        Creates still booting count too, so concurrent creates cannot pass the cap together.
        """
        pending = max(0, len(self.store.sandboxes(status="pending")) - len(self.warm.ids))  # spares: nobody's
        active = len(self.store.sandboxes(status="running")) + pending
        limit = self.max_running_sandboxes
        if active >= limit:
            raise TooMany(
                f"concurrent sandbox limit reached ({active}/{limit}) — hibernate or delete one before "
                "creating another",
                active=active,
                limit=limit,
            )
        return self.unused_sandbox_id()

    def unused_sandbox_id(self) -> str:
        sandbox_id = new_sandbox_id()
        while self.store.sandbox(sandbox_id) is not None:
            sandbox_id = new_sandbox_id()
        return sandbox_id

    async def launch(self, record: SandboxRecord, *, from_checkpoint: str | None = None) -> None:
        """Bring a new sandbox up: its pending record, its layer (empty, or a clone of
        ``from_checkpoint``), its boot under its lock. Whatever fails leaves no trace of it.

        A new sandbox of the warm pool's shape takes a booted spare instead: its id, and no boot.
        """
        if from_checkpoint is None and (spare := self.warm.take(record)) is not None:
            record.id = spare
            self.store.save_sandbox(record)  # the create's record takes the spare's place
            try:
                async with self.lifecycle_lock(record.id):
                    await self._mark_running(record)
            except BaseException:
                await self.discard_sandbox(record.id)
                raise
            return
        self.store.save_sandbox(record)
        try:
            await self._new_layer(record.id, record.disk_mb, from_checkpoint)
            async with self.lifecycle_lock(record.id):
                await self.boot(record)
        except BaseException:
            await self.discard_sandbox(record.id)
            raise

    async def launch_builder(self, builder_id: str, *, template: str, **boot: Unpack[BootOptions]) -> None:
        """An image builder's sandbox: a fresh layer, booted as the build asks (its own limits).

        No record is booted, billed or watched for idleness: the build stops and removes it itself
        (`halt`, `remove`).
        """
        await self._new_layer(builder_id)
        await self._runtime.start(builder_id, template=template, **boot)

    async def _new_layer(
        self, sandbox_id: str, disk_mb: int | None = None, from_checkpoint: str | None = None
    ) -> None:
        """The layer a new sandbox boots over: empty, or a clone of ``from_checkpoint``."""
        if from_checkpoint is None:
            await asyncio.to_thread(self._runtime.create_layer, sandbox_id, disk_mb)
        else:
            await self._runtime.fork_layer(from_checkpoint, sandbox_id)

    async def halt(self, sandbox_id: str) -> None:
        """Kill an image builder's processes; its layer stays, quiet, for the checkpoint."""
        await self._runtime.stop(sandbox_id)

    async def remove(self, sandbox_id: str) -> None:
        """An image builder's processes and layer go for good."""
        await self._runtime.destroy(sandbox_id)

    async def boot_spare(self, record: SandboxRecord) -> None:
        """A warm pool's spare: its pending record and layer, its processes booted."""
        self.store.save_sandbox(record)
        await self._new_layer(record.id, record.disk_mb)
        async with self.lifecycle_lock(record.id):
            await self._start_processes(record)

    async def boot(self, record: SandboxRecord) -> None:
        """Start the sandbox's processes over its layer and mark it running (lock held)."""
        await self._start_processes(record)
        await self._mark_running(record)

    async def _start_processes(self, record: SandboxRecord) -> None:
        await self._runtime.start(
            record.id,
            template=record.template,
            network=record.network_enabled,
            limits=sandbox_limits(record),
        )

    async def _mark_running(self, record: SandboxRecord) -> None:
        """Its processes run: it is running from now on, billed, watched for idleness (lock held)."""
        self._epochs[record.id] = self._epochs.get(record.id, 0) + 1
        record.status = "running"
        self.store.save_sandbox(record)
        self.store.start_running(record.id, record.memory_mb, utc_now())
        self.idle.watch(record.id, record.timeout)
        self.peak = max(self.peak, self.live_count())

    async def stop_processes(self, record: SandboxRecord, status: SandboxStatus) -> None:
        """Stop the sandbox's processes, keeping its layer, and record ``status`` (lock held)."""
        await self.exec_sessions.close_sandbox(record.id)
        await self.terminals.close_sandbox(record.id)
        self.idle.forget(record.id)
        self._epochs[record.id] = self._epochs.get(record.id, 0) + 1
        last_sample = self.memory_sample(record.id)
        await self._runtime.stop(record.id)
        self.store.stop_running(record.id, utc_now(), last_sample)
        record.status = status
        self.store.save_sandbox(record)

    async def suspend(self, record: SandboxRecord) -> None:
        """Hibernate as the hosted service pauses: freeze the processes, memory kept (lock held).

        Exec sessions stay, as the service's pause keeps them: their commands are frozen with the
        rest and carry on after the wake, and a client that attaches again gets the scrollback.
        Without a freezer (``--no-limits``) the processes stop instead (their sessions end), the disk kept.
        """
        self.idle.forget(record.id)
        last_sample = self.memory_sample(record.id)
        if await self._runtime.freeze(record.id):
            # Frozen memory is not billed on the hosted service: its running interval ends here.
            self.store.stop_running(record.id, utc_now(), last_sample)
            record.status = "hibernated"
            self.store.save_sandbox(record)
        else:
            await self.stop_processes(record, "hibernated")

    async def destroy(self, sandbox_id: str) -> None:
        """Its sessions, processes, mounts, cgroups and layer go for good (lock held)."""
        await self.exec_sessions.close_sandbox(sandbox_id)
        await self.terminals.close_sandbox(sandbox_id)
        self.idle.forget(sandbox_id)
        self._epochs[sandbox_id] = self._epochs.get(sandbox_id, 0) + 1
        last_sample = self.memory_sample(sandbox_id)
        await self._runtime.destroy(sandbox_id)
        self.store.stop_running(sandbox_id, utc_now(), last_sample)

    def memory_sample(self, sandbox_id: str) -> MemorySample | None:
        """Its cgroup's memory now and its peak since the last sample; None when it is not running."""
        if self._runtime.is_frozen(sandbox_id):
            return None
        reading = self._runtime.memory_sample(sandbox_id)
        return None if reading is None else MemorySample(sandbox_id, utc_now(), *reading)

    def sample_memory(self) -> None:
        """Record a memory sample of every running sandbox (frozen ones hold still and are not billed)."""
        samples = []
        for sandbox_id in self._runtime.running_ids():
            record = self.store.sandbox(sandbox_id)
            if record is None or record.status != "running":
                continue  # an image builder, or a sandbox between states
            sample = self.memory_sample(sandbox_id)
            if sample is not None:
                samples.append(sample)
        self.store.record_samples(samples)

    async def discard_sandbox(self, sandbox_id: str) -> None:
        """Remove every trace of a sandbox that was never acknowledged to a client."""
        self.idle.forget(sandbox_id)
        with contextlib.suppress(Exception):
            await self._runtime.destroy(sandbox_id)
        self.store.delete_sandbox(sandbox_id)

    def pause_data_plane(self, sandbox_id: str) -> asyncio.Event:
        """Make data calls on the sandbox wait until the returned event is set."""
        resumed = asyncio.Event()
        self._paused[sandbox_id] = resumed
        return resumed

    def resume_data_plane(self, sandbox_id: str, resumed: asyncio.Event) -> None:
        if self._paused.get(sandbox_id) is resumed:
            del self._paused[sandbox_id]
        resumed.set()

    def is_live(self, record: SandboxRecord) -> bool:
        return (
            record.status == "running"
            and self._runtime.is_running(record.id)
            and not self._runtime.is_frozen(record.id)
        )

    async def awake(self, sandbox_id: str) -> SandboxRecord:
        record = self.require_live(sandbox_id)
        resumed = self._paused.get(sandbox_id)
        if resumed is not None:
            await resumed.wait()
            record = self.require_live(sandbox_id)
        if self.is_live(record):
            return record
        async with self.lifecycle_lock(sandbox_id):
            record = self.require_live(sandbox_id)
            if not self.is_live(record):
                await self.wake_locked(record)
        return record

    async def wake_locked(self, record: SandboxRecord) -> None:
        try:
            await self.boot(record)
        except Exception as error:
            logger.warning("waking %s failed: %s", record.id, error)
            raise Unreachable(f"sandbox {record.id}: failed to wake: {error}") from error

    async def _hibernate_if_idle(self, sandbox_id: str) -> None:
        async with self.lifecycle_lock(sandbox_id):
            if not self.idle.expired(sandbox_id):
                return
            record = self.store.sandbox(sandbox_id) if self._store is not None else None
            if record is None or record.status != "running":
                self.idle.forget(sandbox_id)
                return
            logger.info("sandbox %s idle for %ss: hibernating", sandbox_id, record.timeout)
            await self.suspend(record)

    # -- what the resources do inside a sandbox, through the runtime ---------------------------

    def files(self, sandbox_id: str) -> RootedFiles:
        """Lookups on the running sandbox's root, as its processes see it (a command's start checks)."""
        return self._runtime.files(sandbox_id)

    def file_ops(self, sandbox_id: str) -> FileOps:
        """The files API's operations inside the running sandbox, as its root."""
        return self._runtime.file_ops(sandbox_id)

    async def run(
        self, sandbox_id: str, argv: Sequence[str], *, timeout: float = 60.0, **how: Unpack[RunOptions]
    ) -> CommandResult:
        return await self._runtime.run(sandbox_id, argv, timeout=timeout, **how)

    async def spawn(
        self, sandbox_id: str, argv: Sequence[str], *, stdin: bool = False, **how: Unpack[CommandOptions]
    ) -> ChildProcess:
        return await self._runtime.spawn(sandbox_id, argv, stdin=stdin, **how)

    def spawn_on_terminal(
        self, sandbox_id: str, argv: Sequence[str], *, env: Mapping[str, str], terminal: int
    ) -> subprocess.Popen[bytes]:
        return self._runtime.spawn_on_terminal(sandbox_id, argv, env=env, terminal=terminal)

    async def open_connection(
        self, sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self._runtime.open_connection(sandbox_id, port)

    async def resize(self, sandbox_id: str, limits: Limits) -> bool:
        return await self._runtime.resize(sandbox_id, limits)

    # -- checkpoints' copies ---------------------------------------------------------------------

    async def take_checkpoint(self, sandbox_id: str, checkpoint_id: str) -> int:
        """Copy the sandbox's layer into the checkpoint; returns its size in bytes."""
        return await self._runtime.checkpoint(sandbox_id, checkpoint_id)

    async def restore_layer(self, checkpoint_id: str, sandbox_id: str) -> None:
        await self._runtime.restore_layer(checkpoint_id, sandbox_id)

    async def remove_checkpoint(self, checkpoint_id: str) -> None:
        await self._runtime.remove_checkpoint(checkpoint_id)

    def checkpoint_exists(self, checkpoint_id: str) -> bool:
        return self._runtime.checkpoint_exists(checkpoint_id)
