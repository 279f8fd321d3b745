"""File routes: read, write, list, mkdir, delete, and signed download/upload URLs.

`public_router` holds the two signed-URL routes: the signature is their proof, so the app mounts
them without the API key dependency.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import quote_plus

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from prefect_opencomputer.local.backend.service import LocalBackend
from prefect_opencomputer.local.backend.signed_urls import Operation, expiry_seconds
from prefect_opencomputer.local.errors import Invalid
from prefect_opencomputer.local.routes.deps import BackendDep
from prefect_opencomputer.local.routes.sandboxes import Int64
from prefect_opencomputer.local.sandbox.fileops import DirEntry

router = APIRouter()
public_router = APIRouter()


class SignedUrlBody(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    path: str | None = None
    expires_in: Int64 | None = Field(None, alias="expiresIn")


def _require_path(path: str | None) -> str:
    if not path:
        raise Invalid("path query parameter is required")
    return _valid_path(path)


def _valid_path(path: str) -> str:
    """No file system takes a NUL in a name: refuse it here, before any lookup."""
    if "\0" in path:
        raise Invalid("path must not contain a NUL byte")
    return path


async def _download(backend: LocalBackend, sandbox_id: str, path: str) -> StreamingResponse:
    _valid_path(path)
    download = await backend.files.open_download(sandbox_id, path)
    return StreamingResponse(
        download.chunks,
        media_type="application/octet-stream",
        headers={"Content-Length": str(download.size)},
    )


async def _upload(backend: LocalBackend, sandbox_id: str, path: str, request: Request) -> Response:
    declared = request.headers.get("content-length")
    length = int(declared) if declared and declared.isdigit() else None
    _valid_path(path)
    await backend.files.upload(sandbox_id, path, request.stream(), length)
    return Response(status_code=204)


@router.get("/sandboxes/{sandbox_id}/files", response_model=None)
async def read_file(sandbox_id: str, backend: BackendDep, path: str | None = None) -> StreamingResponse:
    return await _download(backend, sandbox_id, _require_path(path))


@router.put("/sandboxes/{sandbox_id}/files", status_code=204)
async def write_file(
    sandbox_id: str, request: Request, backend: BackendDep, path: str | None = None
) -> Response:
    """Stream the raw body into the file (parents made, mode 0644)."""
    return await _upload(backend, sandbox_id, _require_path(path), request)


@router.get("/sandboxes/{sandbox_id}/files/list", response_model=None)
async def list_dir(sandbox_id: str, backend: BackendDep, path: str | None = None) -> StreamingResponse:
    """A JSON array streamed batch by batch, as the sandbox's agent reads it (at most 10,000 entries)."""
    batches = await backend.files.list_dir(sandbox_id, _valid_path(path or "/"))
    return StreamingResponse(_listing_json(batches), media_type="application/json")


async def _listing_json(batches: AsyncIterator[list[DirEntry]]) -> AsyncIterator[bytes]:
    opening = b"["
    async for batch in batches:
        if not batch:
            continue
        items = []
        for entry in batch:
            item: dict[str, object] = {"name": entry.name, "isDir": entry.is_dir}
            if entry.size:
                item["size"] = entry.size
            item["path"] = entry.path
            items.append(item)
        # One array per batch, its brackets dropped; bytes of a name that are not UTF-8 come out
        # as U+FFFD, as a Go agent sends them.
        text = json.dumps(items, ensure_ascii=False, separators=(",", ":"))[1:-1]
        yield opening + text.encode(errors="surrogateescape").decode(errors="replace").encode()
        opening = b","
    yield b"[]" if opening == b"[" else b"]"


@router.post("/sandboxes/{sandbox_id}/files/mkdir", status_code=204)
async def make_dir(sandbox_id: str, backend: BackendDep, path: str | None = None) -> Response:
    await backend.files.mkdir(sandbox_id, _require_path(path))
    return Response(status_code=204)


@router.delete("/sandboxes/{sandbox_id}/files", status_code=204)
async def remove_path(sandbox_id: str, backend: BackendDep, path: str | None = None) -> Response:
    """Recursive; a path that does not exist is not an error."""
    await backend.files.remove(sandbox_id, _require_path(path))
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/files/download-url")
async def download_url(
    sandbox_id: str, request: Request, backend: BackendDep, body: SignedUrlBody | None = None
) -> dict[str, str]:
    return _signed_url(backend, request, sandbox_id, body or SignedUrlBody(), "download")


@router.post("/sandboxes/{sandbox_id}/files/upload-url")
async def upload_url(
    sandbox_id: str, request: Request, backend: BackendDep, body: SignedUrlBody | None = None
) -> dict[str, str]:
    return _signed_url(backend, request, sandbox_id, body or SignedUrlBody(), "upload")


def _signed_url(
    backend: LocalBackend, request: Request, sandbox_id: str, body: SignedUrlBody, operation: Operation
) -> dict[str, str]:
    """A URL pointing back at this server, as the client reached it."""
    if not body.path:
        raise Invalid("path is required")
    backend.sandboxes.require_live(sandbox_id)
    expires = int(time.time()) + expiry_seconds(body.expires_in or 0)
    signature = backend.signer.sign(sandbox_id, body.path, operation, expires)
    scheme = request.headers.get("x-forwarded-proto") or request.url.scheme
    host = request.headers.get("host") or request.url.netloc
    url = (
        f"{scheme}://{host}/api/sandboxes/{sandbox_id}/files/{operation}"
        f"?path={quote_plus(body.path)}&expires={expires}&signature={signature}"
    )
    expires_at = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"url": url, "expiresAt": expires_at}


@dataclass
class SignedQuery:
    """What a signed URL carries in its query: the path, until when it holds, and its signature."""

    path: str = ""
    expires: str = ""
    signature: str = ""


SignedQueryDep = Annotated[SignedQuery, Depends()]


@public_router.get("/sandboxes/{sandbox_id}/files/download", response_model=None)
async def signed_download(sandbox_id: str, backend: BackendDep, signed: SignedQueryDep) -> StreamingResponse:
    backend.signer.verify(sandbox_id, signed.path, "download", signed.expires, signed.signature)
    return await _download(backend, sandbox_id, signed.path)


@public_router.put("/sandboxes/{sandbox_id}/files/upload", status_code=204)
async def signed_upload(
    sandbox_id: str, request: Request, backend: BackendDep, signed: SignedQueryDep
) -> Response:
    backend.signer.verify(sandbox_id, signed.path, "upload", signed.expires, signed.signature)
    return await _upload(backend, sandbox_id, signed.path, request)
