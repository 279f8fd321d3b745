"""Exec sessions: long-running commands whose output clients attach to, detach from and replay.

Output is kept as wire frames (a stream byte, then the bytes) in a 1 MB scrollback ring, so a
client that attaches late (or again) first receives what it missed, then the live stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING

from prefect_opencomputer.local.backend.command_start import start_error
from prefect_opencomputer.local.backend.records import new_session_id
from prefect_opencomputer.local.errors import AGENT_ERROR, CannotStart, Failed, Invalid, NotFound
from prefect_opencomputer.local.sandbox.ids import SANDBOX_HOME
from prefect_opencomputer.local.sandbox.runtime import CommandResult

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.core import SandboxCore

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from prefect_opencomputer.local.backend.records import utc_now
from prefect_opencomputer.local.sandbox.processes import ChildProcess
from prefect_opencomputer.local.sandbox.runtime import kill_group

STDIN, STDOUT, STDERR, EXIT, REPLAY_END = 0x00, 0x01, 0x02, 0x03, 0x04
SCROLLBACK_BYTES = 1024 * 1024
# A client this far behind the live stream is let go: it can attach again and replay.
LISTENER_BACKLOG_BYTES = 8 * 1024 * 1024
# The exec agent forgets a finished session after five minutes.
FINISHED_RETENTION_SECONDS = 300.0
# After the command exits, how long output it left in the pipes is still collected.
_PIPE_GRACE_SECONDS = 0.05


def exit_frame(code: int) -> bytes:
    return bytes([EXIT]) + code.to_bytes(4, "big", signed=True)


@dataclass(eq=False)
class Listener:
    """One attached client's queue of frames; ``None`` ends the stream."""

    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    backlog: int = 0
    too_slow: bool = False

    def push(self, frame: bytes | None) -> None:
        self.queue.put_nowait(frame)
        if frame is not None:
            self.backlog += len(frame)

    async def next_frame(self) -> bytes | None:
        frame = await self.queue.get()
        if frame is not None:
            self.backlog -= len(frame)
        return frame


class ExecSession:
    """A command started in a sandbox, its scrollback and the clients attached to it."""

    def __init__(
        self,
        session_id: str,
        sandbox_id: str,
        command: str,
        args: Sequence[str],
        process: ChildProcess,
        *,
        timeout: float = 0,
        max_run_after_disconnect: float = 0,
    ) -> None:
        self.id = session_id
        self.sandbox_id = sandbox_id
        self.command = command
        self.args = list(args)
        self.started_at: datetime = utc_now()
        self.exit_code: int | None = None
        self.attached_clients = 0
        self._process = process
        self._timeout = timeout
        self._max_run_after_disconnect = max_run_after_disconnect
        self._scrollback: deque[bytes] = deque()
        self._scrollback_size = 0
        self._listeners: set[Listener] = set()
        self._finished_at: float | None = None
        self._exited = asyncio.Event()
        # Set once output fell out of the scrollback ring: a replay or a result is no longer whole.
        self.truncated = False
        self._disconnect_timer: asyncio.TimerHandle | None = None
        self._supervisor = asyncio.create_task(self._supervise(), name=f"exec-session-{session_id}")

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def finished_longer_than(self, seconds: float) -> bool:
        return self._finished_at is not None and time.monotonic() - self._finished_at > seconds

    async def wait_exit(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the command to exit; whether it has."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._exited.wait()
        return not self.running

    def output(self) -> tuple[bytes, bytes]:
        """(stdout, stderr) as far as the scrollback still holds them."""
        streams: dict[int, list[bytes]] = {STDOUT: [], STDERR: []}
        for frame in self._scrollback:
            streams[frame[0]].append(frame[1:])
        return b"".join(streams[STDOUT]), b"".join(streams[STDERR])

    # -- clients -----------------------------------------------------------------------------

    def attach(self) -> tuple[list[bytes], Listener]:
        """The scrollback to replay and a listener for everything after it."""
        listener = Listener()
        replay = list(self._scrollback)
        if self.exit_code is None:
            self._listeners.add(listener)
        else:
            listener.push(exit_frame(self.exit_code))
            listener.push(None)
        self.attached_clients += 1
        if self._disconnect_timer is not None:
            self._disconnect_timer.cancel()
            self._disconnect_timer = None
        return replay, listener

    def detach(self, listener: Listener) -> None:
        self._listeners.discard(listener)
        self.attached_clients = max(0, self.attached_clients - 1)
        if self.attached_clients == 0 and self.running and self._max_run_after_disconnect > 0:
            self._disconnect_timer = asyncio.get_running_loop().call_later(
                self._max_run_after_disconnect, self.kill, signal.SIGKILL
            )

    async def write_stdin(self, data: bytes) -> None:
        stdin = self._process.stdin
        if stdin is None or not self.running or not data:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(data)
            await stdin.drain()

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Signal the command and everything it started (not the helper process that carries it)."""
        if not self.running:
            return
        if signum == signal.SIGKILL:
            kill_group(self._process.pid)
        elif not _signal_group_members(self._process.pid, signum):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signum)

    async def close(self) -> None:
        """Kill the command and wait until its exit has been delivered."""
        self.kill(signal.SIGKILL)
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.shield(self._supervisor)
        if self._supervisor.done():
            return
        self._supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._supervisor

    # -- output ------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        process = self._process
        assert process.stdout is not None and process.stderr is not None
        pumps = {
            asyncio.create_task(self._pump(process.stdout, STDOUT)),
            asyncio.create_task(self._pump(process.stderr, STDERR)),
        }
        timed_out = False
        try:
            if self._timeout > 0:
                try:
                    async with asyncio.timeout(self._timeout):
                        await process.wait()
                except TimeoutError:
                    timed_out = True
                    kill_group(process.pid)
                    await process.wait()
            else:
                await process.wait()
            # A background child may keep the pipes open: take what is there, then let go.
            await asyncio.wait(pumps, timeout=_PIPE_GRACE_SECONDS)
        finally:
            if process.returncode is None:
                kill_group(process.pid)
            for pump in pumps:
                pump.cancel()
            code = process.returncode
            self._finish(-1 if timed_out or code is None or code < 0 else code)

    async def _pump(self, stream: asyncio.StreamReader, stream_id: int) -> None:
        prefix = bytes([stream_id])
        while chunk := await stream.read(65536):
            self._emit(prefix + chunk)

    def _emit(self, frame: bytes) -> None:
        self._scrollback.append(frame)
        self._scrollback_size += len(frame) - 1
        while self._scrollback_size > SCROLLBACK_BYTES and len(self._scrollback) > 1:
            dropped = self._scrollback.popleft()
            self._scrollback_size -= len(dropped) - 1
            self.truncated = True
        if self._scrollback_size > SCROLLBACK_BYTES:
            self.truncated = True
            only = self._scrollback.pop()
            only = only[:1] + only[-SCROLLBACK_BYTES:]
            self._scrollback.append(only)
            self._scrollback_size = len(only) - 1
        for listener in list(self._listeners):
            listener.push(frame)
            if listener.backlog > LISTENER_BACKLOG_BYTES:
                listener.too_slow = True
                listener.push(None)
                self._listeners.discard(listener)

    def _finish(self, code: int) -> None:
        if self.exit_code is not None:
            return
        self.exit_code = code
        self._finished_at = time.monotonic()
        self._exited.set()
        if self._disconnect_timer is not None:
            self._disconnect_timer.cancel()
            self._disconnect_timer = None
        for listener in self._listeners:
            listener.push(exit_frame(code))
            listener.push(None)
        self._listeners.clear()
        if self._process.stdin is not None:
            self._process.stdin.close()


class ExecSessionTable:
    """The exec sessions of every running sandbox."""

    def __init__(self) -> None:
        self._by_sandbox: dict[str, dict[str, ExecSession]] = {}
        # Async runs that never started: (sandbox, exec id) -> (why, when), kept as long as a result.
        self._refusals: dict[tuple[str, str], tuple[str, float]] = {}

    def add(self, session: ExecSession) -> None:
        sessions = self._by_sandbox.setdefault(session.sandbox_id, {})
        for stale in [s.id for s in sessions.values() if s.finished_longer_than(FINISHED_RETENTION_SECONDS)]:
            del sessions[stale]
        sessions[session.id] = session

    def get(self, sandbox_id: str, session_id: str) -> ExecSession | None:
        return self._by_sandbox.get(sandbox_id, {}).get(session_id)

    def retained(self, sandbox_id: str, session_id: str) -> ExecSession | None:
        """The session while its result is kept: running, or exited within the retention time."""
        session = self.get(sandbox_id, session_id)
        if session is None or session.finished_longer_than(FINISHED_RETENTION_SECONDS):
            return None
        return session

    def add_refusal(self, sandbox_id: str, exec_id: str, reason: str) -> None:
        now = time.monotonic()
        for key in [key for key, (_, at) in self._refusals.items() if now - at > FINISHED_RETENTION_SECONDS]:
            del self._refusals[key]
        self._refusals[(sandbox_id, exec_id)] = (reason, now)

    def refusal(self, sandbox_id: str, exec_id: str) -> str | None:
        """Why the async run ``exec_id`` did not start, while its result is kept."""
        kept = self._refusals.get((sandbox_id, exec_id))
        if kept is None or time.monotonic() - kept[1] > FINISHED_RETENTION_SECONDS:
            return None
        return kept[0]

    def for_sandbox(self, sandbox_id: str) -> list[ExecSession]:
        return sorted(self._by_sandbox.get(sandbox_id, {}).values(), key=lambda s: s.started_at)

    async def close_sandbox(self, sandbox_id: str) -> None:
        """Kill every session of a sandbox that stops; they are forgotten with its processes."""
        sessions = self._by_sandbox.pop(sandbox_id, {})
        for key in [key for key in self._refusals if key[0] == sandbox_id]:
            del self._refusals[key]
        await asyncio.gather(*(session.close() for session in sessions.values()))

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close_sandbox(sid) for sid in list(self._by_sandbox)))


def _signal_group_members(pgid: int, signum: int) -> int:
    """Send ``signum`` to every process of group ``pgid`` except its leader.

    The leader is the sandbox helper, which would die of the signal at once and report the command gone
    while the command itself may still be handling it. Returns how many were signalled.
    """
    signalled = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat_file:
                stat = stat_file.read()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state ppid pgrp ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signum)
                signalled += 1
    return signalled


# `exec/run` returns each stream whole up to this size; past it the run answers an explicit error.
MAX_RUN_OUTPUT_BYTES = 64 * 1024 * 1024


class Exec:
    """The exec resource: runs to completion, async runs and sessions a client attaches to."""

    def __init__(self, core: SandboxCore) -> None:
        self._core = core

    async def run(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        envs: Mapping[str, str],
        cwd: str | None,
        timeout: float,
    ) -> CommandResult:
        """Run to completion; 500 when the command cannot start or its output passes the cap."""
        # Outside the data plane, which first tells a sandbox restarted mid-call (503) from a refusal.
        with _exec_errors(sandbox_id):
            async with self._core.data_plane(sandbox_id) as record:
                refusal = self._start_error(sandbox_id, argv[0], cwd)
                if refusal is not None:
                    raise CannotStart(f"exec in {sandbox_id}: {AGENT_ERROR}exec start: {refusal}")
                result = await self._core.run(
                    sandbox_id,
                    argv,
                    env={**record.envs, **envs},
                    cwd=cwd,
                    timeout=timeout,
                    output_limit=MAX_RUN_OUTPUT_BYTES,
                )
        if result.truncated:
            limit = MAX_RUN_OUTPUT_BYTES // (1024 * 1024)
            raise Failed(
                f"exec in {sandbox_id}: output exceeded {limit} MiB on stdout or stderr; "
                "redirect it to a file and read the file instead",
                code="output_too_large",
            )
        return result

    async def start_session(
        self,
        sandbox_id: str,
        command: str,
        args: Sequence[str],
        *,
        envs: Mapping[str, str],
        cwd: str | None,
        timeout: int,
        max_run_after_disconnect: int,
    ) -> ExecSession:
        with _exec_errors(sandbox_id):
            async with self._core.data_plane(sandbox_id) as record:
                refusal = self._start_error(sandbox_id, command, cwd)
                if refusal is not None:
                    raise CannotStart(f"create exec session in VM: {AGENT_ERROR}start command: {refusal}")
                process = await self._core.spawn(
                    sandbox_id,
                    [command, *args],
                    env={**record.envs, **envs},
                    cwd=cwd,
                    stdin=True,
                )
                session_id = new_session_id()
                while self._core.exec_sessions.get(sandbox_id, session_id) is not None:
                    session_id = new_session_id()
                session = ExecSession(
                    session_id,
                    sandbox_id,
                    command,
                    args,
                    process,
                    timeout=max(0, timeout),
                    max_run_after_disconnect=max(0, max_run_after_disconnect),
                )
                self._core.exec_sessions.add(session)
                return session

    def refused_run(self, sandbox_id: str, refusal: CannotStart) -> str:
        """Keep an async run that could not start under a new exec id: its result tells why.

        The service answers such a run 202 and reports the failure when the result is polled.
        """
        exec_id = new_session_id()
        self._core.exec_sessions.add_refusal(sandbox_id, exec_id, refusal.message)
        return exec_id

    def result(self, sandbox_id: str, exec_id: str) -> ExecSession | str:
        """The session behind an async run, or why it did not start, while retained (404 after); no wake."""
        self._core.require_live(sandbox_id)
        self._core.touch(sandbox_id)
        refusal = self._core.exec_sessions.refusal(sandbox_id, exec_id)
        if refusal is not None:
            return refusal
        session = self._core.exec_sessions.retained(sandbox_id, exec_id)
        if session is None:
            raise NotFound(f"exec {exec_id} not found")
        return session

    async def sessions(self, sandbox_id: str) -> list[ExecSession]:
        async with self._core.data_plane(sandbox_id):
            return self._core.exec_sessions.for_sandbox(sandbox_id)

    async def kill_session(self, sandbox_id: str, session_id: str, signum: int) -> None:
        """Signal a session's command (0 means SIGKILL, as in the service)."""
        signum = signum or signal.SIGKILL
        if not 1 <= signum < signal.NSIG:
            raise Invalid(f"invalid signal {signum}")
        async with self._core.data_plane(sandbox_id):
            self._session(sandbox_id, session_id).kill(signum)

    @contextlib.asynccontextmanager
    async def attached(
        self, sandbox_id: str, session_id: str
    ) -> AsyncIterator[tuple[ExecSession, list[bytes], Listener]]:
        """Attach one client to a session: its replay and live listener; detaches on exit.

        The sandbox stays awake while a client is attached.
        """
        async with self._core.data_plane(sandbox_id):
            session = self._session(sandbox_id, session_id)
            replay, listener = session.attach()
            try:
                yield session, replay, listener
            finally:
                session.detach(listener)

    def _start_error(self, sandbox_id: str, command: str, cwd: str | None) -> str | None:
        """Why the command cannot start in the sandbox, as the hosted agent says it (None: it can)."""
        return start_error(self._core.files(sandbox_id), command, cwd or SANDBOX_HOME)

    def _session(self, sandbox_id: str, session_id: str) -> ExecSession:
        session = self._core.exec_sessions.get(sandbox_id, session_id)
        if session is None:
            raise NotFound(f"exec session {session_id} not found")
        return session


@contextlib.contextmanager
def _exec_errors(sandbox_id: str) -> Iterator[None]:
    """A command the OS refuses to start (E2BIG, ENOMEM, ...) is the service's 500 ``exec in sb-...``."""
    try:
        yield
    except OSError as error:
        raise Failed(f"exec in {sandbox_id}: {error}") from error
