"""File routes on the wire: streaming read/write, listing, escapes, and signed URLs."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from prefect_opencomputer.local import LocalServer
from prefect_opencomputer.local.backend.sandboxes import SandboxRequest
from prefect_opencomputer.local.backend.service import LocalBackend
from prefect_opencomputer.local.config import LocalServerConfig
from prefect_opencomputer.local.errors import BackendError
from prefect_opencomputer.local.sandbox.factory import build_runtime


def _files(sandbox: str) -> str:
    return f"/sandboxes/{sandbox}/files"


async def _run(http: httpx.AsyncClient, sandbox: str, cmd: str) -> dict[str, object]:
    response = await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": cmd})
    body: dict[str, object] = response.json()
    return body


async def test_write_then_read_round_trips_binary_content(http: httpx.AsyncClient, sandbox: str) -> None:
    content = os.urandom(3 * 1024 * 1024 + 17)
    written = await http.put(_files(sandbox), params={"path": "/tmp/blob.bin"}, content=content)
    assert written.status_code == 204
    read = await http.get(_files(sandbox), params={"path": "/tmp/blob.bin"})
    assert read.status_code == 200
    assert read.headers["content-type"] == "application/octet-stream"
    assert read.headers["content-length"] == str(len(content))
    assert read.content == content


async def test_relative_paths_live_in_the_home_and_are_visible_to_commands(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    await http.put(_files(sandbox), params={"path": "deep/er/note.txt"}, content=b"hi\n")
    result = await _run(http, sandbox, "cat /home/sandbox/deep/er/note.txt")
    assert result["stdout"] == "hi\n"  # owned by root: test_files_hardening


async def test_list_reports_entries_with_size_only_when_non_zero(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    await http.post(f"{_files(sandbox)}/mkdir", params={"path": "listing/sub"})
    await http.put(_files(sandbox), params={"path": "listing/data.txt"}, content=b"12345")
    await http.put(_files(sandbox), params={"path": "listing/empty.txt"}, content=b"")
    response = await http.get(f"{_files(sandbox)}/list", params={"path": "listing"})
    assert response.status_code == 200
    assert response.json() == [
        {"name": "data.txt", "isDir": False, "size": 5, "path": "/home/sandbox/listing/data.txt"},
        {"name": "empty.txt", "isDir": False, "path": "/home/sandbox/listing/empty.txt"},
        {"name": "sub", "isDir": True, "path": "/home/sandbox/listing/sub"},
    ]


async def test_a_listing_is_streamed_whole_and_a_name_that_is_not_utf8_shows_replaced(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    made = await http.post(
        f"/sandboxes/{sandbox}/exec/run",
        json={"cmd": "mkdir many && cd many && seq 5000 | xargs touch && touch \"$(printf 'bad\\377')\""},
    )
    assert made.json()["exitCode"] == 0, made.text
    response = await http.get(f"{_files(sandbox)}/list", params={"path": "many"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    names = [entry["name"] for entry in response.json()]
    assert len(names) == 5001 and names == sorted(names)
    assert "bad\ufffd" in names


async def test_list_defaults_to_the_root(http: httpx.AsyncClient, sandbox: str) -> None:
    names = [entry["name"] for entry in (await http.get(f"{_files(sandbox)}/list")).json()]
    assert {"etc", "home", "tmp", "usr"} <= set(names)


async def test_mkdir_makes_parents_and_delete_is_recursive(http: httpx.AsyncClient, sandbox: str) -> None:
    assert (await http.post(f"{_files(sandbox)}/mkdir", params={"path": "a/b/c"})).status_code == 204
    await http.put(_files(sandbox), params={"path": "a/b/c/f.txt"}, content=b"x")
    assert (await http.delete(_files(sandbox), params={"path": "a"})).status_code == 204
    assert (await _run(http, sandbox, "test -e a && echo there || echo gone"))["stdout"] == "gone\n"


async def test_deleting_a_missing_path_is_204(http: httpx.AsyncClient, sandbox: str) -> None:
    assert (await http.delete(_files(sandbox), params={"path": "/no/such/thing"})).status_code == 204


async def test_missing_file_is_404_not_500(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await http.get(_files(sandbox), params={"path": "/nope.txt"})
    assert response.status_code == 404
    assert response.json()["error"].endswith("no such file or directory")
    response = await http.get(f"{_files(sandbox)}/list", params={"path": "/nope"})
    assert response.status_code == 404


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("PUT", ""), ("DELETE", ""), ("POST", "/mkdir")])
async def test_missing_path_parameter_is_400(
    http: httpx.AsyncClient, sandbox: str, method: str, suffix: str
) -> None:
    response = await http.request(method, f"{_files(sandbox)}{suffix}")
    assert response.status_code == 400
    assert response.json() == {"error": "path query parameter is required"}


async def test_dotdot_above_the_root_is_400(http: httpx.AsyncClient, sandbox: str) -> None:
    for path in ("../../../etc/passwd", "/../etc/passwd"):
        response = await http.get(_files(sandbox), params={"path": path})
        assert response.status_code == 400, path


async def test_magic_links_into_proc_cannot_reach_the_host(http: httpx.AsyncClient, sandbox: str) -> None:
    await _run(http, sandbox, "ln -s /proc/1/root hostroot; ln -s /proc/self/cwd here")
    for path in ("hostroot/etc/hostname", "here/x", "/proc/1/root/etc/hostname"):
        response = await http.get(_files(sandbox), params={"path": path})
        assert response.status_code == 400, (path, response.text)
    write = await http.put(_files(sandbox), params={"path": "hostroot/tmp/escaped"}, content=b"x")
    assert write.status_code == 400


async def test_absolute_symlinks_resolve_inside_the_sandbox(http: httpx.AsyncClient, sandbox: str) -> None:
    target = f"/tmp/oc-files-test-{uuid.uuid4().hex}"
    await _run(http, sandbox, f"ln -s {target} link")
    assert (await http.put(_files(sandbox), params={"path": "link"}, content=b"inside")).status_code == 204
    assert not os.path.exists(target)  # the host's /tmp is untouched
    assert (await _run(http, sandbox, f"cat {target}"))["stdout"] == "inside"


async def test_files_wake_a_hibernated_sandbox(http: httpx.AsyncClient, sandbox: str) -> None:
    await http.put(_files(sandbox), params={"path": "kept.txt"}, content=b"still here")
    await http.post(f"/sandboxes/{sandbox}/hibernate")
    assert (await http.get(_files(sandbox), params={"path": "kept.txt"})).content == b"still here"
    assert (await http.get(f"/sandboxes/{sandbox}")).json()["status"] == "running"


# -- signed URLs ----------------------------------------------------------------------------


async def test_signed_download_and_upload_need_no_api_key(http: httpx.AsyncClient, sandbox: str) -> None:
    await http.put(_files(sandbox), params={"path": "shared.txt"}, content=b"signed content")
    response = await http.post(f"{_files(sandbox)}/download-url", json={"path": "shared.txt"})
    assert response.status_code == 200
    body = response.json()
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", body["expiresAt"])
    async with httpx.AsyncClient() as anonymous:
        download = await anonymous.get(body["url"])
        assert download.status_code == 200
        assert download.content == b"signed content"
        upload_url = (await http.post(f"{_files(sandbox)}/upload-url", json={"path": "up/new.txt"})).json()[
            "url"
        ]
        assert (await anonymous.put(upload_url, content=b"from afar")).status_code == 204
    assert (await http.get(_files(sandbox), params={"path": "up/new.txt"})).content == b"from afar"


async def test_signed_url_expiry_defaults_to_an_hour_and_is_capped_at_a_day(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    now = time.time()
    for expires_in, expected in ((0, 3600), (-5, 3600), (120, 120), (10**7, 86400)):
        body = (
            await http.post(f"{_files(sandbox)}/download-url", json={"path": "x", "expiresIn": expires_in})
        ).json()
        expires_at = datetime.strptime(body["expiresAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert abs(expires_at.timestamp() - (now + expected)) < 5


async def test_signed_url_without_path_is_400(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await http.post(f"{_files(sandbox)}/download-url", json={})
    assert (response.status_code, response.json()) == (400, {"error": "path is required"})


async def test_tampered_expired_or_incomplete_signed_urls_are_refused(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    url = (await http.post(f"{_files(sandbox)}/download-url", json={"path": "shared.txt"})).json()["url"]
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    base = f"{local_server.url}{parts.path}"

    async def attempt(**changes: str) -> httpx.Response:
        params = {**query, **changes}
        async with httpx.AsyncClient() as anonymous:
            return await anonymous.get(f"{base}?{urlencode(params)}")

    other_path = await attempt(path="other.txt")
    assert (other_path.status_code, other_path.json()) == (403, {"error": "invalid signature"})
    expired = await attempt(expires=str(int(time.time()) - 10))
    assert (expired.status_code, expired.json()) == (403, {"error": "signed URL expired"})
    garbled = await attempt(signature="zz")
    assert (garbled.status_code, garbled.json()) == (403, {"error": "invalid signature encoding"})
    bad_expiry = await attempt(expires="soon")
    assert bad_expiry.status_code == 400
    assert bad_expiry.json()["error"].startswith("invalid expiration")
    async with httpx.AsyncClient() as anonymous:
        incomplete = await anonymous.get(f"{base}?path=shared.txt")
    assert (incomplete.status_code, incomplete.json()) == (
        400,
        {"error": "path, expires, and signature are required"},
    )


async def test_upload_past_the_size_limit_is_413_and_leaves_no_partial_file(tmp_path: Path) -> None:
    # A server of its own with a tiny limit, driven below HTTP: the limit is the backend's rule.
    config = LocalServerConfig(data_dir=tmp_path / "state", api_key="k", max_file_bytes=1000)
    backend = LocalBackend(config, build_runtime(config))
    await backend.start()
    try:
        sandbox, _ = await backend.sandboxes.create(SandboxRequest())

        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 600
            yield b"x" * 600

        with pytest.raises(BackendError) as refused:
            await backend.files.upload(sandbox.id, "big.bin", body(), None)
        assert refused.value.status == 413
        with pytest.raises(BackendError) as declared:
            await backend.files.upload(sandbox.id, "big.bin", body(), 1200)
        assert declared.value.status == 413
        listing = await backend.files.list_dir(sandbox.id, ".")
        assert "big.bin" not in [entry.name async for batch in listing for entry in batch]
    finally:
        await backend.close()
