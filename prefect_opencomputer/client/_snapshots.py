"""Snapshot routes: named, pre-built images that sandboxes start from (`sandboxes.create(snapshot=name)`)."""

from __future__ import annotations

import asyncio
import builtins
import time
from urllib.parse import quote

from prefect_opencomputer.client._errors import NotFoundError, SnapshotFailedError, TransportError
from prefect_opencomputer.client._images import Image
from prefect_opencomputer.client._models import Snapshot
from prefect_opencomputer.client._sse import (
    BUILD_STREAM_READ_TIMEOUT,
    EVENT_STREAM,
    BuildLogHandler,
    read_build_stream,
)
from prefect_opencomputer.client._transport import RouteGroup


class Snapshots(RouteGroup):
    """`client.snapshots`: build an image once under a name, then start any number of sandboxes from it."""

    async def create(self, name: str, image: Image, on_build_log: BuildLogHandler | None = None) -> Snapshot:
        """Build `image` (or reuse its cached build) and keep it as snapshot `name`; returns it ready.

        Build log lines go to `on_build_log` as they arrive (it may be async). A failing step raises
        `BuildFailedError`; a taken name raises `ConflictError`. A request that may have reached the service
        is reconciled by name (names are unique), never replayed.
        """
        try:
            async with self._transport.stream(
                "POST",
                "/snapshots",
                json={"name": name, "image": image.to_dict()},
                headers={"Accept": EVENT_STREAM},
                read_timeout=max(self._transport.timeout, BUILD_STREAM_READ_TIMEOUT),
            ) as response:
                result = await read_build_stream(response, on_build_log, what=f"snapshot {name!r}")
        except TransportError as exc:
            if not exc.ambiguous:
                raise
            try:
                return await self.wait_ready(name)
            except NotFoundError:
                raise exc from None
        return Snapshot.model_validate(result)

    async def list(self) -> builtins.list[Snapshot]:
        """The organisation's named snapshots, whatever their status."""
        response = await self._transport.request("GET", "/snapshots")
        return [Snapshot.model_validate(item) for item in response.json() or []]

    async def get(self, name: str) -> Snapshot:
        response = await self._transport.request("GET", f"/snapshots/{_segment(name)}")
        return Snapshot.model_validate(response.json())

    async def delete(self, name: str) -> None:
        """Forget the name; sandboxes started from the snapshot keep running (404 raises `NotFoundError`)."""
        await self._transport.request("DELETE", f"/snapshots/{_segment(name)}")

    async def wait_ready(self, name: str, timeout: float = 600, poll_interval: float = 1.0) -> Snapshot:
        """Poll until the snapshot is "ready"; raises `SnapshotFailedError` when its build failed."""
        deadline = time.monotonic() + timeout
        while True:
            snapshot = await self.get(name)
            if snapshot.status == "ready":
                return snapshot
            if snapshot.status == "failed":
                raise SnapshotFailedError(snapshot)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"snapshot {name!r} is still {snapshot.status} after {timeout}s")
            await asyncio.sleep(poll_interval)


def _segment(name: str) -> str:
    return quote(name, safe="")
