"""Sandbox lifecycle routes: create, get, list, kill, idle timeout, hibernate/wake and tags."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Mapping

from prefect_opencomputer.client._errors import NotFoundError, TransportError
from prefect_opencomputer.client._images import Image
from prefect_opencomputer.client._models import Sandbox, SandboxTags, TagKey
from prefect_opencomputer.client._sse import (
    BUILD_STREAM_READ_TIMEOUT,
    EVENT_STREAM,
    BuildLogHandler,
    read_build_stream,
)
from prefect_opencomputer.client._transport import RouteGroup

# The service polls up to 30 s for worker capacity before it answers a create.
_CREATE_TIMEOUT = 90.0
# Tag look-ups in flight at once when a list arrives without tags (the hosted front door's shape).
_TAG_LOOKUPS = 8


class Sandboxes(RouteGroup):
    """`client.sandboxes`: the sandboxes of the organisation the API key belongs to."""

    async def create(
        self,
        template: str = "base",
        timeout: int = 300,
        envs: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        memory_mb: int | None = None,
        preview_auth: Mapping[str, str] | None = None,
        image: Image | None = None,
        snapshot: str | None = None,
        on_build_log: BuildLogHandler | None = None,
        cpu_count: int | None = None,
        disk_mb: int | None = None,
    ) -> Sandbox:
        """Start a sandbox; `timeout` is the rolling idle timeout in seconds (0 = never hibernate).

        With `image`, the service builds it (or finds it in its cache) and forks the sandbox from the build;
        with `snapshot`, it forks the named snapshot. Either way its build log lines go to `on_build_log` (it
        may be async) while they happen, a failing build raises `BuildFailedError`, and the checkpoint's
        patches run before this returns.

        `preview_auth={"token": "auto"}` gates preview URLs behind a bearer token, returned once as
        `Sandbox.preview_auth_token`. `cpu_count` must match a tier of `memory_mb` (1024/4096 -> 1,
        8192 -> 2, 16384 -> 4); send `memory_mb` too, since the hosted path derives the CPUs from it.
        `disk_mb` is at least 20480. Never retried after it may have reached the service: a replay could
        start a second sandbox.
        """
        body: dict[str, object] = {
            "templateID": template,
            "timeout": timeout,
            **new_sandbox_body(envs, metadata, memory_mb),
        }
        if cpu_count is not None:
            body["cpuCount"] = cpu_count
        if disk_mb is not None:
            body["diskMB"] = disk_mb
        if preview_auth is not None:
            body["previewAuth"] = {
                "scheme": preview_auth.get("scheme", "bearer"),
                "token": preview_auth.get("token", "auto"),
            }
        built = image is not None or snapshot is not None
        if image is not None:
            body["image"] = image.to_dict()
        if snapshot is not None:
            body["snapshot"] = snapshot
        try:
            if built:
                payload = await self._create_streamed(body, on_build_log)
            else:
                response = await self._transport.request(
                    "POST", "/sandboxes", json=body, timeout=max(self._transport.timeout, _CREATE_TIMEOUT)
                )
                payload = response.json()
        except TransportError as exc:
            raise sandbox_may_exist(exc, "create") from exc
        sandbox = Sandbox.model_validate(payload)
        if built:
            # Like a fork, a sandbox started from an image or snapshot ignores the requested idle timeout.
            await self.set_timeout(sandbox.sandbox_id, timeout)
        # The control plane's create answer omits what we asked for; fill it in rather than report blanks.
        filled: dict[str, object] = {}
        if not sandbox.template:
            filled["template"] = template if image is None else image.base_image
        if sandbox.memory_mb is None and memory_mb is not None:
            filled["memory_mb"] = memory_mb
        if sandbox.cpu_count is None and cpu_count is not None:
            filled["cpu_count"] = cpu_count
        return sandbox.model_copy(update=filled) if filled else sandbox

    async def _create_streamed(
        self, body: Mapping[str, object], on_build_log: BuildLogHandler | None
    ) -> dict[str, object]:
        async with self._transport.stream(
            "POST",
            "/sandboxes",
            json=body,
            headers={"Accept": EVENT_STREAM},
            read_timeout=max(self._transport.timeout, BUILD_STREAM_READ_TIMEOUT),
        ) as response:
            return await read_build_stream(response, on_build_log, what="sandbox create")

    async def get(self, sandbox_id: str) -> Sandbox:
        """The sandbox's current state; a killed sandbox is still found, with status "stopped"."""
        response = await self._transport.request("GET", f"/sandboxes/{sandbox_id}")
        return Sandbox.model_validate(response.json())

    async def list(self, status: str | None = "running") -> builtins.list[Sandbox]:
        """The organisation's sandboxes with `status` (None: all that the service lists), with tags.

        The control plane lists running sandboxes only; the hosted front door lists every status (up to
        200, newest first) without tags. Filtering here and fetching missing tags makes both the same.
        """
        response = await self._transport.request("GET", "/sandboxes")
        items = [item for item in response.json() or [] if isinstance(item, dict)]
        listed = [Sandbox.model_validate(item) for item in items]
        untagged = {sb.sandbox_id for sb, item in zip(listed, items, strict=True) if "tags" not in item}
        chosen = [sb for sb in listed if status is None or sb.status == status]
        limit = asyncio.Semaphore(_TAG_LOOKUPS)

        async def with_tags(sandbox: Sandbox) -> Sandbox | None:
            if sandbox.sandbox_id not in untagged or sandbox.status not in ("running", "hibernated"):
                return sandbox
            async with limit:
                try:
                    tags = await self.get_tags(sandbox.sandbox_id)
                except NotFoundError:
                    return None  # gone between the list and the look-up
            return sandbox.model_copy(
                update={"tags": tags.tags, "tags_last_updated_at": tags.tags_last_updated_at}
            )

        found = await asyncio.gather(*(with_tags(sb) for sb in chosen))
        return [sb for sb in found if sb is not None]

    async def is_running(self, sandbox_id: str) -> bool:
        """Whether the sandbox is running now (hibernated, stopped or unknown: False)."""
        try:
            return (await self.get(sandbox_id)).is_running
        except NotFoundError:
            return False

    async def kill(self, sandbox_id: str) -> None:
        """Stop the sandbox and delete its preview URLs; killing a stopped sandbox succeeds."""
        await self._transport.request("DELETE", f"/sandboxes/{sandbox_id}")

    async def set_timeout(self, sandbox_id: str, timeout: int) -> None:
        """Replace the rolling idle timeout (seconds; 0 = persistent); wakes a hibernated sandbox."""
        await self._transport.request(
            "POST", f"/sandboxes/{sandbox_id}/timeout", json={"timeout": timeout}, replayable=True
        )

    async def hibernate(self, sandbox_id: str) -> Sandbox:
        """Stop the sandbox's processes but keep its disk; idempotent."""
        response = await self._transport.request(
            "POST", f"/sandboxes/{sandbox_id}/hibernate", replayable=True
        )
        return Sandbox.model_validate(response.json())

    async def wake(self, sandbox_id: str, timeout: int | None = None) -> Sandbox:
        """Resume a hibernated sandbox (any data call also does); idempotent on a running one."""
        body = {} if timeout is None else {"timeout": timeout}
        response = await self._transport.request(
            "POST", f"/sandboxes/{sandbox_id}/wake", json=body, replayable=True
        )
        return Sandbox.model_validate(response.json())

    async def get_tags(self, sandbox_id: str) -> SandboxTags:
        response = await self._transport.request("GET", f"/sandboxes/{sandbox_id}/tags")
        return SandboxTags.model_validate(response.json())

    async def set_tags(self, sandbox_id: str, tags: Mapping[str, str]) -> SandboxTags:
        """Replace all tags of the sandbox (`{}` clears them)."""
        response = await self._transport.request("PUT", f"/sandboxes/{sandbox_id}/tags", json=dict(tags))
        return SandboxTags.model_validate(response.json())

    async def tag_keys(self) -> builtins.list[TagKey]:
        """Every tag key in use in the organisation, with how many sandboxes and values it has."""
        response = await self._transport.request("GET", "/tags")
        payload = response.json() or {}
        return [TagKey.model_validate(item) for item in payload.get("keys") or []]


def sandbox_may_exist(exc: TransportError, action: str) -> TransportError:
    """A create or fork that may have reached the service cannot be replayed; say so in the error."""
    if not exc.ambiguous:
        return exc
    return TransportError(
        f"sandbox {action} failed mid-request; the sandbox may exist and keep running "
        f"(find it with sandboxes.list() and kill it): {exc}",
        ambiguous=True,
    )


def new_sandbox_body(
    envs: Mapping[str, str] | None, metadata: Mapping[str, str] | None, memory_mb: int | None
) -> dict[str, object]:
    """What a create and a fork both say of the new sandbox, as the wire spells it (unset: left out)."""
    body: dict[str, object] = {}
    if envs:
        body["envs"] = dict(envs)
    if metadata:
        body["metadata"] = dict(metadata)
    if memory_mb is not None:
        body["memoryMB"] = memory_mb
    return body
