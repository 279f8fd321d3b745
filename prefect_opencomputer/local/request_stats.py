"""How many API requests the server has seen, so tests can prove a client retried (or did not)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from prefect_opencomputer.local.faults import TEST_ROUTES_PREFIX


@dataclass
class RequestStats:
    """Counters shown by ``GET /_test/stats``; reset by ``POST /_test/reset``."""

    requests_served: int = 0

    def reset(self) -> None:
        self.requests_served = 0


class RequestCountMiddleware:
    """Counts every HTTP and WebSocket request outside the test routes, faulted ones included."""

    def __init__(self, app: ASGIApp, *, stats: RequestStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not scope["path"].startswith(TEST_ROUTES_PREFIX):
            self.stats.requests_served += 1
        await self.app(scope, receive, send)
