"""Test-only control routes under ``/_test``: reset, stats and fault injection. Off unless enabled."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from prefect_opencomputer.local.faults import TEST_ROUTES_PREFIX, FaultRegistry, FaultSpec
from prefect_opencomputer.local.request_stats import RequestStats
from prefect_opencomputer.local.routes.deps import BackendDep

router = APIRouter(prefix=TEST_ROUTES_PREFIX)


def _faults(request: Request) -> FaultRegistry:
    registry: FaultRegistry = request.app.state.faults
    return registry


def _stats(request: Request) -> RequestStats:
    stats: RequestStats = request.app.state.request_stats
    return stats


@router.post("/reset", status_code=204)
async def reset(request: Request, backend: BackendDep) -> Response:
    """Kill every sandbox, forget checkpoints, faults and counters: a clean server for the next test."""
    _faults(request).clear()
    await backend.reset()
    _stats(request).reset()
    return Response(status_code=204)


@router.get("/stats")
async def stats(request: Request, backend: BackendDep) -> dict[str, int]:
    return {**backend.stats(), "requestsServed": _stats(request).requests_served}


@router.post("/faults", status_code=201)
async def add_fault(spec: FaultSpec, request: Request) -> dict[str, int]:
    fault = _faults(request).add(spec)
    return {"id": fault.id}


@router.get("/faults")
async def list_faults(request: Request) -> list[dict[str, object]]:
    return [fault.describe() for fault in _faults(request).faults]


@router.delete("/faults", status_code=204)
async def clear_faults(request: Request) -> Response:
    _faults(request).clear()
    return Response(status_code=204)


class LimitsBody(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    max_running_sandboxes: int = Field(alias="maxRunningSandboxes", ge=0)


@router.put("/limits")
async def set_limits(body: LimitsBody, backend: BackendDep) -> dict[str, int]:
    """Lower (or raise) the running-sandbox cap until the next reset, so tests can reach it cheaply."""
    backend.core.max_running_sandboxes = body.max_running_sandboxes
    return {"maxRunningSandboxes": backend.core.max_running_sandboxes}
