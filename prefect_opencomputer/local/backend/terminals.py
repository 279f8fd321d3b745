"""PTY sessions: an interactive shell in a sandbox on a pseudo-terminal, as the hosted service runs one.

The server opens a pseudo-terminal pair and starts, on its far end inside the sandbox, the sandbox's
own ``setsid --ctty`` (the terminal becomes the session's controlling terminal, so a resize reaches
it as SIGWINCH) and ``script``, which gives the shell a terminal of the sandbox's own ``/dev/pts``
(``tty`` names it, job control works) and relays to ours. The shell runs as ``sandbox`` in its home
with ``TERM=xterm-256color``, ``COLUMNS`` and ``LINES``, as the hosted agent starts it. A client reads
and writes raw bytes over the WebSocket; output is read only while a client is attached, so a shell
nobody watches waits on a full terminal, as there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from prefect_opencomputer.local.errors import NotFound

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.core import SandboxCore

import asyncio
import contextlib
import errno
import fcntl
import os
import shlex
import struct
import termios

from prefect_opencomputer.local.backend.records import new_session_id
from prefect_opencomputer.local.sandbox import processes
from prefect_opencomputer.local.sandbox.runtime import kill_group

DEFAULT_SHELL = "/bin/bash"
DEFAULT_COLS, DEFAULT_ROWS = 80, 24
_READ_BYTES = 4096
_HANG_UP_SECONDS = 2.0


class Terminal:
    """One PTY session: the shell's process and our end of its terminal."""

    def __init__(
        self, session_id: str, sandbox_id: str, master: int, process: processes.ChildProcess
    ) -> None:
        self.id = session_id
        self.sandbox_id = sandbox_id
        self._master = master
        self._process = process
        self.exited = asyncio.ensure_future(process.wait())

    @classmethod
    def start(cls, core: SandboxCore, sandbox_id: str, cols: int, rows: int, shell: str) -> Terminal:
        cols, rows = cols or DEFAULT_COLS, rows or DEFAULT_ROWS
        master, far = os.openpty()
        try:
            _set_size(far, cols, rows)
            os.set_blocking(master, False)
            argv = [
                "setsid", "--ctty", "--wait",
                "script", "--quiet", "--flush", "--return",
                "--command", f"exec {shlex.quote(shell)}", "/dev/null",
            ]  # fmt: skip
            env = {"TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows)}
            popen = core.spawn_on_terminal(sandbox_id, argv, env=env, terminal=far)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(far)
        terminal = cls(new_session_id(), sandbox_id, master, processes.ChildProcess(popen, None, None, None))
        # Our end stays open a moment after the shell exits, for a client to read what it left.
        loop = asyncio.get_running_loop()
        terminal.exited.add_done_callback(lambda _: loop.call_later(_HANG_UP_SECONDS, terminal._hang_up))
        return terminal

    @property
    def running(self) -> bool:
        return not self.exited.done()

    def resize(self, cols: int, rows: int) -> None:
        if self._master >= 0:
            _set_size(self._master, cols, rows)

    async def write(self, data: bytes) -> None:
        """Type ``data`` into the terminal (waiting while the shell does not read)."""
        while data and self._master >= 0:
            try:
                written = os.write(self._master, data)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            except OSError:
                return  # the shell is gone
            data = data[written:]

    async def read(self) -> bytes:
        """The next output, or b"" once the shell has exited and what it left has been read."""
        loop = asyncio.get_running_loop()
        while self._master >= 0:
            try:
                return os.read(self._master, _READ_BYTES)
            except BlockingIOError:
                if self.exited.done():
                    return b""
            except OSError as error:
                if error.errno == errno.EIO:  # every holder of the far end has gone
                    return b""
                raise
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self._master, _resolve, readable)
            try:
                waiting: set[asyncio.Future[object]] = {readable, self.exited}  # type: ignore[arg-type]
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if self._master >= 0:
                    loop.remove_reader(self._master)
        return b""

    async def close(self) -> None:
        """Hang up: the shell gets SIGHUP as from a closed terminal; one that ignores it is killed."""
        self._hang_up()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(_HANG_UP_SECONDS):
                await asyncio.shield(self.exited)
        if not self.exited.done():
            kill_group(self._process.pid)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(_HANG_UP_SECONDS):
                    await asyncio.shield(self.exited)

    def _hang_up(self) -> None:
        if self._master >= 0:
            # A `read` waiting on it registered it with the loop: unregistered first, or the loop would
            # keep watching the number, and the next socket given that number would fail to register.
            asyncio.get_running_loop().remove_reader(self._master)
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = -1


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class TerminalTable:
    """The PTY sessions of every running sandbox; they end with its processes (a freeze keeps them)."""

    def __init__(self) -> None:
        self._by_sandbox: dict[str, dict[str, Terminal]] = {}

    def add(self, terminal: Terminal) -> None:
        self._by_sandbox.setdefault(terminal.sandbox_id, {})[terminal.id] = terminal
        terminal.exited.add_done_callback(lambda _: self._forget(terminal))

    def get(self, sandbox_id: str, session_id: str) -> Terminal | None:
        return self._by_sandbox.get(sandbox_id, {}).get(session_id)

    def _forget(self, terminal: Terminal) -> None:
        sessions = self._by_sandbox.get(terminal.sandbox_id, {})
        if sessions.get(terminal.id) is terminal:
            del sessions[terminal.id]

    async def close_sandbox(self, sandbox_id: str) -> None:
        terminals = self._by_sandbox.pop(sandbox_id, {})
        await asyncio.gather(*(terminal.close() for terminal in terminals.values()))

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close_sandbox(sid) for sid in list(self._by_sandbox)))


class Terminals:
    """The PTY resource: interactive shells on pseudo-terminals that a client attaches to."""

    def __init__(self, core: SandboxCore) -> None:
        self._core = core

    async def start(self, sandbox_id: str, cols: int, rows: int, shell: str) -> Terminal:
        """An interactive shell on a new pseudo-terminal (``/bin/bash`` unless ``shell`` names another)."""
        async with self._core.data_plane(sandbox_id):
            terminal = Terminal.start(self._core, sandbox_id, cols, rows, shell or DEFAULT_SHELL)
            self._core.terminals.add(terminal)
            return terminal

    async def get(self, sandbox_id: str, session_id: str) -> Terminal:
        """A running PTY session of the sandbox (waking it); 404 ``PTY session … not found`` otherwise."""
        async with self._core.data_plane(sandbox_id):
            terminal = self._core.terminals.get(sandbox_id, session_id)
            if terminal is None:
                raise NotFound(f"PTY session {session_id} not found")
            return terminal

    async def close(self, sandbox_id: str, session_id: str) -> None:
        await (await self.get(sandbox_id, session_id)).close()

    @contextlib.asynccontextmanager
    async def attached(self, sandbox_id: str, session_id: str) -> AsyncIterator[Terminal]:
        """A PTY session for one client; the sandbox stays awake while it is attached."""
        async with self._core.data_plane(sandbox_id):
            terminal = self._core.terminals.get(sandbox_id, session_id)
            if terminal is None:
                raise NotFound(f"PTY session {session_id} not found")
            yield terminal
