"""A sandbox's file agent: the files API's hands inside the sandbox, as its own root.

The server starts this program once, with ``python -I -S fileagent.py`` (no site, no package, an
empty environment, no descriptor but a socket to the server), and it forks one agent per request.
It imports all it will ever need first, so an agent starts in about a millisecond and shares its
pages; nothing of any sandbox is ever on its command line, which it rewrites to
``sandbox-file-agent`` at once (local users read it with ``ps``). Each agent gets its control
socket, a pidfd of its sandbox's pid 1 and the sandbox's home and cgroups with its request; it
joins the cgroups, enters the sandbox's user and mount namespaces through the pidfd and becomes the
sandbox's root there: every path it resolves, every file and directory it makes, is the sandbox's
own root's doing, with no host privilege left. Then it serves one request at a time over its socket
(``SOCK_SEQPACKET``, one JSON object per message). Bytes move through a pipe the server made and sent
with the request, so the server never holds a descriptor of a sandbox's file. The server treats
whatever an agent says as the sandbox's words: it may be lying, so every reply is checked there.

Messages (server -> agent, the pipe end attached where one is named):
    {"op": "read", "path": p} + pipe write end   -> {"size": n}, n bytes into the pipe, {"done": true}
    {"op": "write", "path": p} + pipe read end   -> {"open": true}, the pipe to EOF into the file,
                                                    {"done": true}
    {"op": "list", "path": p}                    -> {"dir": resolved}, {"entries": [[name, is_dir, size],
                                                    ...]} in messages of at most MESSAGE_BYTES,
                                                    {"done": true}
    {"op": "mkdir" | "remove", "path": p}        -> {"done": true}
Any step may answer {"error": kind, "errno": n, "message": text} instead (kinds: ``os``, ``escape``,
``not_regular``, ``too_many``, ``invalid``), after which the agent waits for the next request.
"""

from __future__ import annotations

import array  # noqa: F401 - loaded now: socket.recv_fds imports it on every call
import ctypes
import errno
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect_opencomputer.local.sandbox import fileops
else:
    # Plain standard library, from this file's folder (at the end of the path, so it shadows
    # nothing), imported before anything of the sandbox is reachable.
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
    import fileops

MESSAGE_BYTES = fileops.AGENT_MESSAGE_BYTES
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_PR_SET_PDEATHSIG = 1
_UMASK = 0o022
_libc = ctypes.CDLL(None, use_errno=True)


def _enter(pidfd: int, procs_files: list[str]) -> None:
    """Join the sandbox's cgroups and namespaces and become its root; no way back out."""
    pid = str(os.getpid())
    for procs in procs_files:  # counted against the sandbox, frozen and killed with it
        with open(procs, "w") as handle:
            handle.write(pid)
    if _libc.setns(pidfd, _CLONE_NEWUSER | _CLONE_NEWNS) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")
    os.close(pidfd)
    # Root and working directory are now the sandbox's root (its pid 1 pivoted there).
    os.setgroups([0])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    # A credential change clears the parent-death signal: set it only now.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.umask(_UMASK)
    os.chdir("/")
    # Nothing more is ever imported: the sandbox could plant modules anywhere a path would lead.
    sys.path.clear()


def _send(control: socket.socket, message: dict[str, object]) -> None:
    control.send(json.dumps(message, separators=(",", ":")).encode())


def _error(control: socket.socket, error: BaseException) -> None:
    if isinstance(error, fileops.PathEscapeError):
        kind, number = "escape", 0
    elif isinstance(error, fileops.NotRegularFileError):
        kind, number = "not_regular", 0
    elif isinstance(error, fileops.TooManyEntries):
        kind, number = "too_many", 0
    elif isinstance(error, OSError):
        kind, number = "os", error.errno or errno.EIO
    else:  # ValueError: a NUL byte or an undecodable request
        kind, number = "invalid", 0
    message = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    filename = error.filename if isinstance(error, OSError) and isinstance(error.filename, str) else ""
    _send(control, {"error": kind, "errno": number, "message": message[:1024], "filename": filename[:4096]})


def _read(control: socket.socket, files: fileops.RootedFiles, path: str, pipe: int) -> None:
    with files.open_read(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        _send(control, {"size": size})
        offset = 0
        while offset < size:
            sent = os.sendfile(pipe, handle.fileno(), offset, min(size - offset, 1 << 20))
            if sent == 0:  # the file shrank: the server sees a short body
                break
            offset += sent


def _write(control: socket.socket, files: fileops.RootedFiles, path: str, pipe: int) -> None:
    with files.open_write(path) as handle:
        _send(control, {"open": True})
        while os.splice(pipe, handle.fileno(), 1 << 20):
            pass


def _list(control: socket.socket, files: fileops.RootedFiles, path: str) -> None:
    entries = files.list(path)  # at most LIST_LIMIT, or TooManyEntries before any is sent
    _send(control, {"dir": files.resolve(path)})
    batch: list[list[object]] = []
    size = 0
    for entry in entries:
        item: list[object] = [entry.name, entry.is_dir, entry.size]
        cost = 6 * len(entry.name) + 40  # at most: every character escaped as \uXXXX
        if batch and size + cost > MESSAGE_BYTES - 64:
            _send(control, {"entries": batch})
            batch, size = [], 0
        batch.append(item)
        size += cost
    if batch:
        _send(control, {"entries": batch})


def _serve(control: socket.socket, home: str) -> None:
    files = fileops.RootedFiles(Path("/"), home=home, umask=_UMASK)
    while True:
        data, fds, _, _ = socket.recv_fds(control, MESSAGE_BYTES, 1)
        if not data:
            return  # the server let go of this agent
        pipe = fds[0] if fds else -1
        try:
            request = json.loads(data)
            op, path = request["op"], request["path"]
            if not isinstance(path, str):
                raise ValueError("path must be a string")
            if op == "read" and pipe >= 0:
                _read(control, files, path, pipe)
            elif op == "write" and pipe >= 0:
                _write(control, files, path, pipe)
            elif op == "list":
                _list(control, files, path)
            elif op == "mkdir":
                files.mkdir(path)
            elif op == "remove":
                files.remove(path)
            else:
                raise ValueError(f"unknown request {op!r}")
        except (OSError, ValueError, KeyError, TypeError) as error:
            _close(pipe)  # first: a server writing into it stops at once
            _error(control, error)
        else:
            _close(pipe)  # first: a server reading a file that shrank sees its end
            _send(control, {"done": True})


def _close(pipe: int) -> None:
    if pipe >= 0:
        os.close(pipe)


def _retitle(title: bytes) -> None:
    """Overwrite the command line local users read (``ps``): it names the server's interpreter and
    this file (and the agents forked from this process show the same). The kernel shows the memory
    between the process's ``arg_start`` and ``arg_end``."""
    fields = Path("/proc/self/stat").read_bytes().rsplit(b")", 1)[1].split()
    arg_start, arg_end = int(fields[45]), int(fields[46])  # fields 48 and 49 of proc(5)
    size = arg_end - arg_start
    if size > 0:
        ctypes.memmove(arg_start, title[: size - 1].ljust(size, b"\0"), size)


def _agent(control: socket.socket, pidfd: int, setup: object) -> None:
    """One agent: into the sandbox ``setup`` names (``{"home": h, "cgroups": [procs file, ...]}``),
    then its requests until the server lets go."""
    try:
        if not isinstance(setup, dict) or not isinstance(setup.get("cgroups"), list):
            raise ValueError("a setup out of shape")
        home = str(setup["home"])
        _enter(pidfd, [str(procs) for procs in setup["cgroups"]])
    except (OSError, ValueError, KeyError, TypeError) as error:
        _error(control, error)
        return
    _send(control, {"ready": True})
    _serve(control, home)


def _fork_agents(requests: socket.socket) -> None:
    """Fork an agent per request: the request is its setup, with its control socket and a pidfd of
    the sandbox's pid 1; the answer is its pid, with a pidfd of it.

    A fork of this process, which imported everything already, starts in about a millisecond and
    shares its pages with it, where a new interpreter took ~50 ms and ~9 MB of its own.
    """
    # Exited agents are reaped by the kernel: this process never waits for one.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        data, fds, _, _ = socket.recv_fds(requests, MESSAGE_BYTES, 2)
        if not data:
            return  # the server is gone or closing
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            _send(requests, {"error": "invalid"})
            continue
        control_fd, pidfd = fds
        child = os.fork()
        if child == 0:
            try:
                requests.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _agent(socket.socket(fileno=control_fd), pidfd, json.loads(data))
            finally:
                os._exit(0)
        os.close(control_fd)
        os.close(pidfd)
        try:
            child_pidfd = os.pidfd_open(child)
        except ProcessLookupError:  # it failed and is gone already; its error is on its socket
            _send(requests, {"pid": child})
            continue
        socket.send_fds(requests, [json.dumps({"pid": child}).encode()], [child_pidfd])
        os.close(child_pidfd)


def main(argv: list[str]) -> None:
    """``fileagent.py REQUESTS_FD``: fork agents as the server asks, until it closes the socket."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # nothing of it outlives the server
    _retitle(b"sandbox-file-agent")
    _fork_agents(socket.socket(fileno=int(argv[1])))


if __name__ == "__main__":
    main(sys.argv)
