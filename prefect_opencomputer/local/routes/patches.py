"""Patch routes: scripts a fork runs, in sequence, before it is handed out; a checkpoint's or a snapshot's."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from prefect_opencomputer.local.backend.patches import PatchParent
from prefect_opencomputer.local.backend.records import PatchRecord, rfc3339
from prefect_opencomputer.local.routes.deps import BackendDep

router = APIRouter()


class PatchCreateBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    script: str | None = None
    description: str | None = None


def patch_json(patch: PatchRecord) -> dict[str, object]:
    return {
        "id": patch.id,
        "checkpointId": patch.checkpoint_id,
        "sequence": patch.sequence,
        "script": patch.script,
        "description": patch.description,
        "strategy": "on_wake",
        "createdAt": rfc3339(patch.created_at),
    }


def patch_parent(request: Request) -> PatchParent:
    """Patches are served under a checkpoint (by its id) and under a snapshot (by its name)."""
    if "name" in request.path_params:
        return PatchParent("snapshot", request.path_params["name"])
    return PatchParent("checkpoint", request.path_params["checkpoint_id"])


ParentDep = Annotated[PatchParent, Depends(patch_parent)]


@router.post("/sandboxes/checkpoints/{checkpoint_id}/patches", status_code=201)
@router.post("/snapshots/{name}/patches", status_code=201)
async def create_patch(
    parent: ParentDep, backend: BackendDep, body: PatchCreateBody | None = None
) -> JSONResponse:
    body = body or PatchCreateBody()
    patch = backend.patches.create(parent, body.script or "", body.description or "")
    return JSONResponse({"patch": patch_json(patch)}, status_code=201)


@router.get("/sandboxes/checkpoints/{checkpoint_id}/patches")
@router.get("/snapshots/{name}/patches")
async def list_patches(parent: ParentDep, backend: BackendDep) -> list[dict[str, object]]:
    return [patch_json(patch) for patch in backend.patches.listed(parent)]


@router.delete("/sandboxes/checkpoints/{checkpoint_id}/patches/{patch_id}", status_code=204)
@router.delete("/snapshots/{name}/patches/{patch_id}", status_code=204)
async def delete_patch(parent: ParentDep, patch_id: str, backend: BackendDep) -> Response:
    backend.patches.delete(parent, patch_id)
    return Response(status_code=204)
