"""Mistakes a program can make, answered with the hosted service's statuses and messages.

Through the official Python SDK where it has the call: a flow that handles these errors there
handles them here.
"""

from __future__ import annotations

import httpx
import pytest
from opencomputer import Sandbox

from prefect_opencomputer.local import LocalServer

pytestmark = pytest.mark.slow

AGENT = "rpc error: code = Unknown desc = "


def _refusal(caught: pytest.ExceptionInfo[httpx.HTTPStatusError]) -> tuple[int, str]:
    response = caught.value.response
    return response.status_code, response.json()["error"]


async def test_run_in_a_missing_working_directory_is_the_agents_500(sdk_sandbox: Sandbox) -> None:
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await sdk_sandbox.exec.run("echo never", cwd="/no/such/dir", timeout=30)
    assert _refusal(caught) == (
        500,
        f"exec in {sdk_sandbox.sandbox_id}: {AGENT}exec start: "
        "fork/exec /usr/bin/sh: no such file or directory",
    )
    # The SDK runs `sh -c`, found on the PATH as the service finds it. A file in the way fails too.
    await sdk_sandbox.files.write("/tmp/plain.txt", "x")
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await sdk_sandbox.exec.run("echo never", cwd="/tmp/plain.txt", timeout=30)
    assert _refusal(caught)[1].endswith("fork/exec /usr/bin/sh: not a directory")
    # Past 30 s the answer is already a 200 when the start fails: the error is its body, and the
    # SDK (as against the service) finds no exit code in it.
    with pytest.raises(KeyError, match="exitCode"):
        await sdk_sandbox.exec.run("echo never", cwd="/no/such/dir", timeout=60)
    assert (await sdk_sandbox.exec.run("pwd", cwd="/tmp")).stdout == "/tmp\n"
    # Directories on the sandbox's other mounts are found too.
    assert (await sdk_sandbox.exec.run("pwd", cwd="/dev/shm", timeout=30)).stdout == "/dev/shm\n"
    assert (await sdk_sandbox.exec.run("pwd", cwd="/run", timeout=30)).stdout == "/run\n"


async def test_session_started_with_a_shell_string_is_refused_as_hosted(sdk_sandbox: Sandbox) -> None:
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await sdk_sandbox.exec.start("echo hi")
    assert _refusal(caught) == (
        500,
        f"create exec session in VM: {AGENT}start command: "
        'exec: "echo hi": executable file not found in $PATH',
    )
    assert await sdk_sandbox.exec.list() == []

    with pytest.raises(httpx.HTTPStatusError) as caught:
        await sdk_sandbox.exec.start("ls", cwd="/no/such/dir")
    assert _refusal(caught)[1].endswith("start command: fork/exec /usr/bin/ls: no such file or directory")

    # The argv form starts, and a name with a slash is taken as it is.
    session = await sdk_sandbox.exec.start("echo", args=["hi"])
    assert await session.done == 0
    await session.close()
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await sdk_sandbox.exec.start("/no/such/tool")
    assert _refusal(caught)[1].endswith(
        'exec: "/no/such/tool": stat /no/such/tool: no such file or directory'
    )


async def test_reading_a_directory_or_listing_a_file_is_the_agents_500(sdk_sandbox: Sandbox) -> None:
    await sdk_sandbox.files.write("notes/a.txt", "x")
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await sdk_sandbox.files.read("notes")
    directory = "/home/sandbox/notes"
    assert _refusal(caught) == (
        500,
        f"recv first chunk: {AGENT}read {directory}: read {directory}: is a directory",
    )
    assert not await sdk_sandbox.files.exists("notes")  # the SDK's exists() reads: false for a directory

    with pytest.raises(httpx.HTTPStatusError) as caught:
        await sdk_sandbox.files.list("notes/a.txt")
    path = "/home/sandbox/notes/a.txt"
    assert _refusal(caught) == (500, f"{AGENT}readdir {path}: open {path}: not a directory")


@pytest.mark.parametrize("key", ["", "osb_" + "0" * 64])
async def test_missing_or_invalid_key_is_the_front_doors_401(local_server: LocalServer, key: str) -> None:
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await Sandbox.create(api_url=local_server.url, api_key=key)
    assert _refusal(caught) == (401, "missing or invalid API key")
