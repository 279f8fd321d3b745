"""Preview URLs: a stable hostname per sandbox port, and the token gate in front of them."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prefect_opencomputer.local.backend import preview_auth
from prefect_opencomputer.local.backend.records import PreviewRecord, new_token, new_uuid, utc_now
from prefect_opencomputer.local.errors import Invalid, NotFound, Stopped

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.core import SandboxCore


def preview_hostname(sandbox_id: str, port: int, domain: str) -> str:
    return f"{sandbox_id}-p{port}.{domain}"


class Previews:
    """Preview URL behaviour over the sandboxes core."""

    def __init__(self, backend: SandboxCore) -> None:
        self._backend = backend

    def create(
        self, sandbox_id: str, port: int, *, domain: str, auth_config: object
    ) -> tuple[PreviewRecord, bool]:
        """The preview URL of ``port``, created unless it exists; ``True`` when new."""
        if not 1 <= port <= 65535:
            raise Invalid("port must be between 1 and 65535")
        store = self._backend.store
        record = store.sandbox(sandbox_id)
        if record is None or record.status != "running":
            raise Invalid("sandbox is not running or not found")
        if domain:
            raise Invalid("org has no custom domain configured")
        existing = store.preview(sandbox_id, port)
        if existing is not None:
            return self._current(existing), False
        preview = PreviewRecord(
            id=new_uuid(),
            sandbox_id=sandbox_id,
            port=port,
            hostname=preview_hostname(sandbox_id, port, self._backend.config.effective_preview_domain),
            auth_config={} if auth_config is None else auth_config,
            created_at=utc_now(),
        )
        store.insert_preview(preview)
        return preview, True

    def for_sandbox(self, sandbox_id: str) -> list[PreviewRecord]:
        self._backend.sandbox(sandbox_id)
        return [self._current(preview) for preview in self._backend.store.previews(sandbox_id)]

    def delete(self, sandbox_id: str, port_text: str) -> None:
        try:
            port = int(port_text)
        except ValueError:
            port = 0
        if not 1 <= port <= 65535:
            raise Invalid("invalid port")
        if not self._backend.store.delete_previews(sandbox_id, port=port):
            raise NotFound("no preview URL for this port")

    def _current(self, preview: PreviewRecord) -> PreviewRecord:
        """The preview under today's domain: a restarted local server may listen on a new port."""
        domain = self._backend.config.effective_preview_domain
        preview.hostname = preview_hostname(preview.sandbox_id, preview.port, domain)
        return preview

    def rotate_token(self, sandbox_id: str) -> str:
        """A fresh preview token; the old one stops working at once."""
        record = self._backend.sandbox(sandbox_id)
        if record.status not in ("running", "hibernated"):
            raise Stopped(f"sandbox {sandbox_id} has been stopped")
        token = new_token()
        record.preview_auth_hash = preview_auth.digest(token)
        self._backend.store.save_sandbox(record)
        return token

    async def connect_preview(
        self, sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to ``port`` inside the sandbox, waking it if it hibernates.

        Raises `BackendError` 404/410 for unknown/stopped sandboxes and `OSError` (e.g.
        ``ConnectionRefusedError``) when nothing listens on the port.
        """
        async with self._backend.data_plane(sandbox_id):
            return await self._backend.open_connection(sandbox_id, port)

    def preview_access_allowed(self, sandbox_id: str, presented_token: str | None) -> bool:
        """Whether preview traffic may pass: no token gate on the sandbox, or the right token."""
        record = self._backend.store.sandbox(sandbox_id)
        if record is None or record.preview_auth_hash is None:
            return True
        return preview_auth.matches(record.preview_auth_hash, presented_token)

    def touch(self, sandbox_id: str) -> None:
        """Record preview traffic on a sandbox (restarts its idle timer)."""
        self._backend.touch(sandbox_id)
