"""File routes: read, write, list, mkdir, delete, signed URLs; the path travels as a query parameter."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterable

from prefect_opencomputer.client._errors import NotFoundError, ServerError
from prefect_opencomputer.client._models import FileEntry, SignedURL
from prefect_opencomputer.client._transport import RouteGroup


class Files(RouteGroup):
    """`client.files`: the filesystem of a sandbox; relative paths resolve against /home/sandbox."""

    async def read(self, sandbox_id: str, path: str) -> bytes:
        """The file's content; a missing file raises `NotFoundError`.

        The hosted service answers a missing file with a 500 whose message says "no such file"; that is
        mapped to `NotFoundError` (status kept) so callers handle one error whichever server they talk to.
        """
        try:
            response = await self._transport.request(
                "GET", f"/sandboxes/{sandbox_id}/files", params={"path": path}
            )
        except ServerError as error:
            if "no such file" not in error.message.lower():
                raise
            raise NotFoundError(
                error.status_code, error.message, code=error.code, method=error.method, path=error.path
            ) from error
        return response.content

    async def read_text(self, sandbox_id: str, path: str, encoding: str = "utf-8") -> str:
        return (await self.read(sandbox_id, path)).decode(encoding)

    async def write(self, sandbox_id: str, path: str, content: bytes | str | AsyncIterable[bytes]) -> None:
        """Create or replace the file, creating parent directories; a str is written as UTF-8.

        An async iterable is streamed without buffering, so it is sent once and never replayed.
        """
        body = content.encode() if isinstance(content, str) else content
        await self._transport.request(
            "PUT",
            f"/sandboxes/{sandbox_id}/files",
            params={"path": path},
            content=body,
        )

    async def list(self, sandbox_id: str, path: str) -> builtins.list[FileEntry]:
        response = await self._transport.request(
            "GET", f"/sandboxes/{sandbox_id}/files/list", params={"path": path}
        )
        return [FileEntry.model_validate(item) for item in response.json() or []]

    async def exists(self, sandbox_id: str, path: str) -> bool:
        """Whether a file or directory is at `path`, found by listing its parent (nothing is downloaded).

        The official SDK reads the whole file instead and says False for a directory.
        """
        parent, _, name = path.rstrip("/").rpartition("/")
        if not name:
            return True  # the root
        try:
            entries = await self.list(sandbox_id, parent or ("/" if path.startswith("/") else "."))
        except (NotFoundError, ServerError) as error:
            # A missing parent is a 500 "no such file" on the service (a 404 NotFoundError elsewhere).
            if isinstance(error, NotFoundError) or "no such file" in error.message.lower():
                return False
            raise
        return any(entry.name == name for entry in entries)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """Create the directory and its parents; an existing directory is fine."""
        await self._transport.request(
            "POST", f"/sandboxes/{sandbox_id}/files/mkdir", params={"path": path}, replayable=True
        )

    async def delete(self, sandbox_id: str, path: str) -> None:
        """Remove a file or a whole directory tree; a missing path is fine."""
        await self._transport.request("DELETE", f"/sandboxes/{sandbox_id}/files", params={"path": path})

    async def download_url(self, sandbox_id: str, path: str, expires_in: int = 3600) -> SignedURL:
        """A URL that reads the file without an API key until it expires (at most 24 h)."""
        return await self._signed_url(sandbox_id, "download-url", path, expires_in)

    async def upload_url(self, sandbox_id: str, path: str, expires_in: int = 3600) -> SignedURL:
        """A URL that accepts a PUT of the file's content without an API key until it expires."""
        return await self._signed_url(sandbox_id, "upload-url", path, expires_in)

    async def _signed_url(self, sandbox_id: str, kind: str, path: str, expires_in: int) -> SignedURL:
        # Signing has no side effect, so a replay is harmless.
        response = await self._transport.request(
            "POST",
            f"/sandboxes/{sandbox_id}/files/{kind}",
            json={"path": path, "expiresIn": expires_in},
            replayable=True,
        )
        return SignedURL.model_validate(response.json())
