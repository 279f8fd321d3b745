"""Checkpoint routes: create (with reconciliation), list, wait, restore, delete and fork."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Mapping
from typing import Literal

from prefect_opencomputer.client._errors import (
    CheckpointFailedError,
    ConflictError,
    NotFoundError,
    TransportError,
)
from prefect_opencomputer.client._models import Checkpoint, CheckpointRestore, RetentionPolicy, Sandbox
from prefect_opencomputer.client._sandboxes import Sandboxes, new_sandbox_body, sandbox_may_exist
from prefect_opencomputer.client._transport import RouteGroup, Transport

# Pending patches run synchronously inside the fork request, each with a 300 s budget.
_FORK_TIMEOUT = 330.0


class Checkpoints(RouteGroup):
    """`client.checkpoints`: named snapshots of a sandbox, and new sandboxes forked from them."""

    def __init__(self, transport: Transport, sandboxes: Sandboxes) -> None:
        super().__init__(transport)
        self._sandboxes = sandboxes

    async def create(
        self,
        sandbox_id: str,
        name: str,
        kind: Literal["full", "disk_only"] = "full",
        retention: RetentionPolicy | None = None,
    ) -> Checkpoint:
        """Start a checkpoint of a running sandbox; it is "processing" until `wait_ready` says otherwise.

        ``kind`` is stored and answered as given: on the hosted service a `full` checkpoint keeps the
        sandbox's memory and disk (its forks and restores resume running processes) and a `disk_only`
        one its disk; the local server keeps the disk for both.

        A request that may have reached the service is reconciled, not replayed: names are unique per
        sandbox, so the checkpoint is looked up by name, and created again only if it is not there.
        """
        body: dict[str, object] = {"name": name, "kind": kind}
        if retention is not None:
            body["retentionPolicy"] = retention.model_dump(by_alias=True, exclude_none=True)
        try:
            return await self._post(sandbox_id, body)
        except TransportError as exc:
            if not exc.ambiguous:
                raise
            first_failure = exc
        if (existing := await self._find_by_name(sandbox_id, name)) is not None:
            return existing
        try:
            return await self._post(sandbox_id, body)
        except (ConflictError, TransportError) as exc:
            # A conflict means the first request did land after all (it committed after our lookup).
            if isinstance(exc, TransportError) and not exc.ambiguous:
                raise
            if (existing := await self._find_by_name(sandbox_id, name)) is not None:
                return existing
            raise exc from first_failure

    async def list(self, sandbox_id: str) -> builtins.list[Checkpoint]:
        """The sandbox's checkpoints, newest first, whatever their status."""
        response = await self._transport.request("GET", f"/sandboxes/{sandbox_id}/checkpoints")
        return [Checkpoint.model_validate(item) for item in response.json() or []]

    async def wait_ready(
        self,
        sandbox_id: str,
        checkpoint_id: str,
        timeout: float = 300,
        poll_interval: float = 0.2,
    ) -> Checkpoint:
        """Poll until the checkpoint is "ready" (the service has no single-checkpoint route).

        Raises `CheckpointFailedError` when it fails, `NotFoundError` when it disappears and `TimeoutError`
        when it is still processing after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            checkpoint = next(
                (cp for cp in await self.list(sandbox_id) if cp.id == checkpoint_id),
                None,
            )
            if checkpoint is None:
                raise NotFoundError(404, f"checkpoint {checkpoint_id} not found in sandbox {sandbox_id}")
            if checkpoint.status == "ready":
                return checkpoint
            if checkpoint.status == "failed":
                raise CheckpointFailedError(checkpoint)
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"checkpoint {checkpoint.name!r} ({checkpoint_id}) is still {checkpoint.status} "
                    f"after {timeout}s"
                )
            await asyncio.sleep(poll_interval)

    async def restore(self, sandbox_id: str, checkpoint_id: str) -> CheckpointRestore:
        """Revert the sandbox to a ready checkpoint in place; patches are not applied.

        On the local server the sandbox boots again over the checkpoint's disk: its processes start
        fresh (on the hosted service a `full` checkpoint's processes resume).
        """
        response = await self._transport.request(
            "POST", f"/sandboxes/{sandbox_id}/checkpoints/{checkpoint_id}/restore"
        )
        return CheckpointRestore.model_validate(response.json())

    async def delete(self, sandbox_id: str, checkpoint_id: str) -> None:
        """Delete the checkpoint and its patches; sandboxes forked from it keep running."""
        await self._transport.request("DELETE", f"/sandboxes/{sandbox_id}/checkpoints/{checkpoint_id}")

    async def fork(
        self,
        checkpoint_id: str,
        envs: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        memory_mb: int | None = None,
        timeout: int | None = None,
    ) -> Sandbox:
        """Boot a new sandbox from a checkpoint, running its patches before this returns.

        The fork holds the checkpoint's files, envs and size. On the hosted service a fork of a `full`
        checkpoint also resumes the processes that were running, with their memory; on the local
        server (and from a `disk_only` checkpoint) it boots fresh over the disk, with no process
        from before.

        A failing patch does not fail the fork: check `Sandbox.patch_error` on a later `get`. The service
        ignores a fork's idle timeout (forks start persistent), so a given `timeout` is applied afterwards.
        """
        body = new_sandbox_body(envs, metadata, memory_mb)
        if timeout is not None:
            body["timeout"] = timeout
        try:
            response = await self._transport.request(
                "POST",
                f"/sandboxes/from-checkpoint/{checkpoint_id}",
                json=body,
                timeout=max(self._transport.timeout, _FORK_TIMEOUT),
            )
        except TransportError as exc:
            raise sandbox_may_exist(exc, "fork") from exc
        sandbox = Sandbox.model_validate(response.json())
        if timeout is not None:
            await self._sandboxes.set_timeout(sandbox.sandbox_id, timeout)
        return sandbox

    async def _post(self, sandbox_id: str, body: Mapping[str, object]) -> Checkpoint:
        response = await self._transport.request("POST", f"/sandboxes/{sandbox_id}/checkpoints", json=body)
        return Checkpoint.model_validate(response.json())

    async def _find_by_name(self, sandbox_id: str, name: str) -> Checkpoint | None:
        return next((cp for cp in await self.list(sandbox_id) if cp.name == name), None)
