"""Snapshot routes: create (build stream, `?async=1` or synchronous), list, get, delete.

A snapshot's patches are served by `routes/patches.py`, beside a checkpoint's.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from prefect_opencomputer.local.backend.images import BuildLogSink, ImageBuildError
from prefect_opencomputer.local.routes.deps import BackendDep
from prefect_opencomputer.local.routes.images import build_event_stream, image_json, wants_event_stream

router = APIRouter()


class SnapshotCreateBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Any = None
    image: Any = None


@router.post("/snapshots", status_code=201, response_model=None)
async def create_snapshot(
    backend: BackendDep,
    body: SnapshotCreateBody | None = None,
    accept: str | None = Header(None),
    run_async: str | None = Query(None, alias="async"),
) -> Response:
    """`Accept: text/event-stream` streams the build; `?async=1` answers 202 at once; else 201 when built."""
    body = body or SnapshotCreateBody()
    snapshots = backend.snapshots
    if wants_event_stream(accept):
        snapshot = snapshots.reserve(body.name, body.image)

        async def build(log: BuildLogSink) -> dict[str, object]:
            await snapshots.finish(snapshot, log, keep_failed=False)
            return image_json(snapshot)

        return build_event_stream(build)
    if run_async == "1":
        return JSONResponse(image_json(snapshots.create_in_background(body.name, body.image)), 202)
    snapshot = snapshots.reserve(body.name, body.image)
    try:
        await snapshots.finish(snapshot, _discard, keep_failed=False)
    except ImageBuildError as error:
        return JSONResponse({"error": str(error)}, status_code=500)
    return JSONResponse(image_json(snapshot), status_code=201)


@router.get("/snapshots")
async def list_snapshots(backend: BackendDep) -> list[dict[str, object]]:
    return [image_json(image) for image in backend.snapshots.listed()]


@router.get("/snapshots/{name}")
async def get_snapshot(name: str, backend: BackendDep) -> dict[str, object]:
    return image_json(backend.snapshots.get(name))


@router.delete("/snapshots/{name}", status_code=204)
async def delete_snapshot(name: str, backend: BackendDep) -> Response:
    backend.snapshots.delete(name)
    return Response(status_code=204)


def _discard(step: int, step_type: str, message: str) -> None:
    """A synchronous create has no one to stream its build log to."""
