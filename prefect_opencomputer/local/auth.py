"""API key check with the control plane's semantics: a missing key is 401, a wrong one 403."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from prefect_opencomputer.local.errors import Forbidden, Unauthorized

API_KEY_HEADER = "X-API-Key"
API_KEY_QUERY = "api_key"


async def require_api_key(connection: HTTPConnection) -> None:
    """FastAPI dependency for every authenticated route, HTTP and WebSocket alike.

    Async so FastAPI runs it inline: a plain ``def`` dependency costs a worker-thread hand-off per request.

    The key comes from the ``X-API-Key`` header or the ``api_key`` query parameter (browsers and
    the SDK's WebSocket attach cannot set headers).
    """
    presented = connection.headers.get(API_KEY_HEADER) or connection.query_params.get(API_KEY_QUERY)
    if not presented:
        raise Unauthorized("missing API key")
    expected: str = connection.app.state.config.api_key
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Forbidden("invalid API key")
