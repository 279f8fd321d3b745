"""Checkpoint patch routes: scripts a fork runs, in sequence, before it is handed out."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

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


@router.post("/sandboxes/checkpoints/{checkpoint_id}/patches", status_code=201)
async def create_patch(
    checkpoint_id: str, backend: BackendDep, body: PatchCreateBody | None = None
) -> JSONResponse:
    body = body or PatchCreateBody()
    patch = backend.patches.create(checkpoint_id, body.script or "", body.description or "")
    return JSONResponse({"patch": patch_json(patch)}, status_code=201)


@router.get("/sandboxes/checkpoints/{checkpoint_id}/patches")
async def list_patches(checkpoint_id: str, backend: BackendDep) -> list[dict[str, object]]:
    return [patch_json(patch) for patch in backend.patches.listed(checkpoint_id)]


@router.delete("/sandboxes/checkpoints/{checkpoint_id}/patches/{patch_id}", status_code=204)
async def delete_patch(checkpoint_id: str, patch_id: str, backend: BackendDep) -> Response:
    backend.patches.delete(checkpoint_id, patch_id)
    return Response(status_code=204)
