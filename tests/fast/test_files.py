"""Files routes, signed URLs included: success and error shapes over real HTTP."""

from __future__ import annotations

import httpx

from tests.fast.conftest import FastServer
from tests.fast.coverage import covers, error_of

MISSING = "sb-00000000"


@covers(
    "PUT /api/sandboxes/{sandbox_id}/files",
    "GET /api/sandboxes/{sandbox_id}/files",
    "GET /api/sandboxes/{sandbox_id}/files/list",
    "POST /api/sandboxes/{sandbox_id}/files/mkdir",
    "DELETE /api/sandboxes/{sandbox_id}/files",
)
async def test_write_read_list_mkdir_delete(http: httpx.AsyncClient, sandbox: str) -> None:
    files = f"/sandboxes/{sandbox}/files"
    assert (await http.post(f"{files}/mkdir", params={"path": "work/sub"})).status_code == 204
    assert (await http.put(files, params={"path": "work/a.txt"}, content=b"alpha")).status_code == 204
    assert (await http.get(files, params={"path": "work/a.txt"})).content == b"alpha"
    ran = await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": "cat", "args": ["work/a.txt"]})
    assert ran.json()["stdout"] == "alpha"  # what the API wrote, the sandbox's commands read
    names = {
        entry["name"]: entry["isDir"]
        for entry in (await http.get(f"{files}/list", params={"path": "work"})).json()
    }
    assert names == {"a.txt": False, "sub": True}
    assert (await http.delete(files, params={"path": "work/a.txt"})).status_code == 204
    gone = await http.get(files, params={"path": "work/a.txt"})
    assert gone.status_code == 404 and error_of(gone.json())
    not_dir = await http.get(f"{files}/list", params={"path": "nowhere"})
    assert not_dir.status_code == 404 and error_of(not_dir.json())
    escape = await http.get(files, params={"path": "../../../../etc/passwd"})
    assert escape.status_code in (400, 403, 404) and error_of(escape.json())
    no_path = await http.post(f"{files}/mkdir")
    assert no_path.status_code == 400 and error_of(no_path.json())
    # Deleting what is not there is no error (as ``rm -f``).
    assert (await http.delete(files, params={"path": "never-there"})).status_code == 204
    assert (await http.get(f"/sandboxes/{MISSING}/files", params={"path": "a"})).status_code == 404


@covers(
    "POST /api/sandboxes/{sandbox_id}/files/upload-url",
    "POST /api/sandboxes/{sandbox_id}/files/download-url",
    "PUT /api/sandboxes/{sandbox_id}/files/upload",
    "GET /api/sandboxes/{sandbox_id}/files/download",
)
async def test_signed_urls(http: httpx.AsyncClient, sandbox: str, local_server: FastServer) -> None:
    upload = await http.post(f"/sandboxes/{sandbox}/files/upload-url", json={"path": "signed.txt"})
    assert upload.status_code == 200, upload.text
    download = await http.post(f"/sandboxes/{sandbox}/files/download-url", json={"path": "signed.txt"})
    assert download.status_code == 200, download.text
    async with httpx.AsyncClient() as anonymous:  # the URL is the credential: no API key
        assert (await anonymous.put(upload.json()["url"], content=b"via url")).status_code == 204
        assert (await anonymous.get(download.json()["url"])).content == b"via url"
        base = f"{local_server.api_url}/sandboxes/{sandbox}/files"
        incomplete = await anonymous.get(f"{base}/download?path=signed.txt")
        assert incomplete.status_code == 400
        assert error_of(incomplete.json()) == "path, expires, and signature are required"
        forged = await anonymous.put(f"{base}/upload?path=signed.txt&expires=9999999999&signature=00")
        assert forged.status_code in (401, 403) and error_of(forged.json())
    no_path = await http.post(f"/sandboxes/{sandbox}/files/download-url", json={})
    assert no_path.status_code == 400 and error_of(no_path.json())
    missing = await http.post(f"/sandboxes/{MISSING}/files/upload-url", json={"path": "a"})
    assert missing.status_code == 404
