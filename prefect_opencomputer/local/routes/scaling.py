"""Scaling and restart routes: scale, autoscale, the scaling lock, reboot and power cycle.

Bodies are read as the control plane's Go handlers bind them: a body that does not bind is the
handler's own 400 (``invalid body``), not a validation report.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response

from prefect_opencomputer.local.backend.records import WORKER_ID, ScalingRecord
from prefect_opencomputer.local.errors import Invalid
from prefect_opencomputer.local.routes.deps import BackendDep

router = APIRouter()

_INT64 = range(-(2**63), 2**63)


async def _bound(request: Request, fields: dict[str, type], refusal: str) -> dict[str, object]:
    """The body's ``fields`` as Go's JSON binding reads them (absent is zero); 400 ``refusal`` if it
    does not bind."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise Invalid(refusal)
    bound: dict[str, object] = {}
    for name, kind in fields.items():
        value = body.get(name)
        if value is None:
            value = kind()
        elif not _binds(value, kind):
            raise Invalid(refusal)
        bound[name] = value
    return bound


def _binds(value: object, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    return isinstance(value, int) and not isinstance(value, bool) and value in _INT64


def _lock_json(scaling: ScalingRecord) -> dict[str, object]:
    return {"sandboxID": scaling.sandbox_id, "locked": scaling.locked}


def _autoscale_json(scaling: ScalingRecord) -> dict[str, object]:
    return {
        "sandboxID": scaling.sandbox_id,
        "enabled": scaling.autoscale_enabled,
        "minMemoryMB": scaling.min_memory_mb,
        "maxMemoryMB": scaling.max_memory_mb,
    }


@router.post("/sandboxes/{sandbox_id}/scale")
async def scale(sandbox_id: str, request: Request, backend: BackendDep) -> dict[str, object]:
    """Move the running sandbox to another memory tier; its CPU quota follows the tier."""
    body = await _bound(request, {"memoryMB": int}, "memoryMB is required and must be positive")
    memory_mb = body["memoryMB"]
    assert isinstance(memory_mb, int)
    record, autoscale_was_enabled = await backend.scaling.scale(sandbox_id, memory_mb)
    return {
        "sandboxID": record.id,
        "workerID": WORKER_ID,
        "memoryMB": record.memory_mb,
        "cpuPercent": record.cpu_count * 100,
        "migrated": False,
        "ok": True,
        "autoscaleDisabled": autoscale_was_enabled,
    }


@router.get("/sandboxes/{sandbox_id}/autoscale")
async def get_autoscale(sandbox_id: str, backend: BackendDep) -> dict[str, object]:
    return _autoscale_json(backend.scaling.settings(sandbox_id))


@router.put("/sandboxes/{sandbox_id}/autoscale")
async def set_autoscale(sandbox_id: str, request: Request, backend: BackendDep) -> dict[str, object]:
    """Kept and answered; the local server has no autoscaler that acts on it."""
    body = await _bound(request, {"enabled": bool, "minMemoryMB": int, "maxMemoryMB": int}, "invalid body")
    enabled, low, high = body["enabled"], body["minMemoryMB"], body["maxMemoryMB"]
    assert isinstance(enabled, bool) and isinstance(low, int) and isinstance(high, int)
    return _autoscale_json(backend.scaling.set_autoscale(sandbox_id, enabled, low, high))


@router.get("/sandboxes/{sandbox_id}/scaling-lock")
async def get_scaling_lock(sandbox_id: str, backend: BackendDep) -> dict[str, object]:
    return _lock_json(backend.scaling.settings(sandbox_id))


@router.put("/sandboxes/{sandbox_id}/scaling-lock")
async def set_scaling_lock(sandbox_id: str, request: Request, backend: BackendDep) -> dict[str, object]:
    locked = (await _bound(request, {"locked": bool}, "invalid body"))["locked"]
    assert isinstance(locked, bool)
    return _lock_json(backend.scaling.set_lock(sandbox_id, locked))


@router.post("/sandboxes/{sandbox_id}/reboot", status_code=204)
async def reboot(sandbox_id: str, backend: BackendDep) -> Response:
    """Processes start again over the kept disk; the sandbox keeps its id, envs and files."""
    await backend.scaling.restart(sandbox_id, "reboot")
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/power-cycle", status_code=204)
async def power_cycle(sandbox_id: str, backend: BackendDep) -> Response:
    """As reboot: there is no virtual machine monitor here to restart apart from the processes."""
    await backend.scaling.restart(sandbox_id, "power-cycle")
    return Response(status_code=204)
