"""The local server's backend as the routes see it, independent of HTTP.

`LocalBackend` composes the sandboxes core (`sandboxes.Sandboxes`: records, runtime, locks,
lifecycle) with the resources built on it (checkpoints, images, previews, files, exec sessions)
and answers the sandbox and exec routes itself. Routers turn its records into wire shapes; it
raises a named `BackendError` for every client mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prefect_opencomputer.local.backend import preview_auth, sizing
from prefect_opencomputer.local.backend.checkpoints import Checkpoints
from prefect_opencomputer.local.backend.command_start import start_error
from prefect_opencomputer.local.backend.exec import ExecSession, Listener
from prefect_opencomputer.local.backend.files import SandboxFiles
from prefect_opencomputer.local.backend.images import BuildLogSink, Images
from prefect_opencomputer.local.backend.previews import Previews
from prefect_opencomputer.local.backend.records import (
    SandboxRecord,
    new_session_id,
    new_token,
    utc_now,
)
from prefect_opencomputer.local.backend.sandboxes import Sandboxes
from prefect_opencomputer.local.backend.scaling import Scaling
from prefect_opencomputer.local.backend.signed_urls import UrlSigner
from prefect_opencomputer.local.backend.state import StateStore
from prefect_opencomputer.local.backend.tags import parse_tags
from prefect_opencomputer.local.backend.terminals import DEFAULT_SHELL, Terminal
from prefect_opencomputer.local.backend.usage import (
    MemorySampler,
    SandboxUsage,
    UsageReport,
    UsageService,
    sandbox_window,
    usage_query,
)
from prefect_opencomputer.local.config import LocalServerConfig
from prefect_opencomputer.local.errors import (
    AGENT_ERROR,
    CannotStart,
    Failed,
    Invalid,
    NotFound,
    Unsupported,
)
from prefect_opencomputer.local.private_files import make_private_dir
from prefect_opencomputer.local.sandbox.ids import SANDBOX_HOME
from prefect_opencomputer.local.sandbox.protocol import Runtime
from prefect_opencomputer.local.sandbox.runtime import CommandResult

logger = logging.getLogger(__name__)

_SIGNING_SECRET_KEY = "url_signing_secret"
# `exec/run` returns each stream whole up to this size; past it the run answers an explicit error.
MAX_RUN_OUTPUT_BYTES = 64 * 1024 * 1024
# How long `close()` lets checkpoint copies in flight finish before leaving them to recovery.
_CLOSE_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class SandboxRequest:
    """What a client asks for when it creates a sandbox (``POST /sandboxes``)."""

    template: str = ""
    timeout: int = 0
    cpu_count: int = 0
    memory_mb: int = 0
    disk_mb: int = 0
    envs: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    secret_store: str = ""
    preview_auth: tuple[str, str] | None = None  # (scheme, token)
    image: Mapping[str, object] | None = None  # a declarative image manifest
    snapshot: str = ""
    webhooks: bool = False
    network_enabled: bool = True  # DNS and direct TCP to public addresses, like a VM


@dataclass(frozen=True)
class TagKeyStats:
    key: str
    sandbox_count: int
    value_count: int


class LocalBackend:
    """State and behaviour of every sandbox, checkpoint, patch, exec session and preview URL."""

    def __init__(self, config: LocalServerConfig, runtime: Runtime) -> None:
        self.config = config
        self.sandboxes = Sandboxes(config, runtime)
        self.runtime = self.sandboxes.runtime
        self.idle = self.sandboxes.idle
        self.exec_sessions = self.sandboxes.exec_sessions
        self.checkpoints = Checkpoints(self.sandboxes)
        self.previews = Previews(self.sandboxes)
        self.files = SandboxFiles(self.sandboxes)
        self.images = Images(self.sandboxes, self.checkpoints)
        self.scaling = Scaling(self.sandboxes)
        self._signer: UrlSigner | None = None
        self.memory_sampler = MemorySampler(self.sandboxes.sample_memory, config.usage_sample_seconds)

    def __repr__(self) -> str:
        return f"LocalBackend(data_dir={self.config.data_dir!r})"

    @property
    def store(self) -> StateStore:
        return self.sandboxes.store

    @property
    def max_running_sandboxes(self) -> int:
        return self.sandboxes.max_running_sandboxes

    @max_running_sandboxes.setter
    def max_running_sandboxes(self, limit: int) -> None:
        self.sandboxes.max_running_sandboxes = limit

    # What the routes ask of any sandbox, answered by the core.
    def sandbox(self, sandbox_id: str) -> SandboxRecord:
        return self.sandboxes.sandbox(sandbox_id)

    def require_live(self, sandbox_id: str) -> SandboxRecord:
        return self.sandboxes.require_live(sandbox_id)

    def touch(self, sandbox_id: str) -> None:
        self.sandboxes.touch(sandbox_id)

    @property
    def signer(self) -> UrlSigner:
        if self._signer is None:
            raise RuntimeError("the backend is not started")
        return self._signer

    # -- server lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Open the state and recover from the last run: what was running comes back hibernated."""
        make_private_dir(self.config.data_dir)
        # The default template up front (a cache hit after the first run), so no create waits for it.
        await self.runtime.open((sizing.DEFAULT_TEMPLATE,))
        self.sandboxes.open(StateStore(self.config.data_dir / "state.db"))
        # A killed server could not close the running intervals of its sandboxes: they end at
        # their last sample.
        self.store.close_abandoned_intervals()
        secret = self.store.setting(_SIGNING_SECRET_KEY)
        if secret is None:
            secret = secrets.token_hex(32)
            self.store.set_setting(_SIGNING_SECRET_KEY, secret)
        self._signer = UrlSigner(bytes.fromhex(secret))
        for record in self.store.sandboxes():
            if record.status == "pending":
                # Created but never acknowledged: nobody knows its id.
                self.runtime.discard_layer(record.id)
                self.store.delete_sandbox(record.id)
            elif record.status == "running":
                record.status = "hibernated"
                self.store.save_sandbox(record)
            elif record.status == "stopped" and self.runtime.layer_exists(record.id):
                self.runtime.discard_layer(record.id)  # killed, but the server died before its disk went
        await self.checkpoints.recover()
        await self.images.start()
        self.sandboxes.peak = 0
        self.idle.start()
        self.memory_sampler.start()

    async def close(self) -> None:
        """Stop every sandbox's processes; their disks and all state stay for the next start."""
        await self.idle.stop()
        await self.memory_sampler.stop()
        await self.images.close()
        await self.checkpoints.finish_copies(_CLOSE_GRACE_SECONDS)
        await self.exec_sessions.close_all()
        await self.sandboxes.terminals.close_all()
        opened = self.sandboxes.opened
        if opened is not None:
            now = utc_now()
            for record in opened.sandboxes(status="running"):
                opened.stop_running(record.id, now, self.sandboxes.memory_sample(record.id))
                record.status = "hibernated"
                self.store.save_sandbox(record)
        await self.runtime.shutdown()
        if opened is not None:
            opened.close()
            self.sandboxes.open(None)

    async def reset(self) -> None:
        """Kill and forget everything (test isolation); the server keeps running."""
        await self.images.reset()
        await self.checkpoints.finish_copies(_CLOSE_GRACE_SECONDS)
        await self.exec_sessions.close_all()
        await self.sandboxes.terminals.close_all()
        known = {record.id for record in self.store.sandboxes()}
        for sandbox_id in known | set(self.runtime.running_ids()):
            async with self.sandboxes.lifecycle_lock(sandbox_id):
                self.idle.forget(sandbox_id)
                await self.runtime.destroy(sandbox_id)
        for checkpoint in self.store.checkpoints():
            await self.runtime.remove_checkpoint(checkpoint.id)
        self.store.forget_everything()
        self.max_running_sandboxes = self.config.max_running_sandboxes
        self.idle.clear()
        self.sandboxes.peak = len(self.runtime.running_ids())

    def stats(self) -> dict[str, int]:
        """Sandboxes with live processes now, and the most at once since start or reset."""
        return {"liveSandboxes": len(self.runtime.running_ids()), "peakSandboxes": self.sandboxes.peak}

    # -- sandboxes ---------------------------------------------------------------------------

    async def create_sandbox(
        self, request: SandboxRequest, on_build_log: BuildLogSink | None = None
    ) -> tuple[SandboxRecord, str | None]:
        """Create and boot a sandbox; returns it and the preview token when one was asked for.

        With an image or a snapshot the sandbox is a fork of its build (built now unless cached), whose
        log lines go to ``on_build_log``.
        """
        if request.webhooks:
            raise Unsupported("sandbox webhooks are not supported by the local server yet")
        if request.image is not None or request.snapshot:
            return await self.images.create_sandbox(
                self.images.source(request.image, request.snapshot),
                envs=request.envs,
                metadata=request.metadata,
                memory_mb=request.memory_mb,
                secret_store=request.secret_store,
                preview=request.preview_auth,
                log=on_build_log or _no_build_log,
            )
        template = sizing.resolve_template(request.template)
        cpu_count, memory_mb = sizing.resolve_tier(request.cpu_count, request.memory_mb)
        disk_mb = sizing.resolve_disk(request.disk_mb)
        if request.secret_store:
            raise Invalid(f"secret store not found: {request.secret_store}")
        token: str | None = None
        token_hash: str | None = None
        if request.preview_auth is not None:
            token, token_hash = preview_auth.issue(*request.preview_auth)
        record = SandboxRecord(
            id=self.sandboxes.admit_sandbox(),
            status="pending",
            template=template,
            timeout=max(0, request.timeout),
            cpu_count=cpu_count,
            memory_mb=memory_mb,
            disk_mb=disk_mb,
            token=new_token(),
            started_at=utc_now(),
            envs=dict(request.envs),
            metadata=dict(request.metadata),
            preview_auth_hash=token_hash,
            network_enabled=request.network_enabled,
        )
        self.store.save_sandbox(record)
        try:
            await asyncio.to_thread(self.runtime.create_layer, record.id, record.disk_mb)
            async with self.sandboxes.lifecycle_lock(record.id):
                await self.sandboxes.boot(record)
        except BaseException as error:
            await self.sandboxes.discard_sandbox(record.id)
            if isinstance(error, Exception):
                raise Failed(f"worker create failed: {error}") from error
            raise
        return record, token

    def listed_sandboxes(self) -> list[SandboxRecord]:
        """What the hosted list shows: every status but in-flight creates, newest first, at most 200."""
        return [record for record in self.store.sandboxes() if record.status != "pending"][:200]

    async def kill_sandbox(self, sandbox_id: str) -> None:
        """Stop it for good: processes, layer and preview URLs go; its record and checkpoints stay."""
        self.sandbox(sandbox_id)
        async with self.sandboxes.lifecycle_lock(sandbox_id):
            record = self.sandbox(sandbox_id)
            if record.status == "stopped":
                return
            record.status = "stopped"
            record.stopped_at = utc_now()
            self.store.save_sandbox(record)
            self.store.delete_previews(sandbox_id)
            await self.sandboxes.destroy(sandbox_id)

    async def set_timeout(self, sandbox_id: str, timeout: int) -> None:
        if timeout < 0:
            raise Invalid("timeout must be non-negative (0 = no timeout)")
        async with self.sandboxes.data_plane(sandbox_id) as record:
            record.timeout = timeout
            self.store.save_sandbox(record)
            self.idle.watch(sandbox_id, timeout)

    async def hibernate(self, sandbox_id: str) -> SandboxRecord:
        """Freeze its processes (exec sessions kept), as the service's pause; idempotent when hibernated."""
        self.sandbox(sandbox_id)
        async with self.sandboxes.lifecycle_lock(sandbox_id):
            record = self.sandbox(sandbox_id)
            if record.status == "running":
                await self.sandboxes.suspend(record)
            elif record.status != "hibernated":
                raise Invalid("sandbox is not running")
        return record

    async def wake(self, sandbox_id: str) -> SandboxRecord:
        """Boot a hibernated sandbox over its disk; idempotent for a running one."""
        self.sandbox(sandbox_id)
        async with self.sandboxes.lifecycle_lock(sandbox_id):
            record = self.sandbox(sandbox_id)
            if record.status not in ("running", "hibernated"):
                raise Invalid("sandbox is not hibernated")
            if not self.sandboxes.is_live(record):
                await self.sandboxes.wake_locked(record)
        return record

    def tags(self, sandbox_id: str) -> SandboxRecord:
        return self.sandbox(sandbox_id)

    def replace_tags(self, sandbox_id: str, body: object) -> SandboxRecord:
        record = self.sandbox(sandbox_id)
        record.tags = parse_tags(body)
        record.tags_updated_at = utc_now()
        self.store.save_sandbox(record)
        return record

    def tag_keys(self) -> list[TagKeyStats]:
        """Every tag key in use, with how many sandboxes carry it and how many values it has."""
        sandboxes: dict[str, int] = {}
        values: dict[str, set[str]] = {}
        for record in self.store.sandboxes():
            if record.status == "pending":
                continue
            for key, value in record.tags.items():
                sandboxes[key] = sandboxes.get(key, 0) + 1
                values.setdefault(key, set()).add(value)
        return [TagKeyStats(key, sandboxes[key], len(values[key])) for key in sorted(sandboxes)]

    # -- usage -------------------------------------------------------------------------------

    def sandbox_usage(self, sandbox_id: str, from_: str | None, to: str | None) -> SandboxUsage:
        """Its 1-minute points over ``[from, to)`` (the last hour by default), sampled fresh first."""
        record = self.sandbox(sandbox_id)
        start, end = sandbox_window(from_, to, utc_now())
        sample = self.sandboxes.memory_sample(sandbox_id) if record.status == "running" else None
        if sample is not None:
            self.store.record_samples([sample])
        return UsageService(self.store).sandbox_usage(record, start, end)

    def usage(self, params: Sequence[tuple[str, str]]) -> UsageReport:
        """``GET /usage``: every sandbox's (or tag value's) usage over the window, largest first."""
        query = usage_query(params, utc_now())
        created = [record for record in self.store.sandboxes() if record.status != "pending"]
        return UsageService(self.store).report(query, created)

    # -- the data plane ----------------------------------------------------------------------

    async def run_command(
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
            async with self.sandboxes.data_plane(sandbox_id) as record:
                refusal = self._start_error(sandbox_id, argv[0], cwd)
                if refusal is not None:
                    raise CannotStart(f"exec in {sandbox_id}: {AGENT_ERROR}exec start: {refusal}")
                result = await self.runtime.run(
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
            async with self.sandboxes.data_plane(sandbox_id) as record:
                refusal = self._start_error(sandbox_id, command, cwd)
                if refusal is not None:
                    raise CannotStart(f"create exec session in VM: {AGENT_ERROR}start command: {refusal}")
                process = await self.runtime.spawn(
                    sandbox_id,
                    [command, *args],
                    env={**record.envs, **envs},
                    cwd=cwd,
                    stdin=True,
                )
                session_id = new_session_id()
                while self.exec_sessions.get(sandbox_id, session_id) is not None:
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
                self.exec_sessions.add(session)
                return session

    def refused_run(self, sandbox_id: str, refusal: CannotStart) -> str:
        """Keep an async run that could not start under a new exec id: its result tells why.

        The service answers such a run 202 and reports the failure when the result is polled.
        """
        exec_id = new_session_id()
        self.exec_sessions.add_refusal(sandbox_id, exec_id, refusal.message)
        return exec_id

    def exec_result(self, sandbox_id: str, exec_id: str) -> ExecSession | str:
        """The session behind an async run, or why it did not start, while retained (404 after); no wake."""
        self.require_live(sandbox_id)
        self.touch(sandbox_id)
        refusal = self.exec_sessions.refusal(sandbox_id, exec_id)
        if refusal is not None:
            return refusal
        session = self.exec_sessions.retained(sandbox_id, exec_id)
        if session is None:
            raise NotFound(f"exec {exec_id} not found")
        return session

    async def sessions(self, sandbox_id: str) -> list[ExecSession]:
        async with self.sandboxes.data_plane(sandbox_id):
            return self.exec_sessions.for_sandbox(sandbox_id)

    async def kill_session(self, sandbox_id: str, session_id: str, signum: int) -> None:
        """Signal a session's command (0 means SIGKILL, as in the service)."""
        signum = signum or signal.SIGKILL
        if not 1 <= signum < signal.NSIG:
            raise Invalid(f"invalid signal {signum}")
        async with self.sandboxes.data_plane(sandbox_id):
            self._session(sandbox_id, session_id).kill(signum)

    @contextlib.asynccontextmanager
    async def attached(
        self, sandbox_id: str, session_id: str
    ) -> AsyncIterator[tuple[ExecSession, list[bytes], Listener]]:
        """Attach one client to a session: its replay and live listener; detaches on exit.

        The sandbox stays awake while a client is attached.
        """
        async with self.sandboxes.data_plane(sandbox_id):
            session = self._session(sandbox_id, session_id)
            replay, listener = session.attach()
            try:
                yield session, replay, listener
            finally:
                session.detach(listener)

    async def connect_preview(
        self, sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to ``port`` inside the sandbox, waking it if it hibernates.

        Raises `BackendError` 404/410 for unknown/stopped sandboxes and `OSError` (e.g.
        ``ConnectionRefusedError``) when nothing listens on the port.
        """
        async with self.sandboxes.data_plane(sandbox_id):
            return await self.runtime.open_connection(sandbox_id, port)

    def preview_access_allowed(self, sandbox_id: str, presented_token: str | None) -> bool:
        """Whether preview traffic may pass: no token gate on the sandbox, or the right token."""
        record = self.store.sandbox(sandbox_id)
        if record is None or record.preview_auth_hash is None:
            return True
        return preview_auth.matches(record.preview_auth_hash, presented_token)

    # -- shared with the checkpoint and preview services -------------------------------------

    # -- internals ---------------------------------------------------------------------------

    # -- PTY sessions --------------------------------------------------------------------------

    async def start_terminal(self, sandbox_id: str, cols: int, rows: int, shell: str) -> Terminal:
        """An interactive shell on a new pseudo-terminal (``/bin/bash`` unless ``shell`` names another)."""
        async with self.sandboxes.data_plane(sandbox_id):
            terminal = Terminal.start(self.runtime, sandbox_id, cols, rows, shell or DEFAULT_SHELL)
            self.sandboxes.terminals.add(terminal)
            return terminal

    async def terminal(self, sandbox_id: str, session_id: str) -> Terminal:
        """A running PTY session of the sandbox (waking it); 404 ``PTY session … not found`` otherwise."""
        async with self.sandboxes.data_plane(sandbox_id):
            terminal = self.sandboxes.terminals.get(sandbox_id, session_id)
            if terminal is None:
                raise NotFound(f"PTY session {session_id} not found")
            return terminal

    async def close_terminal(self, sandbox_id: str, session_id: str) -> None:
        await (await self.terminal(sandbox_id, session_id)).close()

    @contextlib.asynccontextmanager
    async def attached_terminal(self, sandbox_id: str, session_id: str) -> AsyncIterator[Terminal]:
        """A PTY session for one client; the sandbox stays awake while it is attached."""
        async with self.sandboxes.data_plane(sandbox_id):
            terminal = self.sandboxes.terminals.get(sandbox_id, session_id)
            if terminal is None:
                raise NotFound(f"PTY session {session_id} not found")
            yield terminal

    def _start_error(self, sandbox_id: str, command: str, cwd: str | None) -> str | None:
        """Why the command cannot start in the sandbox, as the hosted agent says it (None: it can)."""
        return start_error(self.runtime.files(sandbox_id), command, cwd or SANDBOX_HOME)

    def _session(self, sandbox_id: str, session_id: str) -> ExecSession:
        session = self.exec_sessions.get(sandbox_id, session_id)
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


def _no_build_log(step: int, step_type: str, message: str) -> None:
    """Where the build log of a create that nobody streams goes."""
