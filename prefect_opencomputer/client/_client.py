"""`OpenComputerClient`: one connection pool, and the resource namespaces that share it."""

from __future__ import annotations

from typing import Self

from prefect_opencomputer.client._checkpoints import Checkpoints
from prefect_opencomputer.client._exec import Exec
from prefect_opencomputer.client._files import Files
from prefect_opencomputer.client._patches import Patches
from prefect_opencomputer.client._previews import Previews
from prefect_opencomputer.client._sandboxes import Sandboxes
from prefect_opencomputer.client._snapshots import Snapshots
from prefect_opencomputer.client._transport import (
    RetryPolicy,
    Transport,
    resolve_api_base,
    resolve_api_key,
)
from prefect_opencomputer.client._usage import Usage


class OpenComputerClient:
    """Async client of the OpenComputer API (the hosted service or a compatible local server).

    `api_key` and `api_url` fall back to `OPENCOMPUTER_API_KEY` / `OPENCOMPUTER_API_URL`; `/api` is appended
    to the URL unless it is already there. `timeout` is the default per-request timeout in seconds (command
    runs, creates and forks extend it as they need). Use it as `async with OpenComputerClient() as oc:`,
    or call `aclose()`.
    """

    def __init__(
        self,
        api_key: str | None = None,
        api_url: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._transport = Transport(
            api_key=resolve_api_key(api_key),
            api_base=resolve_api_base(api_url),
            timeout=timeout,
            retry=retry or RetryPolicy(),
        )
        self.sandboxes = Sandboxes(self._transport)
        self.exec = Exec(self._transport)
        self.files = Files(self._transport)
        self.checkpoints = Checkpoints(self._transport, self.sandboxes)
        self.patches = Patches(self._transport)
        self.previews = Previews(self._transport)
        self.snapshots = Snapshots(self._transport)
        self.usage = Usage(self._transport)

    @property
    def api_base(self) -> str:
        """The base URL every route hangs off, ending in `/api`."""
        return self._transport.api_base

    def __repr__(self) -> str:
        return f"OpenComputerClient(api_base={self.api_base!r})"

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
