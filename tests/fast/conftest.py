"""The fast tier: the real app and backend over real HTTP, on the stand-in runtime (no root needed).

One server per session, in a thread of its own like `LocalServer`'s, replacing the session-wide
``local_server`` of the suite's root conftest for the tests below this directory: the ``http``,
``oc`` and ``sandbox`` fixtures there then talk to it.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from prefect_opencomputer.local.app import create_app
from prefect_opencomputer.local.backend.service import LocalBackend
from prefect_opencomputer.local.config import LocalServerConfig
from prefect_opencomputer.local.protocols import RefusableWebSocketProtocol, TrackedH11Protocol
from prefect_opencomputer.local.serve import bind_socket
from tests.fast.standin import StandinRuntime

_START_SECONDS = 30.0


@dataclass(frozen=True)
class FastServer:
    """What the suite's fixtures read of a server: where it answers and its key."""

    url: str
    api_key: str
    data_dir: Path
    backend: LocalBackend

    @property
    def api_url(self) -> str:
        return self.url + "/api"


def fast_config(data_dir: Path, **overrides: object) -> LocalServerConfig:
    """A test server's config: test routes on, a fresh key, limits off (the stand-in has none)."""
    options: dict[str, object] = {
        "data_dir": data_dir,
        "api_key": secrets.token_hex(16),
        "enable_test_routes": True,
        "limits": False,
        **overrides,
    }
    return LocalServerConfig(**options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def local_server() -> Iterator[FastServer]:
    """The OpenComputer-compatible server on the stand-in runtime, with the test control routes on."""
    data_dir = Path(tempfile.mkdtemp(prefix="opencomputer-fast-"))
    sock = bind_socket("127.0.0.1", 0)
    config = fast_config(data_dir, port=sock.getsockname()[1])
    backend = LocalBackend(config, StandinRuntime(data_dir / "runtime"))
    app = create_app(backend, config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http=TrackedH11Protocol,
            ws=RefusableWebSocketProtocol,
            lifespan="on",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=3,
        )
    )
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=run, name="fast-local-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_SECONDS
    while not server.started:
        assert thread.is_alive(), f"the fast server did not start: {failure}"
        assert time.monotonic() < deadline, "the fast server did not start in time"
        time.sleep(0.01)
    try:
        yield FastServer(f"http://127.0.0.1:{config.port}", config.api_key, data_dir, backend)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
async def created(http: httpx.AsyncClient) -> AsyncIterator[list[str]]:
    """Sandbox ids a test creates itself; all killed afterwards."""
    ids: list[str] = []
    yield ids
    for sandbox_id in ids:
        await http.delete(f"/sandboxes/{sandbox_id}")
