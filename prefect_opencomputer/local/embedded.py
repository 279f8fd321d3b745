"""The local server inside the caller's process: ``with LocalServer() as server:``.

uvicorn runs in a background thread with its own event loop, so the caller may be synchronous or
async (its loop is never blocked by the server's work). On exit every sandbox stops: no process,
no mount is left behind, and a temporary data directory is removed.
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import anyio.to_thread
import uvicorn

from prefect_opencomputer.local.config import LocalServerConfig, new_api_key
from prefect_opencomputer.local.serve import LocalServerError, PreparedServer, prepare_server

_STARTUP_TIMEOUT_SECONDS = 60.0
_STOP_TIMEOUT_SECONDS = 30.0


class LocalServer:
    """An OpenComputer-compatible server on a loopback port, for as long as the ``with`` block runs.

    With no config: a temporary data directory (removed when the server stops), a random key, a free
    loopback port and every other setting at its default. Give a `LocalServerConfig` for anything else;
    its data directory is then the caller's, and outlives the server (a restart finds its state).

    Example:
        ```python
        with LocalServer() as server:
            os.environ["OPENCOMPUTER_API_URL"] = server.url
            os.environ["OPENCOMPUTER_API_KEY"] = server.api_key

        config = LocalServerConfig(data_dir=Path("state"), enable_test_routes=True)
        with LocalServer(config) as server:
            ...
        ```
    """

    def __init__(self, config: LocalServerConfig | None = None) -> None:
        self._requested_config = config
        self.api_key = config.api_key if config is not None else new_api_key()
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
        return self.config.url

    @property
    def api_url(self) -> str:
        return self.url + "/api"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LocalServer:
        """Start serving; returns once the server answers requests."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the local server is already running")
            config = self._requested_config
            if config is None:
                self._temporary_dir = Path(tempfile.mkdtemp(prefix="opencomputer-local-"))
                config = LocalServerConfig(data_dir=self._temporary_dir, api_key=self.api_key)
            try:
                self._launch(prepare_server(config, progress=_say, access_log=False, log_config=None))
            except BaseException:
                self._cleanup()
                raise
            atexit.register(self.stop)
            return self

    def _launch(self, prepared: PreparedServer) -> None:
        self._config, self._server = prepared.config, prepared.server
        self._thread = threading.Thread(
            target=self._run, args=(prepared,), name="opencomputer-local-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _STARTUP_TIMEOUT_SECONDS
        while not prepared.server.started:
            if not self._thread.is_alive():
                failure = self._failure
                if isinstance(failure, LocalServerError):
                    raise failure
                raise LocalServerError(f"the local server failed to start: {failure!r}") from failure
            if time.monotonic() > deadline:
                seconds = f"{_STARTUP_TIMEOUT_SECONDS:.0f}s"
                raise LocalServerError(f"the local server did not start within {seconds}")
            time.sleep(0.005)

    def _run(self, prepared: PreparedServer) -> None:
        try:
            with asyncio.Runner() as runner:
                runner.run(prepared.serve())
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
