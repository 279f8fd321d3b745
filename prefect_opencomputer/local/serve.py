"""Running the local server under uvicorn: shared by ``prefect-opencomputer local serve`` and `LocalServer`.

Everything a person can get wrong (a busy port, a read-only data dir, a missing host tool) is checked
before uvicorn starts and raised as one readable sentence.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from prefect_opencomputer.local.app import create_app
from prefect_opencomputer.local.backend.sandboxes import prepare_host
from prefect_opencomputer.local.backend.service import LocalBackend
from prefect_opencomputer.local.config import LocalServerConfig
from prefect_opencomputer.local.log_limits import limit_server_logs
from prefect_opencomputer.local.private_files import make_private_dir
from prefect_opencomputer.local.protocols import RefusableWebSocketProtocol, TrackedH11Protocol
from prefect_opencomputer.local.sandbox.factory import build_runtime

# Let in-flight requests finish on shutdown, but never hang a test run or a Ctrl-C.
_GRACEFUL_SHUTDOWN_SECONDS = 3
# Clients pause between calls (polling a checkpoint, a flow between tasks); a closed idle
# connection then races their next request.
_KEEP_ALIVE_SECONDS = 60
# After a stop signal the process exits within this long, whatever a sandbox or a stuck system call
# does: past the checkpoint copies' own grace (30 s), what is left is a crash that the next start
# recovers from (state is committed with fsync; unfinished checkpoints end failed).
STOP_DEADLINE_SECONDS = 45.0
# The API key, or a sandbox's token (the PTY socket takes ``?token=``), in a logged URL.
_API_KEY_IN_TEXT = re.compile(r"((?:api_key|token)=)[^&\s\"']*", re.IGNORECASE)


class LocalServerError(RuntimeError):
    """The local server cannot start, for a reason the person running it can fix."""


def prepare_data_dir(data_dir: Path) -> Path:
    """Create the data directory private (0700, forced on an existing one) and prove it is writable."""
    data_dir = data_dir.expanduser().resolve()
    probe = data_dir / ".write-probe"
    try:
        make_private_dir(data_dir)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LocalServerError(f"data directory {data_dir} is not writable: {exc.strerror or exc}") from exc
    return data_dir


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0 = a free one), bound before the server exists."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # An explicit IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # every keep-alive request waits out a delayed ACK (about 40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise LocalServerError(f"port {port} on {host} is already in use") from exc
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
            raise LocalServerError(f"cannot listen on {host}: no such local address") from exc
        if exc.errno == errno.EACCES:
            raise LocalServerError(f"not allowed to listen on port {port} (a privileged port)") from exc
        raise LocalServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(False)
    return sock


class ApiKeyLogFilter(logging.Filter):
    """Scrubs ``api_key=...`` from log lines: uvicorn logs request paths with their query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Scrub each argument in place: uvicorn's access formatter unpacks them positionally.
        if isinstance(record.args, tuple):
            record.args = tuple(_scrub(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _scrub(value) for key, value in record.args.items()}
        record.msg = _scrub(record.msg)
        return True


def _scrub(value: object) -> object:
    if isinstance(value, str) and ("api_key=" in value.lower() or "token=" in value.lower()):
        return _API_KEY_IN_TEXT.sub(r"\1***", value)
    return value


def scrub_api_keys_from_uvicorn_logs() -> None:
    """Install `ApiKeyLogFilter` on uvicorn's loggers (idempotent)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, ApiKeyLogFilter) for existing in logger.filters):
            logger.addFilter(ApiKeyLogFilter())


class _Server(uvicorn.Server):
    """uvicorn's server, minus its habit of re-raising the stop signal once shut down.

    After a clean shutdown on Ctrl-C or SIGTERM, the process should exit normally, not die by the
    signal (or print a KeyboardInterrupt traceback); if the shutdown is not over within
    `STOP_DEADLINE_SECONDS`, the process exits anyway.
    """

    _deadline: threading.Thread | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        stop_signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._request_exit) for sig in stop_signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _request_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C stops waiting for open connections
        self.should_exit = True
        if self._deadline is None:
            self._deadline = threading.Thread(target=_exit_after_deadline, name="stop-deadline", daemon=True)
            self._deadline.start()


def _exit_after_deadline() -> None:
    time.sleep(STOP_DEADLINE_SECONDS)
    logging.getLogger("prefect_opencomputer.local").error(
        "shutdown did not finish within %.0f s; exiting now", STOP_DEADLINE_SECONDS
    )
    os._exit(1)


@dataclass(frozen=True)
class PreparedServer:
    """A server ready to serve and not yet serving: the host checked, the socket bound, the app built."""

    config: LocalServerConfig  # as served: its data dir resolved, its port the one bound
    host_report: str  # the limits and disks lines of the start-up output
    server: uvicorn.Server
    app: FastAPI
    sock: socket.socket

    async def serve(self) -> None:
        """Serve until the server is told to exit; the socket is closed afterwards."""
        try:
            await self.server.serve(sockets=[self.sock])
        except SystemExit as exc:
            # uvicorn exits the process when the app's startup fails; report why instead.
            reason = getattr(self.app.state, "startup_error", None)
            raise LocalServerError(f"the local server failed to start: {reason or exc}") from reason
        finally:
            self.sock.close()


def prepare_server(
    config: LocalServerConfig,
    *,
    progress: Callable[[str], None],
    access_log: bool,
    log_config: dict[str, Any] | None,
) -> PreparedServer:
    """The one start sequence, of ``local serve`` and `LocalServer` alike: a private data dir, the host
    ready for sandboxes, the port bound, then the backend and its app.

    The host is prepared before the port is bound: a first run builds a root filesystem for minutes, and
    clients must not queue on a port that does not answer. ``progress`` hears about that build;
    ``log_config=None`` leaves logging alone. Raises `LocalServerError` or `RuntimeUnavailable` with a
    sentence the person starting the server can act on.
    """
    config = replace(config, data_dir=prepare_data_dir(config.data_dir))
    # The sandbox runtime's host setup, and below the backend, are made here only, for both start paths.
    host_report = prepare_host(config, progress=progress)
    sock = bind_socket(config.host, config.port)
    try:
        config = replace(config, port=sock.getsockname()[1])
        backend = LocalBackend(config, build_runtime(config))
        app = create_app(backend, config)
        server = _uvicorn_server(app, config, access_log=access_log, log_config=log_config)
    except BaseException:
        sock.close()
        raise
    return PreparedServer(config, host_report, server, app, sock)


def _uvicorn_server(
    app: FastAPI, config: LocalServerConfig, *, access_log: bool, log_config: dict[str, Any] | None
) -> uvicorn.Server:
    uvicorn_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        http=TrackedH11Protocol,
        ws=RefusableWebSocketProtocol,
        lifespan="on",
        access_log=access_log,
        log_config=log_config,
        server_header=False,
        # Nothing sits in front of this server: a client's X-Forwarded-For must not become its address.
        proxy_headers=False,
        timeout_keep_alive=_KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
    )
    scrub_api_keys_from_uvicorn_logs()
    limit_server_logs()
    return _Server(uvicorn_config)
