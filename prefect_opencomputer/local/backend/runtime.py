"""The sandbox runtime: real, isolated Linux environments on this machine.

A sandbox is a private writable layer (an overlayfs upper directory over the host's system
directories, with host-private paths masked) plus, while it runs, one long-lived bubblewrap
process holding its mount, PID, IPC, UTS and network namespaces. Commands enter those namespaces
with ``nsenter`` as the unprivileged ``sandbox`` user, so background processes outlive the command
that started them. This module knows nothing of HTTP, ids or persistence: the service above it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prefect_opencomputer.local.backend import egress, host, layers, netns, processes
from prefect_opencomputer.local.backend.fileops import RootedFiles
from prefect_opencomputer.local.backend.host import RuntimeUnavailable

SANDBOX_UID = 1000
SANDBOX_GID = 1000
SANDBOX_HOME = "/home/sandbox"
BASE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": SANDBOX_HOME,
    "USER": "sandbox",
    "LOGNAME": "sandbox",
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
}
TIMED_OUT_SUFFIX = b"\nProcess timed out"
# What the sandbox's root may do to files (package installs chown, chmod and drop to service users).
ROOT_CAPABILITIES = "+chown,+dac_override,+fowner,+fsetid,+setuid,+setgid,+kill,+net_bind_service"
# After the command exits, how long to keep reading output that it left in the pipes.
_PIPE_GRACE_SECONDS = 0.05


class SandboxNotRunning(RuntimeError):
    """The sandbox has no live process tree (hibernated or never started)."""


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left behind; a timeout is a result, not an error."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    truncated: bool = False


@dataclass
class _Machine:
    process: processes.ChildProcess  # the outer unshare/bwrap process
    init_pid: int  # pid 1 of the sandbox's PID namespace, as seen from the host
    netns_fd: int
    drains: set[asyncio.Task[None]]
    egress: asyncio.Server | None  # the outbound proxy listening inside the sandbox


class SandboxRuntime:
    """Starts, stops and enters sandboxes whose layers live under ``root``."""

    def __init__(self, root: Path, *, hidden_paths: Sequence[Path] = ()) -> None:
        self.root = root
        self.layers = layers.LayerStore(root / "layers", hidden_paths=(root, *hidden_paths))
        self._machines: dict[str, _Machine] = {}
        self._starting: dict[str, asyncio.Lock] = {}

    @staticmethod
    def check_available() -> None:
        """Raise `RuntimeUnavailable` with a readable reason when sandboxes cannot run here."""
        host.check_host()

    # -- lifecycle ---------------------------------------------------------------------------

    def is_running(self, sandbox_id: str) -> bool:
        machine = self._machines.get(sandbox_id)
        return machine is not None and machine.process.returncode is None

    async def start(self, sandbox_id: str, *, hostname: str | None = None, network: bool = True) -> None:
        """Boot the sandbox's process tree over its existing layer (idempotent).

        With ``network``, its processes reach the internet through the egress proxy (HTTP/HTTPS).
        """
        lock = self._starting.setdefault(sandbox_id, asyncio.Lock())
        async with lock:
            if self.is_running(sandbox_id):
                return
            upper, work = self.layers.sandbox_dirs(sandbox_id)
            if not upper.is_dir():
                raise FileNotFoundError(f"no layer for sandbox {sandbox_id}")
            self.layers.reset_workdir(sandbox_id)
            info_read, info_write = os.pipe()
            ready_read, ready_write = os.pipe()
            # bwrap reports the pid early; the init command signals once the root is in place.
            init = f"echo ready >/proc/self/fd/{ready_write} && exec /bin/sleep infinity"
            # The overlay is mounted inside a private mount namespace: it never exists on the host,
            # and it goes away with the sandbox's last process, even if this server dies.
            script = (
                '"$6" -t overlay overlay -o "lowerdir=/,upperdir=$1,workdir=$2" "$3" '
                '&& exec "$7" --bind "$3" / --dev /dev --proc /proc --tmpfs /run '
                "--unshare-pid --unshare-ipc --unshare-uts --unshare-net --unshare-cgroup-try "
                f'--hostname "$4" --chdir {SANDBOX_HOME} --die-with-parent --new-session '
                f'--info-fd {info_write} -- /bin/sh -c "$5"'
            )
            merged = self.layers.mountpoint(sandbox_id)
            merged.mkdir(parents=True, exist_ok=True)
            log_path = merged.with_name("init.log")
            try:
                with log_path.open("wb") as log:
                    unshare = [host.command("unshare"), "--mount", "--propagation", "private", "--"]
                    arguments = [str(upper), str(work), str(merged), hostname or sandbox_id, init]
                    commands = [host.command("mount"), host.command("bwrap")]
                    process = await processes.spawn(
                        [*unshare, "/bin/sh", "-c", script, "sandbox-init", *arguments, *commands],
                        stdout=False,
                        stderr=log,
                        pass_fds=(info_write, ready_write),
                    )
            finally:
                os.close(info_write)
                os.close(ready_write)
            try:
                info = await _read_until(info_read, b"}")
                ready = await _read_until(ready_read, b"\n")
            finally:
                os.close(info_read)
                os.close(ready_read)
            init_pid = _child_pid(info)
            if init_pid is None or not ready:
                process.kill()
                await process.wait()
                reason = log_path.read_text(errors="replace").strip()
                raise RuntimeUnavailable(f"sandbox {sandbox_id} failed to start: {reason}")
            netns_fd = os.open(f"/proc/{init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            proxy = None
            if network:
                proxy = await egress.serve(egress.listening_socket(netns.socket_in(netns_fd)))
            self._machines[sandbox_id] = _Machine(process, init_pid, netns_fd, set(), proxy)

    async def stop(self, sandbox_id: str) -> None:
        """Kill every process of the sandbox; its mount goes with them. The layer stays."""
        machine = self._machines.pop(sandbox_id, None)
        if machine is None:
            return
        for task in machine.drains:
            task.cancel()
        if machine.egress is not None:
            machine.egress.close()
        os.close(machine.netns_fd)
        # Killing pid 1 of a PID namespace kills every process in it; its parent reaps it and exits.
        with contextlib.suppress(ProcessLookupError):
            os.kill(machine.init_pid, signal.SIGKILL)
        await machine.process.wait()

    async def destroy(self, sandbox_id: str) -> None:
        """Stop the sandbox and delete its layer: nothing of it is left on this machine."""
        await self.stop(sandbox_id)
        await self.layers.remove_sandbox(sandbox_id)
        self._starting.pop(sandbox_id, None)

    async def shutdown(self) -> None:
        """Stop every sandbox (layers stay: the server may start again)."""
        await asyncio.gather(*(self.stop(sid) for sid in list(self._machines)))

    def running_ids(self) -> list[str]:
        return [sid for sid in self._machines if self.is_running(sid)]

    # -- commands ----------------------------------------------------------------------------

    def _machine(self, sandbox_id: str) -> _Machine:
        machine = self._machines.get(sandbox_id)
        if machine is None or machine.process.returncode is not None:
            raise SandboxNotRunning(sandbox_id)
        return machine

    def _enter_argv(
        self, machine: _Machine, argv: Sequence[str], cwd: str | None, as_root: bool
    ) -> list[str]:
        namespaces = ["-m", "-u", "-i", "-n", "-p", "-r", "-w"]
        enter = [host.command("nsenter"), "-t", str(machine.init_pid), *namespaces]
        if as_root:
            # Root of the sandbox's files, not of the host: no mounts, no ptrace, no setuid escalation.
            bounding = f"--bounding-set=-all,{ROOT_CAPABILITIES}"
            enter += ["--", host.command("setpriv"), bounding, "--no-new-privs"]
        else:
            enter += ["-S", str(SANDBOX_UID), "-G", str(SANDBOX_GID)]
        enter.append("--")
        if cwd and cwd != SANDBOX_HOME:
            enter += ["/usr/bin/env", "-C", cwd, "--"]
        return enter + list(argv)

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
        """Start a process inside the sandbox with piped output, in its own process group.

        Commands run as the ``sandbox`` user; ``as_root`` (image builds) runs as the sandbox's root
        with a small set of file capabilities.
        """
        machine = self._machine(sandbox_id)
        base = BASE_ENV if not as_root else {**BASE_ENV, "HOME": "/root", "USER": "root", "LOGNAME": "root"}
        proxy = egress.PROXY_ENV if machine.egress is not None else {}
        return await processes.spawn(
            self._enter_argv(machine, argv, cwd, as_root),
            env={**base, **proxy, **(env or {})},
            stdin=stdin,
        )

    async def run(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float = 60.0,
        output_limit: int = 16 * 1024 * 1024,
        as_root: bool = False,
    ) -> CommandResult:
        """Run a command to completion; on timeout kill its process group (exit code -1)."""
        process = await self.spawn(sandbox_id, argv, env=env, cwd=cwd, as_root=as_root)
        assert process.stdout is not None and process.stderr is not None
        out, err = _Capture(output_limit), _Capture(output_limit)
        readers = {
            asyncio.ensure_future(out.consume(process.stdout)),
            asyncio.ensure_future(err.consume(process.stderr)),
        }
        timed_out = False
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            timed_out = True
            kill_group(process.pid)
            await process.wait()
        except BaseException:
            kill_group(process.pid)
            raise
        # A background process may hold the pipes open: take what is there, then drain the rest.
        _, pending = await asyncio.wait(readers, timeout=_PIPE_GRACE_SECONDS)
        machine = self._machines.get(sandbox_id)
        for task in pending:
            if machine is not None:
                machine.drains.add(task)
                task.add_done_callback(machine.drains.discard)
            else:
                task.cancel()
            out.stop_collecting()
            err.stop_collecting()
        code = process.returncode if process.returncode is not None else -1
        stderr = err.value()
        if timed_out:
            return CommandResult(-1, out.value(), stderr + TIMED_OUT_SUFFIX, True, out.truncated)
        return CommandResult(
            code if code >= 0 else -1, out.value(), stderr, False, out.truncated or err.truncated
        )

    # -- files and network -------------------------------------------------------------------

    def files(self, sandbox_id: str) -> RootedFiles:
        """File operations on the sandbox's root as its processes see it (no escape)."""
        machine = self._machine(sandbox_id)
        return RootedFiles(
            Path(f"/proc/{machine.init_pid}/root"), home=SANDBOX_HOME, owner=(SANDBOX_UID, SANDBOX_GID)
        )

    async def open_connection(
        self, sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to ``127.0.0.1:port`` inside the sandbox's own network namespace."""
        sock = self.connect_socket(sandbox_id)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    def connect_socket(self, sandbox_id: str) -> socket.socket:
        """A fresh non-blocking TCP socket living in the sandbox's network namespace."""
        return netns.socket_in(self._machine(sandbox_id).netns_fd)


def kill_group(pgid: int) -> None:
    """SIGKILL a process group, ignoring one that is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class _Capture:
    """Collects a stream up to a byte limit, then keeps reading and discarding."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False
        self._collecting = True

    async def consume(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            if not self._collecting:
                continue
            room = self.limit - self.size
            if len(chunk) > room:
                chunk, self.truncated = chunk[:room], True
            self.chunks.append(chunk)
            self.size += len(chunk)

    def stop_collecting(self) -> None:
        self._collecting = False

    def value(self) -> bytes:
        return b"".join(self.chunks)


async def _read_until(fd: int, terminator: bytes) -> bytes:
    """Read a pipe until ``terminator`` arrives or every writer has gone (an empty read)."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    os.set_blocking(fd, False)
    while True:
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, readable.set_result, None)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        chunk = os.read(fd, 4096)
        chunks.append(chunk)
        if not chunk or terminator in chunk:
            return b"".join(chunks)


def _child_pid(info: bytes) -> int | None:
    import json

    try:
        value = json.loads(info.decode())["child-pid"]
    except (ValueError, KeyError, UnicodeDecodeError):
        return None
    return int(value)
