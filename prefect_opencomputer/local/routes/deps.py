"""Dependencies shared by the routers: the backend the app serves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

if TYPE_CHECKING:
    from prefect_opencomputer.local.backend.service import LocalBackend


async def get_backend(request: Request) -> LocalBackend:
    """Async so FastAPI runs it inline rather than in a worker thread."""
    backend: LocalBackend = request.app.state.backend
    return backend


BackendDep = Annotated["LocalBackend", Depends(get_backend)]
