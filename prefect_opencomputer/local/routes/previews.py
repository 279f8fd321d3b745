"""Preview URL routes: one hostname per sandbox port, created idempotently (200 existing, 201 new)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from prefect_opencomputer.local.backend.records import LOCAL_ORG_ID, PreviewRecord, rfc3339
from prefect_opencomputer.local.routes.deps import BackendDep
from prefect_opencomputer.local.routes.sandboxes import Int64

router = APIRouter()


class PreviewCreateBody(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    port: Int64 | None = None
    domain: str | None = None
    auth_config: Any = Field(None, alias="authConfig")


def preview_json(preview: PreviewRecord) -> dict[str, object]:
    return {
        "id": preview.id,
        "sandboxId": preview.sandbox_id,
        "orgId": LOCAL_ORG_ID,
        "hostname": preview.hostname,
        "port": preview.port,
        "sslStatus": "active",
        "authConfig": preview.auth_config,
        "createdAt": rfc3339(preview.created_at),
    }


@router.post("/sandboxes/{sandbox_id}/preview", status_code=201)
async def create_preview(
    sandbox_id: str, backend: BackendDep, body: PreviewCreateBody | None = None
) -> JSONResponse:
    body = body or PreviewCreateBody()
    preview, created = backend.previews.create(
        sandbox_id, body.port or 0, domain=body.domain or "", auth_config=body.auth_config
    )
    return JSONResponse(preview_json(preview), status_code=201 if created else 200)


@router.get("/sandboxes/{sandbox_id}/preview")
async def list_previews(sandbox_id: str, backend: BackendDep) -> list[dict[str, object]]:
    return [preview_json(preview) for preview in backend.previews.for_sandbox(sandbox_id)]


@router.post("/sandboxes/{sandbox_id}/preview/rotate")
async def rotate_preview_token(sandbox_id: str, backend: BackendDep) -> dict[str, str]:
    """A new preview token, turning the gate on if it was off; the old token stops working."""
    return {"previewAuthToken": backend.previews.rotate_token(sandbox_id), "scheme": "bearer"}


@router.delete("/sandboxes/{sandbox_id}/preview/{port}", status_code=204)
async def delete_preview(sandbox_id: str, port: str, backend: BackendDep) -> Response:
    backend.previews.delete(sandbox_id, port)
    return Response(status_code=204)
