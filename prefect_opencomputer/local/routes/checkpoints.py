"""Checkpoint routes: create, list, restore, delete, and fork a new sandbox from a checkpoint."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from prefect_opencomputer.local.backend.records import LOCAL_ORG_ID, WORKER_ID, CheckpointRecord, rfc3339
from prefect_opencomputer.local.routes.deps import BackendDep
from prefect_opencomputer.local.routes.sandboxes import Int64

router = APIRouter()


class RetentionPolicyBody(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    mode: str | None = None
    max_count: Int64 | None = Field(None, alias="maxCount")


class CheckpointCreateBody(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str | None = None
    kind: str | None = None
    promote_to_full: bool | None = Field(None, alias="promoteToFull")
    retention_policy: RetentionPolicyBody | None = Field(None, alias="retentionPolicy")


class ForkBody(BaseModel):
    """What the service reads from a fork request; ``timeout`` is accepted and, like there, ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    envs: dict[str, str] | None = None
    secret_store: str | None = Field(None, alias="secretStore")
    metadata: dict[str, str] | None = None
    memory_mb: Int64 | None = Field(None, alias="memoryMB")
    timeout: Int64 | None = None


def checkpoint_json(checkpoint: CheckpointRecord) -> dict[str, object]:
    """``db.Checkpoint``: note ``sandboxId`` with a lower-case d."""
    body: dict[str, object] = {
        "id": checkpoint.id,
        "sandboxId": checkpoint.sandbox_id,
        "orgId": LOCAL_ORG_ID,
        "name": checkpoint.name,
        "sandboxConfig": checkpoint.sandbox_config,
        "kind": checkpoint.kind,
        "status": checkpoint.status,
        "sizeBytes": checkpoint.size_bytes,
        "isPublic": False,
        "createdAt": rfc3339(checkpoint.created_at),
    }
    if checkpoint.error_msg is not None:
        body["errorMsg"] = checkpoint.error_msg
    if checkpoint.failed_at is not None:
        body["failedAt"] = rfc3339(checkpoint.failed_at)
    return body


@router.post("/sandboxes/{sandbox_id}/checkpoints", status_code=201)
async def create_checkpoint(
    sandbox_id: str, backend: BackendDep, body: CheckpointCreateBody | None = None
) -> JSONResponse:
    body = body or CheckpointCreateBody()
    retention = body.retention_policy or RetentionPolicyBody()
    checkpoint = await backend.checkpoints.create(
        sandbox_id,
        name=body.name or "",
        kind=body.kind or "",
        promote_to_full=body.promote_to_full,
        retention_mode=retention.mode or "",
        retention_max_count=retention.max_count or 0,
    )
    return JSONResponse(checkpoint_json(checkpoint), status_code=201)


@router.get("/sandboxes/{sandbox_id}/checkpoints")
async def list_checkpoints(sandbox_id: str, backend: BackendDep) -> list[dict[str, object]]:
    return [checkpoint_json(cp) for cp in backend.checkpoints.for_sandbox(sandbox_id)]


@router.post("/sandboxes/{sandbox_id}/checkpoints/{checkpoint_id}/restore")
async def restore_checkpoint(sandbox_id: str, checkpoint_id: str, backend: BackendDep) -> dict[str, str]:
    """Done before answering, so the next call sees the restored disk; ``restoring`` is the wire's word."""
    await backend.checkpoints.restore(sandbox_id, checkpoint_id)
    return {"sandboxId": sandbox_id, "checkpointId": checkpoint_id, "status": "restoring"}


@router.delete("/sandboxes/{sandbox_id}/checkpoints/{checkpoint_id}", status_code=204)
async def delete_checkpoint(sandbox_id: str, checkpoint_id: str, backend: BackendDep) -> Response:
    await backend.checkpoints.delete(sandbox_id, checkpoint_id)
    return Response(status_code=204)


@router.post("/sandboxes/from-checkpoint/{checkpoint_id}", status_code=201)
async def fork_checkpoint(
    checkpoint_id: str, backend: BackendDep, body: ForkBody | None = None
) -> JSONResponse:
    body = body or ForkBody()
    record = await backend.checkpoints.fork(
        checkpoint_id,
        envs=body.envs or {},
        metadata=body.metadata or {},
        memory_mb=body.memory_mb or 0,
        secret_store=body.secret_store or "",
    )
    return JSONResponse(
        {
            "sandboxID": record.id,
            "status": record.status,
            "token": record.token,
            "region": backend.config.region,
            "workerID": WORKER_ID,
            "fromCheckpointId": checkpoint_id,
            "sandboxDomain": backend.config.effective_preview_domain,
            "memoryMB": record.memory_mb,
        },
        status_code=201,
    )
