"""Files: read, write, list, mkdir, delete and signed URLs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from prefect_opencomputer.client import NotFoundError, OpenComputerClient, ServerError

from .conftest import Faults


async def test_written_bytes_and_text_read_back(oc: OpenComputerClient, sandbox: str) -> None:
    payload = bytes(range(256)) * 64
    await oc.files.write(sandbox, "/home/sandbox/bin/blob", payload)
    await oc.files.write(sandbox, "/home/sandbox/note.txt", "héllo\n")

    assert await oc.files.read(sandbox, "/home/sandbox/bin/blob") == payload
    assert await oc.files.read_text(sandbox, "/home/sandbox/note.txt") == "héllo\n"
    # Files written through the API are visible to commands.
    assert (await oc.exec.run(sandbox, "cat /home/sandbox/note.txt")).stdout == "héllo\n"


async def test_streamed_write_arrives_whole(oc: OpenComputerClient, sandbox: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for index in range(8):
            yield bytes([index]) * 100_000

    await oc.files.write(sandbox, "/home/sandbox/streamed", chunks())

    data = await oc.files.read(sandbox, "/home/sandbox/streamed")
    assert len(data) == 800_000 and data[-1] == 7


async def test_directories_list_create_and_delete(oc: OpenComputerClient, sandbox: str) -> None:
    await oc.files.mkdir(sandbox, "/home/sandbox/project/src")
    await oc.files.mkdir(sandbox, "/home/sandbox/project/src")  # mkdir -p: fine twice
    await oc.files.write(sandbox, "/home/sandbox/project/README", b"12345")

    entries = {entry.name: entry for entry in await oc.files.list(sandbox, "/home/sandbox/project")}
    assert entries["src"].is_dir and entries["src"].path == "/home/sandbox/project/src"
    assert not entries["README"].is_dir and entries["README"].size == 5
    assert await oc.files.list(sandbox, "/home/sandbox/project/src") == []

    await oc.files.delete(sandbox, "/home/sandbox/project")
    await oc.files.delete(sandbox, "/home/sandbox/project")  # a missing path is fine
    assert "project" not in {entry.name for entry in await oc.files.list(sandbox, "/home/sandbox")}


async def test_reading_a_missing_file_is_not_found(oc: OpenComputerClient, sandbox: str) -> None:
    with pytest.raises(NotFoundError) as caught:
        await oc.files.read(sandbox, "/home/sandbox/no-such-file")
    assert "no-such-file" in caught.value.message


async def test_the_hosted_500_for_a_missing_file_is_not_found_too(
    oc: OpenComputerClient, sandbox: str, faults: Faults
) -> None:
    # What the hosted service sends for a missing file, word for word in its shape.
    message = "recv first chunk: open /home/sandbox/gone: no such file or directory"
    await faults.add("GET", f"/api/sandboxes/{sandbox}/files", status=500, message=message)
    with pytest.raises(NotFoundError) as caught:
        await oc.files.read(sandbox, "/home/sandbox/gone")
    assert caught.value.status_code == 500 and caught.value.message == message
    await faults.add("GET", f"/api/sandboxes/{sandbox}/files", status=500, message="disk on fire")
    with pytest.raises(ServerError):
        await oc.files.read(sandbox, "/home/sandbox/gone")


async def test_signed_urls_move_files_without_the_api_key(oc: OpenComputerClient, sandbox: str) -> None:
    upload = await oc.files.upload_url(sandbox, "/home/sandbox/signed.txt", expires_in=60)
    download = await oc.files.download_url(sandbox, "/home/sandbox/signed.txt")
    assert upload.expires_at is not None and download.expires_at is not None

    async with httpx.AsyncClient() as anonymous:
        (await anonymous.put(upload.url, content=b"via signed url")).raise_for_status()
        fetched = await anonymous.get(download.url)

    assert fetched.status_code == 200 and fetched.content == b"via signed url"
    assert await oc.files.read_text(sandbox, "/home/sandbox/signed.txt") == "via signed url"
