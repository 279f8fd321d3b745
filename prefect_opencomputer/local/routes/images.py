"""Image routes: the cached images (`GET /images`), and the build stream image and snapshot creates answer.

A build stream is `text/event-stream`: `build_log` events while the work runs, a `: keepalive` comment after
every 15 s of silence (proxies drop idle connections), then one `result` or one `error` event. The status
is 200 either way: the stream has started before the outcome is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from prefect_opencomputer.local.backend.image_catalog import ImageRecord
from prefect_opencomputer.local.backend.images import BuildLogSink, ImageBuildError
from prefect_opencomputer.local.backend.records import LOCAL_ORG_ID, rfc3339
from prefect_opencomputer.local.errors import BackendError
from prefect_opencomputer.local.routes.deps import BackendDep

router = APIRouter()
logger = logging.getLogger(__name__)

EVENT_STREAM: Final = "text/event-stream"
KEEPALIVE_SECONDS = 15.0
# Log lines waiting for a slow reader; past this, lines are dropped (and the drop is reported).
_QUEUED_LINES_LIMIT: Final = 10_000

BuildOperation = Callable[[BuildLogSink], Awaitable[dict[str, object]]]


def wants_event_stream(accept: str | None) -> bool:
    return accept is not None and EVENT_STREAM in accept


def image_json(image: ImageRecord) -> dict[str, object]:
    """The service's `ImageCache` shape (`checkpointId` and `name` only when set)."""
    body: dict[str, object] = {"id": image.id, "orgId": LOCAL_ORG_ID, "contentHash": image.content_hash}
    if image.checkpoint_id is not None and image.status == "ready":
        body["checkpointId"] = image.checkpoint_id
    if image.name is not None:
        body["name"] = image.name
    body.update(
        {
            "manifest": image.manifest,
            "status": image.status,
            "createdAt": rfc3339(image.created_at),
            "lastUsedAt": rfc3339(image.last_used_at),
        }
    )
    return body


@router.get("/images")
async def list_images(backend: BackendDep) -> list[dict[str, object]]:
    """Every cached image, the build cache's unnamed entries and named snapshots alike, newest first."""
    return [image_json(image) for image in backend.images.listed()]


def build_event_stream(operation: BuildOperation) -> StreamingResponse:
    """Run `operation` with a log sink, streaming its log lines and then its result (or error) as SSE.

    If the client goes away, the operation is cancelled (a build it started keeps going for others).
    """
    return StreamingResponse(
        _frames(operation),
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def event_frame(event: str, payload: object) -> bytes:
    # json.dumps escapes newlines, so one `data:` line always carries the whole payload.
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def _frames(operation: BuildOperation) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    dropped = 0

    def log(step: int, step_type: str, message: str) -> None:
        nonlocal dropped
        if queue.qsize() >= _QUEUED_LINES_LIMIT:
            dropped += 1
            return
        if dropped:
            notice = f"({dropped} build log lines dropped: the client reads slower than the build writes)"
            queue.put_nowait(event_frame("build_log", {"step": step, "type": step_type, "message": notice}))
            dropped = 0
        queue.put_nowait(event_frame("build_log", {"step": step, "type": step_type, "message": message}))

    async def run() -> None:
        try:
            result = await operation(log)
        except (BackendError, ImageBuildError) as error:
            frame = event_frame("error", {"error": str(error)})
        except Exception as error:
            logger.exception("build stream failed")
            frame = event_frame("error", {"error": f"internal error: {error}"})
        else:
            frame = event_frame("result", result)
        queue.put_nowait(frame)
        queue.put_nowait(None)

    work = asyncio.create_task(run(), name="build-stream")
    next_frame: asyncio.Future[bytes | None] | None = None
    try:
        while True:
            if next_frame is None:
                next_frame = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({next_frame}, timeout=KEEPALIVE_SECONDS)
            if not done:
                yield b": keepalive\n\n"
                continue
            frame, next_frame = next_frame.result(), None
            if frame is None:
                return
            yield frame
    finally:
        if next_frame is not None:
            next_frame.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
