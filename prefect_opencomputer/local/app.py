"""The local server's ASGI app: the resource routers behind auth, error shapes, limits and test hooks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from prefect_opencomputer.local.auth import require_api_key
from prefect_opencomputer.local.backend.service import LocalBackend
from prefect_opencomputer.local.body_limits import BodyLimitMiddleware
from prefect_opencomputer.local.config import LocalServerConfig
from prefect_opencomputer.local.faults import FaultMiddleware, FaultRegistry
from prefect_opencomputer.local.preview_proxy import PreviewProxyMiddleware
from prefect_opencomputer.local.request_stats import RequestCountMiddleware, RequestStats
from prefect_opencomputer.local.routes import (
    checkpoints,
    control,
    files,
    patches,
    previews,
    sandboxes,
    scaling,
    snapshots,
    terminals,
    unsupported,
    usage,
)
from prefect_opencomputer.local.routes import exec as exec_routes
from prefect_opencomputer.local.routes import images as image_routes
from prefect_opencomputer.local.wire_errors import install_error_handlers

API_PREFIX = "/api"


def create_app(backend: LocalBackend, config: LocalServerConfig) -> FastAPI:
    """The app serving ``backend``; the backend starts and closes with the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await backend.start()
        except BaseException as exc:
            app.state.startup_error = exc
            raise
        try:
            yield
        finally:
            await backend.close()

    app = FastAPI(
        title="OpenComputer local server",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.backend = backend
    app.state.config = config
    app.state.faults = FaultRegistry()
    app.state.request_stats = RequestStats()
    install_error_handlers(app)

    authenticated = [Depends(require_api_key)]
    # Signed URLs carry their own proof; they must not ask for the API key.
    app.include_router(files.public_router, prefix=API_PREFIX)
    app.include_router(terminals.socket_router, prefix=API_PREFIX)
    for module in (
        sandboxes,
        scaling,
        exec_routes,
        terminals,
        files,
        checkpoints,
        patches,
        previews,
        snapshots,
        image_routes,
        usage,
    ):
        app.include_router(module.router, prefix=API_PREFIX, dependencies=authenticated)
    # Last, so a route a resource router does implement always wins.
    app.include_router(unsupported.router, prefix=API_PREFIX, dependencies=authenticated)
    if config.enable_test_routes:
        app.include_router(control.router, dependencies=authenticated)

    # Added innermost first: a request meets the preview proxy, the counter, faults, then limits.
    app.add_middleware(
        BodyLimitMiddleware, max_json_bytes=config.max_json_bytes, max_file_bytes=config.max_file_bytes
    )
    if config.enable_test_routes:
        app.add_middleware(FaultMiddleware, registry=app.state.faults)
        app.add_middleware(RequestCountMiddleware, stats=app.state.request_stats)
    app.add_middleware(PreviewProxyMiddleware, backend=backend.previews)
    return app
