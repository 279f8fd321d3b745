"""API key check as the service's public front door answers it: missing or wrong, 401 alike."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from prefect_opencomputer.local.errors import Unauthorized

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.service import LocalBackend

API_KEY_HEADER = "X-API-Key"
API_KEY_QUERY = "api_key"
# The front door (what every client of the hosted service meets) does not say which it was.
REFUSED = "missing or invalid API key"


async def require_api_key(connection: HTTPConnection) -> None:
    """FastAPI dependency for every authenticated route, HTTP and WebSocket alike.

    Async so FastAPI runs it inline: a plain ``def`` dependency costs a worker-thread hand-off per request.

    The key comes from the ``X-API-Key`` header or the ``api_key`` query parameter (browsers and
    the SDK's WebSocket attach cannot set headers).
    """
    presented = connection.headers.get(API_KEY_HEADER) or connection.query_params.get(API_KEY_QUERY) or ""
    expected: str = connection.app.state.config.api_key
    if not presented or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Unauthorized(REFUSED)


async def require_api_key_or_sandbox_token(
    connection: HTTPConnection, backend: LocalBackend, sandbox_id: str
) -> None:
    """The API key, or the token of the sandbox ``sandbox_id`` (good for that sandbox's routes only).

    The token may come where a key would, or as ``?token=`` / ``Authorization: Bearer``, as the hosted
    worker takes it.
    """
    bearer = connection.headers.get("authorization", "")
    presented = (
        connection.headers.get(API_KEY_HEADER)
        or connection.query_params.get(API_KEY_QUERY)
        or connection.query_params.get("token")
        or (bearer[7:] if bearer.lower().startswith("bearer ") else "")
    )
    record = backend.store.sandbox(sandbox_id)
    accepted = [connection.app.state.config.api_key] + ([record.token] if record is not None else [])
    if not presented or not any(hmac.compare_digest(presented.encode(), key.encode()) for key in accepted):
        raise Unauthorized(REFUSED)
