"""The local server inside the caller's process: ``with LocalServer() as server:``.

uvicorn runs in a background thread with its own event loop, so the caller may be synchronous or
async (its loop is never blocked by the server's work). On exit every sandbox stops: no process,
no mount is left behind, and a temporary data directory is removed.
"""

from __future__ import annotations

import asyncio
import atexit
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import anyio.to_thread
import uvicorn
from fastapi import FastAPI

from prefect_opencomputer.local.backend.sandboxes import prepare_host
from prefect_opencomputer.local.config import LocalServerConfig
from prefect_opencomputer.local.serve import (
    LocalServerError,
    bind_socket,
    build_server,
    prepare_data_dir,
    serve,
)

_STARTUP_TIMEOUT_SECONDS = 60.0
_STOP_TIMEOUT_SECONDS = 30.0


def new_api_key() -> str:
    """A random key in the hosted service's format (``osb_`` + 64 hex)."""
    return "osb_" + secrets.token_hex(32)


class LocalServer:
    """An OpenComputer-compatible server on a loopback port, for as long as the ``with`` block runs.

    Example:
        ```python
        with LocalServer() as server:
            os.environ["OPENCOMPUTER_API_URL"] = server.url
            os.environ["OPENCOMPUTER_API_KEY"] = server.api_key
        ```
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        enable_test_routes: bool = False,
        preview_domain: str = "",
        limits: bool = True,
        max_running_sandboxes: int = 50,
        max_disk_mb: int | None = None,
        allow_host_ports: Sequence[int] = (),
    ) -> None:
        self._requested_data_dir = data_dir
        self._allow_host_ports = tuple(allow_host_ports)
        self._limits = limits
        self._max_running_sandboxes = max_running_sandboxes
        self._max_disk_mb = max_disk_mb
        self._requested_port = port
        self._host = host
        self._enable_test_routes = enable_test_routes
        self._preview_domain = preview_domain
        self.api_key = api_key or new_api_key()
        self._config: LocalServerConfig | None = None
        self._temporary_dir: Path | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = f"url={self.url!r}" if self._thread is not None else "stopped"
        return f"LocalServer({state})"

    # -- what callers read -----------------------------------------------------------------

    @property
    def config(self) -> LocalServerConfig:
        """The running (or last run) server's settings, its bound port included."""
        if self._config is None:
            raise RuntimeError("the local server has not been started")
        return self._config

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def url(self) -> str:
        config = self.config
        host = f"[{config.host}]" if ":" in config.host else config.host
        return f"http://{host}:{config.port}"

    @property
    def api_url(self) -> str:
        return self.url + "/api"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LocalServer:
        """Start serving; returns once the server answers requests."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the local server is already running")
            data_dir = self._requested_data_dir
            if data_dir is None:
                self._temporary_dir = Path(tempfile.mkdtemp(prefix="opencomputer-local-"))
                data_dir = self._temporary_dir
            try:
                data_dir = prepare_data_dir(data_dir)
                prepare_host(self._config_for(data_dir, port=0), progress=_say)
                self._launch(data_dir)
            except BaseException:
                self._cleanup()
                raise
            atexit.register(self.stop)
            return self

    def _config_for(self, data_dir: Path, *, port: int) -> LocalServerConfig:
        return LocalServerConfig(
            data_dir=data_dir,
            api_key=self.api_key,
            host=self._host,
            port=port,
            preview_domain=self._preview_domain,
            enable_test_routes=self._enable_test_routes,
            limits=self._limits,
            max_running_sandboxes=self._max_running_sandboxes,
            max_disk_mb=self._max_disk_mb,
            allow_host_ports=self._allow_host_ports,
        )

    def _launch(self, data_dir: Path) -> None:
        sock = bind_socket(self._host, self._requested_port)
        try:
            config = self._config_for(data_dir, port=sock.getsockname()[1])
            server, app = build_server(config, access_log=False, log_config=None)
        except BaseException:
            sock.close()
            raise
        self._config, self._server = config, server
        self._thread = threading.Thread(
            target=self._run, args=(server, app, sock), name="opencomputer-local-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _STARTUP_TIMEOUT_SECONDS
        while not server.started:
            if not self._thread.is_alive():
                failure = self._failure
                if isinstance(failure, LocalServerError):
                    raise failure
                raise LocalServerError(f"the local server failed to start: {failure!r}") from failure
            if time.monotonic() > deadline:
                seconds = f"{_STARTUP_TIMEOUT_SECONDS:.0f}s"
                raise LocalServerError(f"the local server did not start within {seconds}")
            time.sleep(0.005)

    def _run(self, server: uvicorn.Server, app: FastAPI, sock: socket.socket) -> None:
        try:
            with asyncio.Runner() as runner:
                runner.run(serve(server, app, sock))
        except BaseException as exc:  # reported by start(); a thread cannot raise to its caller
            self._failure = exc

    def stop(self) -> None:
        """Stop serving and stop every sandbox (idempotent)."""
        with self._lock:
            atexit.unregister(self.stop)
            self._cleanup()

    def _cleanup(self) -> None:
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(_STOP_TIMEOUT_SECONDS)
            if thread.is_alive():
                server.force_exit = True
                thread.join(_STOP_TIMEOUT_SECONDS)
        self._server = self._thread = None
        if self._temporary_dir is not None:
            shutil.rmtree(self._temporary_dir, ignore_errors=True)
            self._temporary_dir = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LocalServer:
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await anyio.to_thread.run_sync(self.stop, abandon_on_cancel=False)


def _say(line: str) -> None:
    """First-run progress (the root filesystem build) for whoever started the server."""
    print(f"local server: {line}", file=sys.stderr, flush=True)
