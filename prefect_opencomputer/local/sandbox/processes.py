"""Child processes watched through a pidfd, and commands a sandbox's boot process starts for us.

asyncio's own ``Process.wait()`` returns only once the child's pipes close, and a background
process that a command leaves behind (``server &``) keeps them open for as long as it lives. A
pidfd says when the child itself exits, and needs no watcher thread per child.

A command is started by the sandbox's boot process (`start_through`), which is in the sandbox's
cgroups already: a process of ours would have to be attached to them, and on cgroup v1 the first
attach after an idle moment waits out an RCU grace period (5-15 ms, most of a first command).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import struct
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TypeVar

_T = TypeVar("_T")


class ChildProcess:
    """A running child with asyncio streams, shaped like ``asyncio.subprocess.Process``."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdin: asyncio.StreamWriter | None,
        stdout: asyncio.StreamReader | None,
        stderr: asyncio.StreamReader | None,
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        self._pidfd = os.pidfd_open(popen.pid)
        loop.add_reader(self._pidfd, self._on_exit)

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has exited; negative for a signal, like Popen."""
        return self._popen.returncode

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        code = self._popen.wait()  # already exited: reaps at once
        if not self._exited.done():
            self._exited.set_result(code)

    async def wait(self) -> int:
        """Wait for the child to exit (not for its pipes to close)."""
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self._popen.returncode is None:
            self._popen.send_signal(sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: bool = False,
    stdout: bool = True,
    stderr: bool | IO[bytes] = True,
    pass_fds: Sequence[int] = (),
) -> ChildProcess:
    """Start ``argv`` in a new session (so its whole process group can be killed)."""
    loop = asyncio.get_running_loop()
    popen = subprocess.Popen(  # noqa: ASYNC220 - vfork+exec, no blocking wait
        list(argv),
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE if stderr is True else (stderr or subprocess.DEVNULL),
        env=dict(env) if env is not None else None,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
    )
    out = await _reader(loop, popen.stdout) if popen.stdout else None
    err = await _reader(loop, popen.stderr) if popen.stderr else None
    writer = None
    if popen.stdin is not None:
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.streams.FlowControlMixin(loop=loop), popen.stdin
        )
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return ChildProcess(popen, writer, out, err)


async def _reader(loop: asyncio.AbstractEventLoop, pipe: IO[bytes]) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 20, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    return reader


# One datagram carries a request (helper.c's COMMAND_BYTES); a larger one goes the long way. Below
# the kernel's MAX_ARG_STRLEN, so no string the fast way takes is one an exec would refuse (E2BIG).
REQUEST_BYTES = 128 * 1024
_STARTED = struct.Struct("<ii")  # the carrier's pid, or -1 and why nothing started
_EXITED = struct.Struct("<i")  # its wait status
_SEND_RETRY_SECONDS = 0.1


class StartedCommand(ChildProcess):
    """A command the sandbox's boot process forked for us (`start_through`).

    Its carrier (the fork, which does what ``helper enter`` does) is not our child: a pidfd the
    boot process sent signals it, and the boot process reports its wait status once reaped.
    """

    def __init__(
        self,
        pid: int,
        pidfd: int,
        status: socket.socket,
        stdin: asyncio.StreamWriter | None,
        stdout: asyncio.StreamReader | None,
        stderr: asyncio.StreamReader | None,
    ) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._code: int | None = None
        self._carrier = pidfd
        self._status = status
        loop = asyncio.get_running_loop()
        self._exited = loop.create_future()
        loop.add_reader(status.fileno(), self._on_status)

    @property
    def returncode(self) -> int | None:
        return self._code

    def _on_status(self) -> None:
        try:
            report = self._status.recv(_EXITED.size)
        except BlockingIOError:
            return
        except OSError:
            report = b""
        # No report: the boot process died with the sandbox, and took the carrier with it.
        status = _EXITED.unpack(report)[0] if len(report) == _EXITED.size else signal.SIGKILL
        asyncio.get_running_loop().remove_reader(self._status.fileno())
        self._status.close()
        os.close(self._carrier)
        self._code = os.waitstatus_to_exitcode(status)
        if not self._exited.done():
            self._exited.set_result(self._code)

    def send_signal(self, sig: int) -> None:
        if self._code is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._carrier, sig)


async def start_through(
    channel: socket.socket, options: Sequence[str], *, env: Mapping[str, str], stdin: bool = False
) -> StartedCommand | None:
    """Have a sandbox's boot process start a command (``options`` are ``helper enter``'s after
    ``--pidfd``, then ``--`` and the command); None when it cannot, and nothing started.

    It cannot when the request is too large for one datagram or holds what a spawn refuses (a NUL,
    an ``=`` in a variable's name), or when the boot process is gone or cannot fork: the caller
    then starts the command the long way, which answers as it always has.
    """
    strings = [*options, *(f"{key}={value}" for key, value in env.items())]
    if any("\0" in text for text in strings) or any("=" in key for key in env):
        return None
    request = struct.pack("<II", len(options), len(env)) + b"".join(
        os.fsencode(text) + b"\0" for text in strings
    )
    if len(request) > REQUEST_BYTES:
        return None
    loop = asyncio.get_running_loop()
    ours: list[int] = []  # our ends of the pipes, kept only if the command starts
    theirs: list[int] = []  # what the command gets; ours to close once sent
    status, status_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        if stdin:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            theirs.append(read_end)
            ours.append(write_end)
        else:
            theirs.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        for _ in range(2):
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            ours.append(read_end)
            theirs.append(write_end)
        theirs.append(status_theirs.detach())
        try:
            await _send(channel, request, theirs)
        except OSError:
            return None  # the boot process is gone (the sandbox stopped): the long way says so
        finally:
            for fd in theirs:
                os.close(fd)
            theirs.clear()
        status.setblocking(False)
        # Shielded: once asked, the command starts; a caller that gives up meanwhile has it killed.
        started = asyncio.ensure_future(_receive(status))
        try:
            report, fds = await asyncio.shield(started)
        except asyncio.CancelledError:
            started.add_done_callback(_kill_abandoned)
            raise
        if len(report) != _STARTED.size or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return None  # refused (it could not fork) or gone: nothing started
        pid, _ = _STARTED.unpack(report)
        pipes = [
            os.fdopen(fd, "wb" if index == 0 and stdin else "rb", buffering=0)
            for index, fd in enumerate(ours)
        ]
        ours.clear()
        writer = None
        if stdin:
            transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.streams.FlowControlMixin(loop=loop), pipes.pop(0)
            )
            writer = asyncio.StreamWriter(transport, protocol, None, loop)
        out = await _reader(loop, pipes[0])
        err = await _reader(loop, pipes[1])
        return StartedCommand(pid, fds[0], status, writer, out, err)
    except BaseException:
        status.close()
        raise
    finally:
        for fd in [*ours, *theirs]:
            os.close(fd)
        if ours or theirs:
            status.close()


def _kill_abandoned(started: asyncio.Future[tuple[bytes, list[int]]]) -> None:
    """Kill a command whose caller went away while it was being started."""
    if started.cancelled() or started.exception() is not None:
        return
    report, fds = started.result()
    if len(report) == _STARTED.size and fds:
        with contextlib.suppress(OSError):  # its process group: the carrier and the command
            os.killpg(_STARTED.unpack(report)[0], signal.SIGKILL)
    for fd in fds:
        os.close(fd)


async def _send(channel: socket.socket, data: bytes, fds: list[int]) -> None:
    """One datagram with descriptors, waiting while the boot process is busy (or frozen).

    Raises `OSError` once the channel is closed (the sandbox stopped): tried again every moment,
    as a closed descriptor never becomes writable.
    """
    while True:
        try:
            socket.send_fds(channel, [data], fds)
            return
        except BlockingIOError:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_SEND_RETRY_SECONDS):
                    await ready(channel.fileno(), writing=True)


async def _receive(status: socket.socket) -> tuple[bytes, list[int]]:
    data, fds, _, _ = await when_ready(
        status.fileno(), functools.partial(socket.recv_fds, status, _STARTED.size, 1), writing=False
    )
    return data, fds


async def when_ready(fd: int, attempt: Callable[[], _T], *, writing: bool) -> _T:
    """What ``attempt`` (a read, write, send or receive on the non-blocking ``fd``) gives, tried again
    each time ``fd`` turns readable or writable while it would block."""
    while True:
        try:
            return attempt()
        except BlockingIOError:
            await ready(fd, writing=writing)


async def ready(fd: int, *, writing: bool) -> None:
    """Wait until ``fd`` is readable (or writable, ``writing``), through the event loop."""
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if writing else (loop.add_reader, loop.remove_reader)

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    add(fd, wake)
    try:
        await woken
    finally:
        remove(fd)
