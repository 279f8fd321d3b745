"""Service routes the local server does not implement: a clear 501, never a silent fake success.

A route about one sandbox, checkpoint or snapshot first answers 404 when that does not exist, as
the service would before it got to the part we do not do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, WebSocket
from starlette.requests import HTTPConnection

from prefect_opencomputer.local.backend.service import LocalBackend
from prefect_opencomputer.local.errors import BackendError, Unsupported

router = APIRouter()

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

# (path under /api, what the error message calls it)
_UNSUPPORTED: list[tuple[str, str]] = [
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
    ("/snapshots/{name}/publish", "publishing snapshots"),
    ("/snapshots/{name}/unpublish", "publishing snapshots"),
    ("/capacity/{rest:path}", "reserved capacity"),
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


def _refuse(connection: HTTPConnection, what: str) -> BackendError:
    """404 for a sandbox, checkpoint or snapshot the path names that does not exist; else the 501."""
    backend: LocalBackend = connection.app.state.backend
    params = connection.path_params
    if "sandbox_id" in params:
        backend.sandboxes.get(params["sandbox_id"])
    if "checkpoint_id" in params:
        backend.checkpoints.get(params["checkpoint_id"])
    if "name" in params and connection.url.path.startswith("/api/snapshots/"):
        backend.snapshots.get(params["name"])
    return Unsupported(f"{what} is not supported by the local server")


def _http_endpoint(what: str) -> Callable[[Request], Awaitable[None]]:
    async def not_supported(request: Request) -> None:
        raise _refuse(request, what)

    return not_supported


def _websocket_endpoint(what: str) -> Callable[[WebSocket], Awaitable[None]]:
    async def not_supported(websocket: WebSocket) -> None:
        raise _refuse(websocket, what)

    return not_supported


for _path, _what in _UNSUPPORTED:
    router.add_api_route(_path, _http_endpoint(_what), methods=_METHODS, include_in_schema=False)
    router.add_api_websocket_route(_path, _websocket_endpoint(_what))
