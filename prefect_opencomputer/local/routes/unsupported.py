"""Service routes the local server does not implement: a clear 501, never a silent fake success."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, WebSocket

from prefect_opencomputer.local.errors import BackendError, Unsupported

router = APIRouter()

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

# (path under /api, what the error message calls it)
_UNSUPPORTED: list[tuple[str, str]] = [
    ("/sandboxes/{sandbox_id}/pty", "PTY sessions"),
    ("/sandboxes/{sandbox_id}/pty/{rest:path}", "PTY sessions"),
    ("/sandboxes/{sandbox_id}/scale", "scaling"),
    ("/sandboxes/{sandbox_id}/autoscale", "autoscaling"),
    ("/sandboxes/{sandbox_id}/scaling-lock", "the scaling lock"),
    ("/sandboxes/{sandbox_id}/reboot", "reboot"),
    ("/sandboxes/{sandbox_id}/power-cycle", "power cycle"),
    ("/sandboxes/{sandbox_id}/migrate", "migration"),
    ("/sandboxes/{sandbox_id}/limits", "resource limits"),
    ("/sandboxes/{sandbox_id}/mounts", "mounts"),
    ("/sandboxes/{sandbox_id}/mounts/{rest:path}", "mounts"),
    ("/sandboxes/{sandbox_id}/agent", "the agent"),
    ("/sandboxes/{sandbox_id}/agent/{rest:path}", "the agent"),
    ("/sandboxes/{sandbox_id}/logs", "sandbox logs"),
    ("/sandboxes/{sandbox_id}/allowed-hosts", "allowed hosts"),
    ("/sandboxes/{sandbox_id}/token/refresh", "token refresh"),
    ("/sandboxes/checkpoints/{checkpoint_id}/publish", "publishing checkpoints"),
    ("/sandboxes/checkpoints/{checkpoint_id}/unpublish", "publishing checkpoints"),
    ("/images/{name}/patches", "image patches (use /snapshots/{name}/patches)"),
    ("/images/{name}/patches/{rest:path}", "image patches (use /snapshots/{name}/patches)"),
    ("/secret-stores", "secret stores"),
    ("/secret-stores/{rest:path}", "secret stores"),
    ("/secrets", "secrets"),
    ("/secrets/{rest:path}", "secrets"),
    ("/templates", "templates"),
    ("/templates/{rest:path}", "templates"),
    ("/webhooks", "webhooks"),
    ("/webhooks/{rest:path}", "webhooks"),
]


def _refuse(what: str) -> BackendError:
    return Unsupported(f"{what} is not supported by the local server")


def _http_endpoint(what: str) -> Callable[[], Awaitable[None]]:
    async def not_supported() -> None:
        raise _refuse(what)

    return not_supported


def _websocket_endpoint(what: str) -> Callable[[WebSocket], Awaitable[None]]:
    async def not_supported(websocket: WebSocket) -> None:
        raise _refuse(what)

    return not_supported


for _path, _what in _UNSUPPORTED:
    router.add_api_route(_path, _http_endpoint(_what), methods=_METHODS, include_in_schema=False)
    router.add_api_websocket_route(_path, _websocket_endpoint(_what))
