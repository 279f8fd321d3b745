"""Preview URL routes: public hostnames that route to a port of a sandbox."""

from __future__ import annotations

import builtins
from collections.abc import Mapping

from pydantic import JsonValue, SecretStr

from prefect_opencomputer.client._models import PreviewURL
from prefect_opencomputer.client._transport import RouteGroup


class Previews(RouteGroup):
    """`client.previews`: the preview URLs of a sandbox, at most one per port."""

    async def create(
        self,
        sandbox_id: str,
        port: int,
        domain: str | None = None,
        auth_config: Mapping[str, JsonValue] | None = None,
    ) -> PreviewURL:
        """Expose `port` of a running sandbox; asking again for the same port returns the existing URL."""
        body: dict[str, object] = {"port": port, "authConfig": dict(auth_config or {})}
        if domain:
            body["domain"] = domain
        # Idempotent per port on the service side, so a replay cannot create a second URL.
        response = await self._transport.request(
            "POST", f"/sandboxes/{sandbox_id}/preview", json=body, replayable=True
        )
        return PreviewURL.model_validate(response.json())

    async def list(self, sandbox_id: str) -> builtins.list[PreviewURL]:
        response = await self._transport.request("GET", f"/sandboxes/{sandbox_id}/preview")
        return [PreviewURL.model_validate(item) for item in response.json() or []]

    async def delete(self, sandbox_id: str, port: int) -> None:
        await self._transport.request("DELETE", f"/sandboxes/{sandbox_id}/preview/{port}")

    async def rotate_token(self, sandbox_id: str) -> SecretStr:
        """A new preview bearer token (the gate turns on if it was off); the old one stops working now.

        Not replayed: a lost answer would leave a token nobody holds (rotate again to recover).
        """
        response = await self._transport.request(
            "POST", f"/sandboxes/{sandbox_id}/preview/rotate", replayable=False
        )
        return SecretStr(str(response.json()["previewAuthToken"]))
