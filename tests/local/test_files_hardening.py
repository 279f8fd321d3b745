"""The files API against a hostile sandbox: links, special files, NUL bytes, stuck operations.

Every payload here only plants links, FIFOs and files inside the sandbox and records who owns them.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import httpx
import pytest

from prefect_opencomputer.local.sandbox.fileops import NotRegularFileError, RootedFiles

CALLER = (os.geteuid(), os.getegid())  # what RootedFiles creates belongs to whoever calls it


def _files(sandbox: str) -> str:
    return f"/sandboxes/{sandbox}/files"


async def _run(http: httpx.AsyncClient, sandbox: str, cmd: str) -> str:
    response = await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": cmd})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["exitCode"] == 0, body
    stdout: str = body["stdout"]
    return stdout


# -- RootedFiles on a plain directory: modes are set only on what a call created --------------


@pytest.fixture
def rooted(tmp_path: Path) -> RootedFiles:
    (tmp_path / "home" / "sandbox").mkdir(parents=True)
    return RootedFiles(tmp_path, home="/home/sandbox")


def _owner_and_mode(path: Path) -> tuple[int, int, int]:
    info = os.lstat(path)
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


def test_new_files_and_directories_get_the_callers_ids_and_fixed_modes_in_the_home_too(
    rooted: RootedFiles,
) -> None:
    old = os.umask(0o077)  # a strict server umask must not change the modes
    try:
        with rooted.open_write("made/here/note.txt") as handle:
            handle.write(b"hi")
        with rooted.open_write("/srv/app.txt") as handle:
            handle.write(b"hi")
    finally:
        os.umask(old)
    home = rooted.root / "home" / "sandbox"
    assert _owner_and_mode(home / "made/here/note.txt") == (*CALLER, 0o644)
    assert _owner_and_mode(home / "made/here") == (*CALLER, 0o755)
    assert _owner_and_mode(home / "made") == (*CALLER, 0o755)
    assert _owner_and_mode(rooted.root / "srv/app.txt") == (*CALLER, 0o644)


def test_overwriting_truncates_and_keeps_the_existing_mode(rooted: RootedFiles) -> None:
    existing = rooted.root / "home/sandbox/kept.txt"
    existing.write_bytes(b"a much longer original content")
    existing.chmod(0o600)
    with rooted.open_write("kept.txt") as handle:
        handle.write(b"new")
    assert existing.read_bytes() == b"new"
    assert _owner_and_mode(existing) == (*CALLER, 0o600)


@pytest.mark.security
def test_a_write_through_a_planted_symlink_stays_inside_and_never_chowns_the_target(
    rooted: RootedFiles, tmp_path: Path
) -> None:
    target = rooted.root / "etc" / "shadow-like"
    target.parent.mkdir()
    target.write_bytes(b"root's")
    target.chmod(0o600)
    (rooted.root / "home/sandbox/link").symlink_to("/etc/shadow-like")
    with rooted.open_write("link") as handle:
        handle.write(b"replaced")
    assert target.read_bytes() == b"replaced", "the link resolves inside the root, as hosted follows it"
    assert _owner_and_mode(target) == (os.getuid(), os.getgid(), 0o600)
    assert os.path.islink(rooted.root / "home/sandbox/link")


def test_a_write_through_a_dangling_link_creates_its_target_inside(
    rooted: RootedFiles,
) -> None:
    (rooted.root / "home/sandbox/dangling").symlink_to("/tmp/made-through-link")
    (rooted.root / "tmp").mkdir()
    with rooted.open_write("dangling") as handle:
        handle.write(b"inside")
    made = rooted.root / "tmp/made-through-link"
    assert made.read_bytes() == b"inside"
    assert _owner_and_mode(made) == (*CALLER, 0o644)


@pytest.mark.security
def test_special_files_are_refused_at_once_for_reading_and_writing(rooted: RootedFiles) -> None:
    fifo = rooted.root / "home/sandbox/pipe"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError):
        rooted.open_read("pipe")
    with pytest.raises(NotRegularFileError):  # no reader: ENXIO
        rooted.open_write("pipe")
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(NotRegularFileError):  # a reader: refused by fstat before any byte
            rooted.open_write("pipe")
    finally:
        os.close(reader)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(rooted.root / "home/sandbox/sock"))
        for open_it in (rooted.open_read, rooted.open_write):
            with pytest.raises(NotRegularFileError):
                open_it("sock")


@pytest.mark.security
def test_a_nul_byte_in_a_path_is_refused_not_truncated(rooted: RootedFiles) -> None:
    with pytest.raises(ValueError):
        rooted.open_write("safe.txt\0../../evil")
    assert not (rooted.root / "home/sandbox/safe.txt").exists()
    assert not (rooted.root / "home/evil").exists()


# -- over HTTP ----------------------------------------------------------------------------------


async def test_api_writes_belong_to_root_as_the_hosted_agent_writes_them(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    await http.put(_files(sandbox), params={"path": "api/dir/file.txt"}, content=b"x")
    await http.put(_files(sandbox), params={"path": "/tmp/api-tmp/file.txt"}, content=b"x")
    await http.post(f"{_files(sandbox)}/mkdir", params={"path": "made-by-mkdir"})
    out = await _run(
        http,
        sandbox,
        "stat -c '%U:%G %a' api/dir/file.txt api/dir api /tmp/api-tmp/file.txt made-by-mkdir; "
        "echo mine > api/dir/file.txt 2>/dev/null || echo refused",
    )
    a_file, a_dir = "root:root 644", "root:root 755"
    assert out.split("\n")[:5] == [a_file, a_dir, a_dir, a_file, a_dir]
    assert out.strip().endswith("refused"), "the user needs sudo to change what the API wrote"


@pytest.mark.security
async def test_writing_through_a_link_the_sandbox_planted_leaves_the_targets_owner(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    await _run(http, sandbox, "echo original > mine.txt && chmod 600 mine.txt && ln -s mine.txt planted")
    before = await _run(http, sandbox, "stat -c '%u:%g %a' mine.txt")
    response = await http.put(_files(sandbox), params={"path": "planted"}, content=b"through the link\n")
    assert response.status_code == 204
    out = await _run(http, sandbox, "cat mine.txt; stat -c '%u:%g %a' mine.txt; test -L planted && echo link")
    assert out == f"through the link\n{before}link\n"


@pytest.mark.security
async def test_fifos_are_refused_with_400_without_blocking(http: httpx.AsyncClient, sandbox: str) -> None:
    await _run(http, sandbox, "mkfifo /tmp/lonely /tmp/listened")
    # A reader on one FIFO, so a write-open there would succeed if nothing checked the file type.
    await _run(http, sandbox, "nohup sh -c 'exec cat /tmp/listened' >/dev/null 2>&1 &")
    for path in ("/tmp/lonely", "/tmp/listened"):
        read = await http.get(_files(sandbox), params={"path": path}, timeout=20)
        assert read.status_code == 400, read.text
        assert "not a regular file" in read.json()["error"]
        written = await http.put(_files(sandbox), params={"path": path}, content=b"data", timeout=20)
        assert written.status_code == 400, written.text
        assert "not a regular file" in written.json()["error"]


@pytest.mark.security
@pytest.mark.parametrize(
    ("method", "route"),
    [("GET", ""), ("PUT", ""), ("DELETE", ""), ("GET", "/list"), ("POST", "/mkdir")],
)
async def test_a_nul_byte_in_a_path_is_a_400_json_error_on_every_file_route(
    http: httpx.AsyncClient, sandbox: str, method: str, route: str
) -> None:
    response = await http.request(
        method, f"{_files(sandbox)}{route}", params={"path": "/tmp/a\0b"}, content=b"x"
    )
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "path must not contain a NUL byte"}


@pytest.mark.security
async def test_a_nul_byte_in_exec_cwd_is_a_400_json_error(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": "pwd", "cwd": "/tmp\0/x"})
    assert response.status_code == 400, response.text
    assert "NUL" in response.json()["error"]
