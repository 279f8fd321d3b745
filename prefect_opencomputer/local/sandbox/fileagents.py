"""The server's side of the file agents: the files API of a running sandbox, done inside it.

Every sandbox gets its own agents (`fileagent`), forked on its first file call, at most
`AGENTS_PER_SANDBOX` at once, one kept while idle, all killed with the sandbox. Nothing here blocks:
requests and replies go over a non-blocking socket, bytes through pipes the server makes (so it
never holds a descriptor of a sandbox's file). An exchange that does not end as the protocol says
(the caller gave up on a timeout, a client went away mid-download, a reply out of shape) kills its
agent, so the work stops, and the next call spawns a fresh one. A reply is the sandbox's word:
it is size-checked and shape-checked before anything of it is used.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import functools
import json
import os
import posixpath
import select
import signal
import socket
import sys
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeGuard

from prefect_opencomputer.local.sandbox import processes
from prefect_opencomputer.local.sandbox.fileops import (
    AGENT_MESSAGE_BYTES,
    LIST_LIMIT,
    DirEntry,
    NotRegularFileError,
    PathEscapeError,
    TooManyEntries,
)

AGENT_PROGRAM = Path(__file__).with_name("fileagent.py")
# Enough for a download, an upload and a listing of one sandbox at once; more wait their turn.
AGENTS_PER_SANDBOX = 3
# Agents kept waiting for the next call (each ~1.5 MB of its own, counted against its sandbox).
_IDLE_PER_SANDBOX = 1
_MAX_NAME_CHARS = 1024  # a name is at most 255 bytes; escaped undecodable bytes take more characters
_MAX_PATH_CHARS = 4096
_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class OpenedFile:
    """A file of a sandbox opened for reading: its size, and its bytes in chunks.

    ``chunks`` holds what the read needs until it is exhausted or closed; a consumer that stops
    early closes it (``aclose``).
    """

    size: int
    chunks: AsyncGenerator[bytes, None]


@dataclass(frozen=True)
class Listing:
    """A directory's entries in name order, in batches (at most `LIST_LIMIT` in all).

    ``batches`` holds what the listing needs until it is exhausted or closed (``aclose``).
    """

    batches: AsyncGenerator[list[DirEntry], None]


class FileWriter(Protocol):
    """A file of a sandbox being written: blocks in order, then `close` (or `abort`)."""

    async def write(self, block: bytes) -> None: ...

    async def close(self) -> None:
        """Finish the file; raises what the write met (``OSError`` with ENOSPC, ...)."""

    def abort(self) -> None:
        """Stop writing now; what was written so far stays (the caller removes it)."""


class FileOps(Protocol):
    """The files API's operations inside one running sandbox, as its root; errors as `fileops` raises them."""

    async def open_read(self, path: str) -> OpenedFile: ...

    async def open_write(self, path: str) -> FileWriter: ...

    async def list(self, path: str) -> Listing:
        """Errors (a missing directory, `TooManyEntries`) come here, before any entry."""

    async def mkdir(self, path: str) -> None: ...

    async def remove(self, path: str) -> None: ...


@dataclass(frozen=True)
class AgentTarget:
    """How an agent reaches its sandbox: a pidfd of its pid 1, its cgroups, its home."""

    pidfd: int
    procs_files: Sequence[Path]
    home: str


def _failed(reason: str) -> OSError:
    return OSError(errno.EIO, f"the sandbox's file agent failed: {reason}")


class _Forker:
    """The one `fileagent` program, which forks the agents (started on first use; again if it died)."""

    def __init__(self) -> None:
        self._process: processes.ChildProcess | None = None
        self._requests: socket.socket | None = None
        self._turn = asyncio.Lock()  # one request and its answer at a time

    async def fork(self, control: int, pidfd: int, setup: bytes) -> tuple[int, int]:
        """A new agent for ``setup``, with ``control`` and ``pidfd`` handed over: its pid and a pidfd
        of it (-1 when it exited at once)."""
        async with self._turn:
            requests = await self._running()
            try:
                socket.send_fds(requests, [setup], [control, pidfd])
                data, fds, _, _ = await processes.when_ready(
                    requests.fileno(), functools.partial(socket.recv_fds, requests, 1024, 1), writing=False
                )
            except OSError as error:
                self.close()
                raise _failed(f"the agents' forker failed ({error})") from None
            answer = json.loads(data) if data else {}
            pid = answer.get("pid") if isinstance(answer, dict) else None
            if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or len(fds) > 1:
                for fd in fds:
                    os.close(fd)
                raise _failed("the agents' forker answered out of shape")
            return pid, fds[0] if fds else -1

    async def _running(self) -> socket.socket:
        if self._process is not None and self._process.returncode is None and self._requests is not None:
            return self._requests
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        try:
            self._process = await processes.spawn(
                [sys.executable, "-I", "-S", "-B", str(AGENT_PROGRAM), str(theirs.fileno())],
                env={},  # the server's environment may hold keys
                stdout=False,
                stderr=False,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._requests = ours
        return ours

    def close(self) -> None:
        """Stop it; agents it forked die with it (their parent-death signal)."""
        if self._process is not None:
            self._process.kill()
            self._process = None
        if self._requests is not None:
            self._requests.close()
            self._requests = None


class FileAgent:
    """One agent process and its control socket; one exchange at a time."""

    def __init__(self, pid: int, pidfd: int, control: socket.socket) -> None:
        self.pid = pid
        self._pidfd = pidfd  # -1: it exited as it started
        self._control = control
        # A request was sent and its last reply has not come: the agent's state is unknown.
        self.in_exchange = False

    @classmethod
    async def start(cls, forker: _Forker, target: AgentTarget) -> FileAgent:
        server_end, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server_end.setblocking(False)
        # Nothing of the sandbox on a command line, which every local user can read.
        setup = json.dumps({"home": target.home, "cgroups": [str(p) for p in target.procs_files]}).encode()
        try:
            pid, pidfd = await forker.fork(agent_end.fileno(), target.pidfd, setup)
        except BaseException:
            server_end.close()
            raise
        finally:
            agent_end.close()
        agent = cls(pid, pidfd, server_end)
        try:
            agent.in_exchange = True
            if await agent.receive() != {"ready": True}:
                raise _failed("it did not start")
            agent.in_exchange = False
        except BaseException:
            agent.discard()
            raise
        return agent

    @property
    def alive(self) -> bool:
        """Not exited (its pidfd turns readable when it does)."""
        return self._pidfd >= 0 and not select.select([self._pidfd], [], [], 0)[0]

    def send(self, message: dict[str, str], pipe: int | None = None) -> None:
        data = json.dumps(message).encode()
        rights = [] if pipe is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pipe]))]
        self.in_exchange = True
        try:
            self._control.sendmsg([data], rights)
        except OSError as error:  # a full buffer too: the agent is not reading its requests
            raise _failed(f"it took no request ({error})") from None

    async def receive(self) -> dict[str, object]:
        """The agent's next reply; what it reports as an error is raised as `fileops` would."""
        try:
            data = await asyncio.get_running_loop().sock_recv(self._control, AGENT_MESSAGE_BYTES + 1)
        except OSError as error:
            raise _failed(str(error)) from None
        if not data:
            raise _failed("it exited")
        if len(data) > AGENT_MESSAGE_BYTES:
            raise _failed("a reply too long")
        try:
            message = json.loads(data)
        except (ValueError, RecursionError):
            raise _failed("a reply that is not JSON") from None
        if not isinstance(message, dict):
            raise _failed("a reply that is not an object")
        if "error" in message:
            self.in_exchange = False
            raise _reported(message)
        if message == {"done": True}:
            self.in_exchange = False
        return message

    def kill(self) -> None:
        """Stop its work now; a holder waiting on it sees it exit (its socket stays open until `discard`)."""
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def discard(self) -> None:
        """Kill it and close its socket and pidfd: only once nothing waits on it."""
        self.kill()
        self._control.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


def _reported(message: dict[str, object]) -> Exception:
    """The exception an agent's error reply stands for, built only from checked fields."""
    kind, number, text, filename = (
        message.get("error"), message.get("errno"), message.get("message"), message.get("filename")
    )  # fmt: skip
    if not isinstance(text, str) or not isinstance(filename, str):
        return _failed("an error reply out of shape")
    text, filename = text[:1024], filename[:_MAX_PATH_CHARS]
    if kind == "escape":
        return PathEscapeError(text)
    if kind == "not_regular":
        return NotRegularFileError(text)
    if kind == "too_many":
        return TooManyEntries(text)
    if kind == "invalid":
        return ValueError(text)
    if kind == "os" and isinstance(number, int) and 0 < number < 4096:
        return OSError(number, text, filename) if filename else OSError(number, text)
    return _failed("an error reply out of shape")


class _SandboxAgents:
    """The agents of one boot of one sandbox."""

    def __init__(self, forker: _Forker, target: AgentTarget, limit: int) -> None:
        self.forker = forker
        self.target = target
        self.turns = asyncio.Semaphore(limit)
        self.idle: list[FileAgent] = []
        self.live: set[FileAgent] = set()
        self.closed = False

    async def acquire(self) -> FileAgent:
        """An agent of this sandbox for one exchange; waits while all of its agents are busy."""
        await self.turns.acquire()
        try:
            while self.idle:
                agent = self.idle.pop()
                if agent.alive:
                    return agent
                agent.discard()
                self.live.discard(agent)
            if self.closed:  # checked with no await before the spawn: its pidfd is still open
                raise ProcessLookupError(errno.ESRCH, "the sandbox stopped")
            agent = await FileAgent.start(self.forker, self.target)
            self.live.add(agent)
            return agent
        except BaseException:
            self.turns.release()
            raise

    def release(self, agent: FileAgent) -> None:
        """Back to the idle ones when its exchange ended cleanly; killed otherwise."""
        if agent.in_exchange or self.closed or not agent.alive or len(self.idle) >= _IDLE_PER_SANDBOX:
            agent.discard()
            self.live.discard(agent)
        else:
            self.idle.append(agent)
        self.turns.release()

    def close(self) -> None:
        self.closed = True
        for agent in self.idle:
            agent.discard()
        for agent in self.live:
            agent.kill()  # one in use is discarded when its holder lets it go
        self.live.clear()
        self.idle.clear()


class FileAgents:
    """The file agents of every running sandbox, by sandbox id."""

    def __init__(self, per_sandbox: int = AGENTS_PER_SANDBOX) -> None:
        self.per_sandbox = per_sandbox
        self._sandboxes: dict[str, _SandboxAgents] = {}
        self._forker = _Forker()

    def files(self, sandbox_id: str, target: AgentTarget) -> AgentFiles:
        """The file operations of a running sandbox (its agents made with ``target`` on demand)."""
        agents = self._sandboxes.get(sandbox_id)
        if agents is None:
            agents = self._sandboxes[sandbox_id] = _SandboxAgents(self._forker, target, self.per_sandbox)
        return AgentFiles(agents)

    def close(self, sandbox_id: str) -> None:
        """Kill the sandbox's agents (it is stopping); calls still in flight fail."""
        agents = self._sandboxes.pop(sandbox_id, None)
        if agents is not None:
            agents.close()

    def shutdown(self) -> None:
        """Kill every agent and the program that forks them (the server is stopping)."""
        for sandbox_id in list(self._sandboxes):
            self.close(sandbox_id)
        self._forker.close()

    def pids(self, sandbox_id: str) -> list[int]:
        """The processes of the sandbox's live agents."""
        agents = self._sandboxes.get(sandbox_id)
        return [] if agents is None else [agent.pid for agent in agents.live]


class AgentFiles:
    """`FileOps` of one sandbox, each through one of its agents."""

    def __init__(self, agents: _SandboxAgents) -> None:
        self._agents = agents

    @contextlib.asynccontextmanager
    async def _agent(self) -> AsyncIterator[FileAgent]:
        agent = await self._agents.acquire()
        try:
            yield agent
        finally:
            self._agents.release(agent)

    async def open_read(self, path: str) -> OpenedFile:
        transfer, reply = await self._begin("read", path, server_end="read")
        size = reply.get("size")
        if not _is_size(size):
            transfer.finish()
            raise _failed("a size out of shape")
        chunks = _download(transfer, size)
        # A download whose response never started still lets its agent go.
        weakref.finalize(chunks, transfer.finish)
        return OpenedFile(size, chunks)

    async def open_write(self, path: str) -> FileWriter:
        transfer, reply = await self._begin("write", path, server_end="write")
        if reply != {"open": True}:
            transfer.finish()
            raise _failed("a reply out of shape")
        return _AgentWriter(transfer)

    async def list(self, path: str) -> Listing:
        transfer, reply = await self._begin("list", path)
        directory = reply.get("dir")
        if not isinstance(directory, str) or len(directory) > _MAX_PATH_CHARS:
            transfer.finish()
            raise _failed("a directory out of shape")
        batches = _listing(transfer, directory)
        weakref.finalize(batches, transfer.finish)
        return Listing(batches)

    async def _begin(
        self, op: str, path: str, *, server_end: Literal["read", "write"] | None = None
    ) -> tuple[_Transfer, dict[str, object]]:
        """Start ``op`` on one agent, handing it the far end of a new pipe when bytes move, and
        wait for its first reply; the transfer holds the agent (and the server's end) until finished."""
        agent = await self._agents.acquire()
        transfer = _Transfer(self._agents, agent)
        try:
            if server_end is None:
                agent.send({"op": op, "path": path})
            else:
                read_end, write_end = os.pipe()
                ours, theirs = (read_end, write_end) if server_end == "read" else (write_end, read_end)
                transfer.pipe = ours
                os.set_blocking(ours, False)
                try:
                    agent.send({"op": op, "path": path}, theirs)
                finally:
                    os.close(theirs)
            return transfer, await agent.receive()
        except BaseException:
            transfer.finish()
            raise

    async def mkdir(self, path: str) -> None:
        await self._simple("mkdir", path)

    async def remove(self, path: str) -> None:
        await self._simple("remove", path)

    async def _simple(self, op: str, path: str) -> None:
        async with self._agent() as agent:
            agent.send({"op": op, "path": path})
            if await agent.receive() != {"done": True}:
                raise _failed("a reply out of shape")


def _entry(directory: str, item: object) -> DirEntry:
    if not (isinstance(item, list) and len(item) == 3):
        raise _failed("an entry out of shape")
    name, is_dir, size = item
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= _MAX_NAME_CHARS
        or "/" in name
        or not isinstance(is_dir, bool)
        or not _is_size(size)
    ):
        raise _failed("an entry out of shape")
    path = posixpath.join(directory, name)
    return DirEntry(name=name, path=path, is_dir=is_dir, size=0 if is_dir else size)


def _is_size(value: object) -> TypeGuard[int]:
    """A byte count as the agent may send one: a plain non-negative int that fits an off_t."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


class _Transfer:
    """An agent held for a read or a write, and the server's end of its pipe."""

    def __init__(self, agents: _SandboxAgents, agent: FileAgent) -> None:
        self.agents = agents
        self.agent = agent
        self.pipe = -1
        self._finished = False

    def finish(self) -> None:
        """Let the agent go (killed unless its exchange ended); idempotent."""
        if self._finished:
            return
        self._finished = True
        if self.pipe >= 0:
            os.close(self.pipe)
            self.pipe = -1
        self.agents.release(self.agent)


async def _listing(transfer: _Transfer, directory: str) -> AsyncGenerator[list[DirEntry], None]:
    try:
        listed = 0
        while (message := await transfer.agent.receive()) != {"done": True}:
            batch = message.get("entries")
            if not isinstance(batch, list) or listed + len(batch) > LIST_LIMIT:
                raise _failed("a listing out of shape")
            listed += len(batch)
            yield [_entry(directory, item) for item in batch]
    finally:
        transfer.finish()


async def _download(transfer: _Transfer, size: int) -> AsyncGenerator[bytes, None]:
    try:
        remaining = size
        while remaining > 0:
            read = functools.partial(os.read, transfer.pipe, min(_CHUNK_BYTES, remaining))
            chunk = await processes.when_ready(transfer.pipe, read, writing=False)
            if not chunk:
                break  # the file shrank as it was read: a short body, as a plain read would give
            remaining -= len(chunk)
            yield chunk
        if await transfer.agent.receive() != {"done": True}:
            raise _failed("a reply out of shape")
    finally:
        transfer.finish()


class _AgentWriter:
    def __init__(self, transfer: _Transfer) -> None:
        self._transfer = transfer

    async def write(self, block: bytes) -> None:
        view = memoryview(block)
        pipe = self._transfer.pipe
        try:
            while view:
                written = await processes.when_ready(
                    pipe, functools.partial(os.write, pipe, view), writing=True
                )
                view = view[written:]
        except BrokenPipeError:
            # The agent stopped reading: its reply says why (no space left, ...).
            await self._transfer.agent.receive()
            raise _failed("it stopped reading the upload") from None

    async def close(self) -> None:
        transfer = self._transfer
        os.close(transfer.pipe)
        transfer.pipe = -1
        try:
            if await transfer.agent.receive() != {"done": True}:
                raise _failed("a reply out of shape")
        finally:
            transfer.finish()

    def abort(self) -> None:
        self._transfer.finish()
