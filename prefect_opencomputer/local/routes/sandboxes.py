"""Sandbox routes: create, get, list, kill, timeout, hibernate/wake and tags, in control-plane shapes."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from prefect_opencomputer.local.backend.images import BuildLogSink, ImageBuildError
from prefect_opencomputer.local.backend.records import (
    WORKER_ID,
    SandboxRecord,
    rfc3339,
    rfc3339_millis,
)
from prefect_opencomputer.local.backend.sandboxes import SandboxRequest
from prefect_opencomputer.local.backend.service import LocalBackend
from prefect_opencomputer.local.errors import Invalid
from prefect_opencomputer.local.routes.deps import BackendDep
from prefect_opencomputer.local.routes.images import build_event_stream, wants_event_stream

router = APIRouter()

GO_ZERO_TIME = "0001-01-01T00:00:00Z"
# JSON integers as the service's Go handlers read them: anything past 64 bits is a bad body.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class PreviewAuthBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    scheme: str | None = None
    token: str | None = None


class SandboxCreateBody(BaseModel):
    """``types.SandboxConfig``: every field optional; routing-only fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    template_id: str | None = Field(None, alias="templateID")
    timeout: Int64 | None = None
    cpu_count: Int64 | None = Field(None, alias="cpuCount")
    memory_mb: Int64 | None = Field(None, alias="memoryMB")
    disk_mb: Int64 | None = Field(None, alias="diskMB")
    envs: dict[str, str] | None = None
    metadata: dict[str, str] | None = None
    secret_store: str | None = Field(None, alias="secretStore")
    image: dict[str, Any] | None = None
    snapshot: str | None = None
    preview_auth: PreviewAuthBody | None = Field(None, alias="previewAuth")
    webhooks: list[Any] | None = None
    network_enabled: bool | None = Field(None, alias="networkEnabled")


class TimeoutBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    timeout: Int64 = 0


class WakeBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    timeout: Int64 | None = None


def sandbox_json(record: SandboxRecord, backend: LocalBackend) -> dict[str, object]:
    """The control plane's ``GET /sandboxes/{id}`` shape (no token or worker while hibernated)."""
    body: dict[str, object] = {"sandboxID": record.id}
    if record.status != "hibernated":
        body["token"] = record.token
    body["status"] = record.status
    body["region"] = backend.config.region
    if record.status != "hibernated":
        body["workerID"] = WORKER_ID
    body["startedAt"] = rfc3339(record.started_at)
    body["template"] = record.template
    body["sandboxDomain"] = backend.config.effective_preview_domain
    if record.patch_error is not None and record.status != "hibernated":
        body["patchError"] = record.patch_error
    body.update(tags_json(record))
    return body


def tags_json(record: SandboxRecord) -> dict[str, object]:
    updated = record.tags_updated_at
    return {
        "tags": dict(record.tags),
        "tagsLastUpdatedAt": None if updated is None else rfc3339_millis(updated),
    }


@router.post("/sandboxes", status_code=201, response_model=None)
async def create_sandbox(
    backend: BackendDep, body: SandboxCreateBody | None = None, accept: str | None = Header(None)
) -> Response:
    """A plain create answers 201; one from an image or snapshot answers the fork's 201, or streams
    its build (``Accept: text/event-stream``)."""
    body = body or SandboxCreateBody()
    preview_auth = None
    if body.preview_auth is not None:
        preview_auth = (body.preview_auth.scheme or "", body.preview_auth.token or "")
    request = SandboxRequest(
        template=body.template_id or "",
        timeout=body.timeout or 0,
        cpu_count=body.cpu_count or 0,
        memory_mb=body.memory_mb or 0,
        disk_mb=body.disk_mb or 0,
        envs=body.envs or {},
        metadata=body.metadata or {},
        secret_store=body.secret_store or "",
        preview_auth=preview_auth,
        image=body.image,
        snapshot=body.snapshot or "",
        webhooks=bool(body.webhooks),
        network_enabled=body.network_enabled is not False,
    )
    if request.image is not None or request.snapshot:
        return await _create_from_image(backend, request, wants_event_stream(accept))
    record, preview_token = await backend.sandboxes.create(request)
    created: dict[str, object] = {
        "sandboxID": record.id,
        "token": record.token,
        "status": record.status,
        "region": backend.config.region,
        "workerID": WORKER_ID,
        "sandboxDomain": backend.config.effective_preview_domain,
    }
    if preview_token is not None:
        created["previewAuthToken"] = preview_token
    return JSONResponse(created, status_code=201)


async def _create_from_image(backend: LocalBackend, request: SandboxRequest, streamed: bool) -> Response:
    # Checked before any stream starts, so a bad manifest or snapshot is a plain 400.
    backend.images.source(request.image, request.snapshot)
    if streamed:

        async def create(log: BuildLogSink) -> dict[str, object]:
            record, preview_token = await backend.sandboxes.create(request, log)
            return fork_json(record, preview_token, backend)

        return build_event_stream(create)
    try:
        record, preview_token = await backend.sandboxes.create(request)
    except ImageBuildError as error:
        raise Invalid(str(error)) from error
    return JSONResponse(fork_json(record, preview_token, backend), status_code=201)


def fork_json(record: SandboxRecord, preview_token: str | None, backend: LocalBackend) -> dict[str, object]:
    """The fork response (``POST /sandboxes/from-checkpoint/{id}``), which image and snapshot creates send."""
    body: dict[str, object] = {
        "sandboxID": record.id,
        "status": record.status,
        "token": record.token,
        "region": backend.config.region,
        "workerID": WORKER_ID,
        "fromCheckpointId": record.based_on_checkpoint_id,
        "sandboxDomain": backend.config.effective_preview_domain,
        "memoryMB": record.memory_mb,
    }
    if preview_token is not None:
        body["previewAuthToken"] = preview_token
    return body


@router.get("/sandboxes")
async def list_sandboxes(backend: BackendDep) -> list[dict[str, object]]:
    """As the hosted front door lists them: every status, newest first, at most 200, no tags or token."""
    return [
        {
            "sandboxID": record.id,
            "templateID": record.template,
            "cellID": backend.config.region,
            "workerID": WORKER_ID,
            "status": record.status,
            "cpuCount": record.cpu_count,
            "memoryMB": record.memory_mb,
            "startedAt": rfc3339(record.started_at),
            # The edge's Go zero time while the sandbox lives.
            "endAt": rfc3339(record.stopped_at) if record.stopped_at is not None else GO_ZERO_TIME,
        }
        for record in backend.sandboxes.listed()
    ]


@router.get("/tags")
async def list_tag_keys(backend: BackendDep) -> dict[str, object]:
    keys = [
        {"key": stats.key, "sandboxCount": stats.sandbox_count, "valueCount": stats.value_count}
        for stats in backend.sandboxes.tag_keys()
    ]
    return {"keys": keys}


@router.get("/sandboxes/{sandbox_id}")
async def get_sandbox(sandbox_id: str, backend: BackendDep) -> dict[str, object]:
    return sandbox_json(backend.sandboxes.get(sandbox_id), backend)


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def kill_sandbox(sandbox_id: str, backend: BackendDep) -> Response:
    await backend.sandboxes.kill(sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
async def set_timeout(sandbox_id: str, body: TimeoutBody, backend: BackendDep) -> Response:
    await backend.sandboxes.set_timeout(sandbox_id, body.timeout)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/hibernate")
async def hibernate_sandbox(sandbox_id: str, backend: BackendDep) -> dict[str, object]:
    record = await backend.sandboxes.hibernate(sandbox_id)
    return {"sandboxID": record.id, "status": record.status}


@router.post("/sandboxes/{sandbox_id}/wake")
async def wake_sandbox(
    sandbox_id: str, backend: BackendDep, body: WakeBody | None = None
) -> dict[str, object]:
    # Like the service's fast resume tier, the body's timeout is accepted and ignored.
    record = await backend.sandboxes.wake(sandbox_id)
    return {"sandboxID": record.id, "status": record.status}


@router.get("/sandboxes/{sandbox_id}/tags")
async def get_tags(sandbox_id: str, backend: BackendDep) -> dict[str, object]:
    return tags_json(backend.sandboxes.get(sandbox_id))


@router.put("/sandboxes/{sandbox_id}/tags")
async def put_tags(sandbox_id: str, request: Request, backend: BackendDep) -> dict[str, object]:
    backend.sandboxes.get(sandbox_id)
    raw = await request.body()
    try:
        tags = json.loads(raw) if raw.strip() else None
    except ValueError:
        raise Invalid("request body must be a flat { key: string } map") from None
    return tags_json(backend.sandboxes.replace_tags(sandbox_id, tags))
