"""The sandbox runtime: real, isolated Linux environments on this machine.

A sandbox is a template's root filesystem (read-only, shared) below the sandbox's own writable
layer, in its own user namespace (root inside is an unprivileged id range outside), with its own
mount, PID, IPC, UTS, cgroup and network namespaces and, where the host has them, its own cgroups
(memory, processes, CPU, freezer). ``sandbox-helper`` (host code, compiled from ``helper.c``)
boots it and enters it; it drops host privileges before it resolves any path the sandbox can
write. Its pid 1 lives until the sandbox stops, so background processes outlive the command that
started them, and hibernation freezes them rather than killing them. This module knows nothing
of HTTP, ids or persistence: the service above it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Unpack

from prefect_opencomputer.local.sandbox import disk, host, ids, layers, netns, processes
from prefect_opencomputer.local.sandbox.cgroups import CgroupError, CgroupHost, Limits, SandboxCgroup
from prefect_opencomputer.local.sandbox.egress import IPNetwork, registry_exceptions
from prefect_opencomputer.local.sandbox.fileagents import AgentFiles, AgentTarget, FileAgents
from prefect_opencomputer.local.sandbox.fileops import RootedFiles
from prefect_opencomputer.local.sandbox.forwarding import SandboxNetwork
from prefect_opencomputer.local.sandbox.helper import HelperUnavailable, helper_binary
from prefect_opencomputer.local.sandbox.host import RuntimeUnavailable
from prefect_opencomputer.local.sandbox.procview import ProcViews
from prefect_opencomputer.local.sandbox.rootfs import LOCALE
from prefect_opencomputer.local.sandbox.store import StoreUnavailable

if TYPE_CHECKING:
    from prefect_opencomputer.local.sandbox.protocol import BootOptions, CommandOptions

SANDBOX_UID = ids.SANDBOX_UID
SANDBOX_GID = ids.SANDBOX_GID
SANDBOX_HOME = ids.SANDBOX_HOME
# The sandbox user's groups: its own and Debian's static ``sudo`` group, as on the hosted image.
SANDBOX_GROUPS = (ids.SANDBOX_GID, ids.SUDO_GID)
SHM_BYTES = 256 * 1024 * 1024
RootfsProvider = Callable[[str], Awaitable[Path]]
_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BASE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": SANDBOX_HOME,
    "USER": "sandbox",
    "LOGNAME": "sandbox",
    "SHELL": "/bin/bash",
    "LANG": LOCALE,
    # The template trusts this host's CAs (see rootfs); tools with a bundle of their own are told too.
    "SSL_CERT_FILE": _CA_BUNDLE,
    "NODE_EXTRA_CA_CERTS": _CA_BUNDLE,
    "REQUESTS_CA_BUNDLE": _CA_BUNDLE,
    "PIP_CERT": _CA_BUNDLE,
}
TIMED_OUT_SUFFIX = b"\nProcess timed out"
logger = logging.getLogger(__name__)
# After a timeout kill, how long to keep reading what a process outside the group left in the pipes.
_PIPE_GRACE_SECONDS = 0.05
# After a timeout kill, how long to wait for the command to be gone before answering anyway.
_KILL_GRACE_SECONDS = 1.0


class SandboxNotRunning(RuntimeError):
    """The sandbox has no live process tree (hibernated or never started)."""


class NotPaused(RuntimeError):
    """The sandbox's processes could not be paused in time for a checkpoint."""


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
    process: processes.ChildProcess  # the helper's outer process, waiting for pid 1
    init_pid: int  # pid 1 of the sandbox's PID namespace, as seen from the host
    pidfd: int  # the way in: the helper enters every namespace of pid 1 through it
    netns_fd: int
    network: SandboxNetwork | None  # DNS and TCP forwarders, behind the namespace's rules
    cgroup: SandboxCgroup | None
    id_slot: int  # its own host id range: `ids.range_base(id_slot)` and on
    # The boot process's command channel (`processes.start_through`): commands start inside the
    # sandbox's cgroups, with no attach.
    commands: socket.socket
    frozen: bool = False


class SandboxRuntime:
    """Starts, stops, freezes and enters sandboxes whose layers live under ``root``.

    ``rootfs`` gives the root filesystem of a template (building it on first use); ``cgroups``
    is None only when the server was told to run without limits; ``max_disk_mb`` caps every
    sandbox's disk.
    """

    def __init__(
        self,
        root: Path,
        *,
        cache: Path,
        rootfs: RootfsProvider,
        cgroups: CgroupHost | None,
        egress_allow: Collection[IPNetwork] = (),
        max_disk_mb: int | None = None,
        host_ports: Collection[int] = (),
        sweep_prefix: str | None = None,
    ) -> None:
        self.root = root
        # Cgroup groups of other servers named so are swept when empty (`open`).
        self.sweep_prefix = sweep_prefix
        self.egress_allow = frozenset(egress_allow)
        # The package registries' addresses, open on the ports package clients use only.
        self.registries: frozenset[IPNetwork] = frozenset()
        self.host_ports = frozenset(host_ports)
        self.cache = cache
        self.layers = layers.LayerStore(
            root / "layers", helper=lambda: self.helper, live_root=self._disk_root, max_disk_mb=max_disk_mb
        )
        self.cgroups = cgroups
        self._rootfs = rootfs
        self._lowers: dict[str, Path] = {}  # a template's tree never changes under a running server
        self._helper: str | None = None
        self._machines: dict[str, _Machine] = {}
        self._starting: dict[str, asyncio.Lock] = {}
        self._boots = itertools.count(1)
        # Stopped sandboxes whose last processes are still dying (one stuck in the kernel dies late).
        self._teardowns: dict[str, asyncio.Task[None]] = {}
        self._removals: set[asyncio.Task[None]] = set()
        # Each sandbox's own id range, from its first boot until it is gone.
        self.id_slots = ids.IdSlots(root / "id-slots.json")
        # Per-sandbox views of /proc (its own memory and cores); None: sandboxes see the host's.
        self.proc_views: ProcViews | None = None
        self.file_agents = FileAgents()

    def check_available(self) -> None:
        """Raise `RuntimeUnavailable` with a readable reason when sandboxes cannot run here."""
        host.check_host()
        try:
            disk.check_host()
            self._helper = str(helper_binary(self.cache))
        except (HelperUnavailable, disk.DiskUnavailable) as error:
            raise RuntimeUnavailable(str(error)) from error

    async def open(self, templates: Collection[str] = ()) -> None:
        """Ready the host as the server starts; raises `RuntimeUnavailable` with a readable reason.

        Resolves the package registries, mounts the /proc views, sweeps what a killed server left
        (its cgroups, its half-made clones), opens the disk store and builds ``templates`` up front,
        so no create waits for them.
        """
        self.check_available()
        self.registries = await asyncio.to_thread(registry_exceptions)
        if self.cgroups is not None:
            # What a sandbox's /proc shows comes from its cgroups: without limits there is nothing to show.
            self.proc_views = await ProcViews.start(self.root / "proc-views")
            # A killed server's sandboxes left their groups (and perhaps processes) behind: ours, and
            # the empty ones of servers whose data dir may never start again (temporary ones).
            await asyncio.to_thread(self.cgroups.sweep)
            if self.sweep_prefix is not None:
                await asyncio.to_thread(self.cgroups.sweep_abandoned, self.sweep_prefix)
        try:
            await asyncio.to_thread(self.layers.store.open)
        except StoreUnavailable as error:
            raise RuntimeUnavailable(str(error)) from error
        # Clones (checkpoint, fork or restore) that a killed server left half made.
        await asyncio.to_thread(self.layers.store.sweep_partials)
        self.id_slots.load(self.layers.sandbox_exists)
        for template in templates:
            if template not in self._lowers:
                self._lowers[template] = await self._rootfs(template)

    @property
    def helper(self) -> str:
        if self._helper is None:
            self.check_available()
        assert self._helper is not None
        return self._helper

    # -- lifecycle ---------------------------------------------------------------------------

    def is_running(self, sandbox_id: str) -> bool:
        machine = self._machines.get(sandbox_id)
        return machine is not None and machine.process.returncode is None

    def is_frozen(self, sandbox_id: str) -> bool:
        machine = self._machines.get(sandbox_id)
        return machine is not None and machine.frozen

    async def start(self, sandbox_id: str, *, template: str, **boot: Unpack[BootOptions]) -> None:
        """Boot the sandbox over its existing layer, or thaw it if it is frozen (idempotent).

        With ``network``, its processes get DNS and direct TCP to public addresses, like a VM.
        """
        lock = self._starting.setdefault(sandbox_id, asyncio.Lock())
        async with lock:
            if self.is_running(sandbox_id):
                await _thaw(self._machines[sandbox_id])
                return
            await self._settled(sandbox_id)
            if not await asyncio.to_thread(self.layers.ensure_disk, sandbox_id):
                raise FileNotFoundError(f"no layer for sandbox {sandbox_id}")
            await self._boot(sandbox_id, template=template, **boot)

    async def _boot(self, sandbox_id: str, *, template: str, **boot: Unpack[BootOptions]) -> None:
        hostname, network, limits = boot.get("hostname"), boot.get("network", True), boot.get("limits")
        lower = self._lowers.get(template)
        if lower is None:
            lower = self._lowers[template] = await self._rootfs(template)
        cgroup = None
        if self.cgroups is not None and limits is not None:
            # A name of its own per boot: the group of a stop before may still be emptying.
            name = f"{sandbox_id}-{next(self._boots)}"
            cgroup = await asyncio.to_thread(self.cgroups.create, name, limits)
        merged = self.layers.mountpoint(sandbox_id)
        merged.mkdir(parents=True, exist_ok=True)
        self.layers.lower_mount(sandbox_id).mkdir(mode=0o700, exist_ok=True)  # a layer from before it
        disk_fd = await asyncio.to_thread(self.layers.open_disk, sandbox_id)
        id_slot = self.id_slots.hold(sandbox_id)
        ready_read, ready_write = os.pipe()
        commands, commands_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        commands.setblocking(False)
        argv = [
            self.helper, "boot", "--lower", str(lower), "--disk-fd", str(disk_fd),
            "--disk-mount", str(self.layers.disk_mount(sandbox_id)),
            "--lower-mount", str(self.layers.lower_mount(sandbox_id)),
            "--merged", str(merged), "--hostname", hostname or sandbox_id,
            "--map", f"{ids.range_base(id_slot)}:{ids.ID_COUNT}", "--stored-ids", str(ids.HOST_ID_BASE),
            "--shm-bytes", str(SHM_BYTES),
            "--ready-fd", str(ready_write), "--commands-fd", str(commands_theirs.fileno()),
            *_cgroup_options(cgroup),
        ]  # fmt: skip
        if self.proc_views is not None and cgroup is not None:
            # Its /proc answers with its own memory and cores (lxcfs reads them from its cgroups).
            argv += [option for path in self.proc_views.paths for option in ("--proc-view", str(path))]
        log_path = merged.with_name("init.log")
        try:
            with log_path.open("wb") as log:
                process = await processes.spawn(
                    argv, stdout=False, stderr=log, pass_fds=(ready_write, disk_fd, commands_theirs.fileno())
                )
        except BaseException:
            os.close(ready_read)
            commands.close()
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)
            raise
        finally:
            os.close(ready_write)
            os.close(disk_fd)
            commands_theirs.close()
        pipe = _ReadyPipe(ready_read)
        attaching: asyncio.Future[SandboxNetwork] | None = None
        netns_fd = -1
        try:
            if await pipe.line() == b"net":
                # The namespace exists (the helper holds it): fence it while the rest boots.
                netns_fd = os.open(f"/proc/{process.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                if network:
                    attaching = asyncio.ensure_future(
                        SandboxNetwork.attach(
                            netns_fd,
                            name=sandbox_id,
                            also_public=self.egress_allow,
                            registries=self.registries,
                            host_ports=self.host_ports,
                        )
                    )
            ready = await pipe.line()
            init_pid = int(ready)
            pidfd = os.pidfd_open(init_pid)
        except (ValueError, OSError):
            process.kill()
            await process.wait()
            commands.close()
            await _discard(attaching, netns_fd)
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)
            reason = log_path.read_text(errors="replace").strip()
            raise RuntimeUnavailable(f"sandbox {sandbox_id} failed to start: {reason}") from None
        except BaseException:
            process.kill()
            await process.wait()
            commands.close()
            await _discard(attaching, netns_fd)
            raise
        finally:
            os.close(ready_read)
        machine = _Machine(process, init_pid, pidfd, netns_fd, None, cgroup, id_slot, commands)
        self._machines[sandbox_id] = machine
        if attaching is not None:
            try:
                machine.network = await attaching
            except BaseException:
                await self.stop(sandbox_id)
                raise

    async def freeze(self, sandbox_id: str) -> bool:
        """Pause every process of the sandbox, memory kept; False when there is no freezer here."""
        machine = self._machines.get(sandbox_id)
        if machine is None or machine.cgroup is None:
            return False
        if not machine.frozen:
            await asyncio.to_thread(machine.cgroup.freeze)
            machine.frozen = True
        return True

    async def resize(self, sandbox_id: str, limits: Limits) -> bool:
        """Apply new limits to the running sandbox; False when it has no cgroup (``--no-limits``).

        Raises `MemoryInUse` when its processes hold more memory than the new limit allows.
        """
        machine = self._machine(sandbox_id)
        if machine.cgroup is None:
            return False
        await asyncio.to_thread(machine.cgroup.set_limits, limits)
        return True

    async def stop(self, sandbox_id: str) -> None:
        """Kill every process of the sandbox; its mounts go with them. The layer stays.

        Never waits on the sandbox's processes: one in a long uninterruptible syscall dies when it
        returns, and its cgroup goes then, in the background (`wait_stopped`).
        """
        machine = self._machines.pop(sandbox_id, None)
        if machine is None:
            return
        self.file_agents.close(sandbox_id)  # before its pidfd closes: no agent is spawned after
        # Killing pid 1 of a PID namespace kills every process in it. The helper exits once the
        # last of them has (the kernel empties the namespace first): then the disk is unmounted.
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(machine.pidfd, signal.SIGKILL)
        os.close(machine.pidfd)
        machine.commands.close()
        # A frozen (hibernated) sandbox dies only once thawed: killed first, it runs nothing more.
        await _thaw(machine)
        if machine.network is not None:
            await machine.network.close()
        os.close(machine.netns_fd)
        teardown = asyncio.create_task(self._teardown(machine), name=f"teardown-{sandbox_id}")
        self._teardowns[sandbox_id] = teardown
        teardown.add_done_callback(lambda _: self._forget_teardown(sandbox_id, teardown))

    async def _settled(self, sandbox_id: str) -> None:
        """Until the processes of the sandbox's last boot are gone, and with them its disk's mount."""
        teardown = self._teardowns.get(sandbox_id)
        if teardown is not None:
            await asyncio.shield(teardown)

    async def checkpoint(self, sandbox_id: str, checkpoint_id: str) -> int:
        """Clone the sandbox's disk into a checkpoint (`LayerStore.snapshot`); returns its bytes.

        A running sandbox's processes are paused for it (frozen, memory kept; a hibernated one
        stays so), so the disk holds still. One that cannot be paused in time (a process stuck
        in the kernel) raises `NotPaused`: a checkpoint is never taken of a disk being written.
        Without a freezer (``--no-limits``) the clone is crash-consistent only. A stopped
        sandbox's disk is cloned once its last mount is gone, with every write on it.
        """
        await self._settled(sandbox_id)
        machine = self._machines.get(sandbox_id)
        froze = False
        if machine is not None and machine.cgroup is not None and not machine.frozen:
            try:
                await asyncio.to_thread(machine.cgroup.freeze)
            except CgroupError as error:
                raise NotPaused(
                    f"the processes of {sandbox_id} could not be paused for the checkpoint ({error}); "
                    "nothing was taken, retry"
                ) from error
            machine.frozen = froze = True
        try:
            return await self.layers.snapshot(sandbox_id, checkpoint_id)
        finally:
            if froze and machine is not None and self._machines.get(sandbox_id) is machine:
                await _thaw(machine)

    async def _teardown(self, machine: _Machine) -> None:
        """After a stop: wait for the sandbox's last process to die, however long that takes, then
        remove its cgroup."""
        await machine.process.wait()
        if machine.cgroup is not None:
            await _remove_group(machine.cgroup)

    def _forget_teardown(self, sandbox_id: str, teardown: asyncio.Task[None]) -> None:
        if self._teardowns.get(sandbox_id) is teardown:
            del self._teardowns[sandbox_id]

    async def wait_stopped(self, timeout: float) -> bool:
        """Wait (bounded) until every stopped sandbox's processes, cgroup and (if killed) disk are gone;
        whether all are."""
        pending = {*self._teardowns.values(), *self._removals}
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        return not self._teardowns and not self._removals

    async def destroy(self, sandbox_id: str) -> None:
        """Stop the sandbox and delete its layer: nothing of it is left on this machine.

        Returns at once: its processes, cgroup and disk go in the background (freeing a large,
        fragmented image can take a while), and a start after a crash finishes the job.
        """
        await self.stop(sandbox_id)
        self._starting.pop(sandbox_id, None)
        self.discard_layer(sandbox_id)

    def discard_layer(self, sandbox_id: str) -> None:
        """Delete a sandbox's layer in the background, once its last process is gone."""
        removal = asyncio.create_task(self._remove_layer(sandbox_id), name=f"discard-{sandbox_id}")
        self._removals.add(removal)
        removal.add_done_callback(self._removals.discard)

    async def _remove_layer(self, sandbox_id: str) -> None:
        await self._settled(sandbox_id)
        try:
            await self.layers.remove_sandbox(sandbox_id)
            self.id_slots.release(sandbox_id)  # no process of it is left, and it will not boot again
        except OSError as error:
            logger.warning(
                "sandbox %s: its disk could not be removed yet (%s); the next start will", sandbox_id, error
            )

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop every sandbox (layers stay: the server may start again) and let go of the disk store.

        Groups still emptying after ``grace`` seconds are left to the next start's sweep.
        """
        await asyncio.gather(*(self.stop(sid) for sid in list(self._machines)))
        self.file_agents.shutdown()
        if not await self.wait_stopped(grace):
            for pending in [*self._teardowns.values(), *self._removals]:
                pending.cancel()
        self.layers.store.close()
        if self.proc_views is not None:
            await self.proc_views.stop()
            self.proc_views = None
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.release)

    # -- layers --------------------------------------------------------------------------------

    def create_layer(self, sandbox_id: str, disk_mb: int | None = None) -> None:
        """A fresh layer on a disk of its own (``disk_mb``, the default size if None); blocking."""
        if disk_mb is None:
            self.layers.create_sandbox(sandbox_id)
        else:
            self.layers.create_sandbox(sandbox_id, disk_mb)

    def layer_exists(self, sandbox_id: str) -> bool:
        return self.layers.sandbox_exists(sandbox_id)

    def checkpoint_exists(self, checkpoint_id: str) -> bool:
        return self.layers.checkpoint_exists(checkpoint_id)

    async def fork_layer(self, checkpoint_id: str, sandbox_id: str) -> None:
        """A new sandbox's layer, a clone of the checkpoint."""
        await self.layers.fork(checkpoint_id, sandbox_id)

    async def restore_layer(self, checkpoint_id: str, sandbox_id: str) -> None:
        """A stopped sandbox's layer replaced by a clone of the checkpoint."""
        await self.layers.restore(checkpoint_id, sandbox_id)

    async def remove_checkpoint(self, checkpoint_id: str) -> None:
        await self.layers.remove_checkpoint(checkpoint_id)

    def _disk_root(self, sandbox_id: str) -> Path | None:
        """The helper's root while the sandbox runs: its mount namespace holds the mounted disk."""
        machine = self._machines.get(sandbox_id)
        if machine is None or machine.process.returncode is not None:
            return None
        return Path(f"/proc/{machine.process.pid}/root")

    def memory_sample(self, sandbox_id: str) -> tuple[int, int] | None:
        """The sandbox's memory now and its peak since the last sample; None without a memory cgroup."""
        machine = self._machines.get(sandbox_id)
        if machine is None or machine.cgroup is None or machine.process.returncode is not None:
            return None
        try:
            return machine.cgroup.memory_sample()
        except (OSError, CgroupError, ValueError):
            return None  # the group went with a stop racing the sample

    def running_ids(self) -> list[str]:
        return [sid for sid in self._machines if self.is_running(sid)]

    # -- commands ----------------------------------------------------------------------------

    def _machine(self, sandbox_id: str) -> _Machine:
        machine = self._machines.get(sandbox_id)
        if machine is None or machine.process.returncode is not None:
            raise SandboxNotRunning(sandbox_id)
        return machine

    def _enter_argv(self, machine: _Machine, command: Sequence[str]) -> list[str]:
        """``helper enter`` as a process of ours runs it: ``command`` is `_command`'s."""
        cgroups = _cgroup_options(machine.cgroup)
        return [self.helper, "enter", "--pidfd", str(machine.pidfd), *cgroups, *command]

    async def spawn(
        self, sandbox_id: str, argv: Sequence[str], *, stdin: bool = False, **how: Unpack[CommandOptions]
    ) -> processes.ChildProcess:
        """Start a process inside the sandbox with piped output, in its own process group.

        Commands run as the ``sandbox`` user; ``as_root`` runs as the sandbox's own root, which is
        nobody on the host.
        """
        machine = self._machine(sandbox_id)
        as_root = how.get("as_root", False)
        base = BASE_ENV if not as_root else {**BASE_ENV, "HOME": "/root", "USER": "root", "LOGNAME": "root"}
        env = {**base, **(how.get("env") or {})}
        command = _command(argv, how.get("cwd"), as_root)
        started = await processes.start_through(machine.commands, command, env=env, stdin=stdin)
        if started is not None:
            return started
        return await processes.spawn(
            self._enter_argv(machine, command), env=env, stdin=stdin, pass_fds=(machine.pidfd,)
        )

    def spawn_on_terminal(
        self, sandbox_id: str, argv: Sequence[str], *, env: Mapping[str, str], terminal: int
    ) -> subprocess.Popen[bytes]:
        """Start a process inside the sandbox, as ``sandbox`` in its home, on the terminal ``terminal``.

        ``terminal`` (a pseudo-terminal's far end) becomes its stdin, stdout and stderr.
        """
        machine = self._machine(sandbox_id)
        return subprocess.Popen(
            self._enter_argv(machine, _command(argv, None, False)),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env={**BASE_ENV, **env},
            pass_fds=(machine.pidfd,),
            start_new_session=True,
        )

    async def run(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        output_limit: int = 16 * 1024 * 1024,
        **how: Unpack[CommandOptions],
    ) -> CommandResult:
        """Run a command to completion; on timeout kill its process group (exit code -1)."""
        process = await self.spawn(sandbox_id, argv, **how)
        assert process.stdout is not None and process.stderr is not None
        out, err = _Capture(output_limit), _Capture(output_limit)
        readers = {
            asyncio.ensure_future(out.consume(process.stdout)),
            asyncio.ensure_future(err.consume(process.stderr)),
        }
        # Like the hosted agent: done when the command has exited and every holder of its output
        # pipes has closed them (``sleep 3 & echo hi`` takes 3 s).
        timed_out = False
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(process.wait(), *readers)
        except TimeoutError:
            timed_out = True
            kill_group(process.pid)
            # A hibernated (frozen) sandbox's processes die only once thawed: the answer cannot wait.
            await asyncio.wait({asyncio.ensure_future(process.wait())}, timeout=_KILL_GRACE_SECONDS)
        except BaseException:
            kill_group(process.pid)
            raise
        finally:
            _, pending = await asyncio.wait(readers, timeout=_PIPE_GRACE_SECONDS)
            for task in pending:
                task.cancel()
        code = process.returncode if process.returncode is not None else -1
        stderr = err.value()
        if timed_out:
            return CommandResult(-1, out.value(), stderr + TIMED_OUT_SUFFIX, True, out.truncated)
        return CommandResult(
            code if code >= 0 else -1, out.value(), stderr, False, out.truncated or err.truncated
        )

    # -- files and network -------------------------------------------------------------------

    def files(self, sandbox_id: str) -> RootedFiles:
        """Lookups on the sandbox's root as its processes see it (no escape), for a command's start.

        Stats only, as host root: whatever changes a sandbox's files goes through `file_ops`.
        """
        machine = self._machine(sandbox_id)
        return RootedFiles(Path(f"/proc/{machine.init_pid}/root"), home=SANDBOX_HOME)

    def file_ops(self, sandbox_id: str) -> AgentFiles:
        """The files API's operations, done by the sandbox's file agents as its root inside it."""
        machine = self._machine(sandbox_id)
        procs = machine.cgroup.procs_files if machine.cgroup is not None else ()
        return self.file_agents.files(sandbox_id, AgentTarget(machine.pidfd, procs, SANDBOX_HOME))

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

    async def consume(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            room = self.limit - self.size
            if len(chunk) > room:
                chunk, self.truncated = chunk[:room], True
            self.chunks.append(chunk)
            self.size += len(chunk)

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


async def _thaw(machine: _Machine) -> None:
    """Let a frozen sandbox's processes run again (a no-op for one that runs)."""
    if machine.frozen and machine.cgroup is not None:
        await asyncio.to_thread(machine.cgroup.thaw)
        machine.frozen = False


class _ReadyPipe:
    """The helper's ready fd, a line at a time: ``net`` once the network exists, then pid 1's pid."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    async def line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = await _read_until(self.fd, b"\n")
            if not chunk:
                break
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.strip()


async def _discard(attaching: asyncio.Future[SandboxNetwork] | None, netns_fd: int) -> None:
    """Undo a network half set up for a sandbox that did not boot."""
    if attaching is not None:
        attaching.cancel()
        with contextlib.suppress(BaseException):
            await (await attaching).close()
    if netns_fd >= 0:
        os.close(netns_fd)


async def _remove_group(cgroup: SandboxCgroup) -> None:
    """Remove a stopped sandbox's cgroup, however long its last process takes to die."""
    pause = 0.5
    while True:
        try:
            await asyncio.to_thread(cgroup.remove)
            return
        except CgroupError as error:
            logger.warning("a stopped sandbox's cgroup is not empty yet, retrying: %s", error)
        await asyncio.sleep(pause)
        pause = min(pause * 2, 30.0)


def _command(argv: Sequence[str], cwd: str | None, as_root: bool) -> list[str]:
    """``helper enter``'s options for a command, from its user on: who runs it, where, what."""
    if as_root:
        user = ["--uid", "0", "--gid", "0", "--groups", "0"]
    else:
        groups = ",".join(str(gid) for gid in SANDBOX_GROUPS)
        user = ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID), "--groups", groups]
    return [*user, "--cwd", cwd or SANDBOX_HOME, "--", *argv]


def _cgroup_options(cgroup: SandboxCgroup | None) -> list[str]:
    if cgroup is None:
        return []
    return [option for path in cgroup.procs_files for option in ("--cgroup-procs", str(path))]
