"""A fresh sandbox of the default template is the hosted sandbox's environment, over the API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

# What the hosted image puts on the PATH (Debian's names where they differ: vi is vim-tiny).
TOOLS = " ".join(
    (
        "python python3 pip pip3 node npm npx git git-lfs gcc g++ make cmake pkg-config curl wget jq",
        "sqlite3 ps top ip ifconfig dig rsync zip unzip file less strace htop tree nano vi supervisord sudo",
        "busybox bzip2 gzip tar xz kmod locale-gen fusermount3",
    )
)


async def run(http: httpx.AsyncClient, sandbox: str, script: str, timeout: int = 120) -> dict[str, object]:
    response = await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": script, "timeout": timeout})
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


@pytest.fixture
async def default_sandbox(http: httpx.AsyncClient) -> AsyncIterator[str]:
    created = await http.post("/sandboxes", json={"templateID": "default", "timeout": 0, "memoryMB": 1024})
    assert created.status_code == 201, created.text
    sandbox: str = created.json()["sandboxID"]
    yield sandbox
    await http.delete(f"/sandboxes/{sandbox}")


async def test_the_user_is_sandbox_with_passwordless_sudo_and_a_workspace(
    http: httpx.AsyncClient, default_sandbox: str
) -> None:
    script = (
        'id -un; id -u; id -Gn; sudo -n id -un; readlink -f /workspace; pwd; grep -c "$(hostname)" /etc/hosts'
    )
    result = await run(http, default_sandbox, script)
    assert str(result["stdout"]).split("\n") == [
        *("sandbox", "1000", "sandbox sudo", "root", "/home/sandbox", "/home/sandbox", "1", "")
    ]


async def test_the_hosted_toolset_is_on_the_path(http: httpx.AsyncClient, default_sandbox: str) -> None:
    check = TOOLS
    result = await run(
        http, default_sandbox, f"for t in {check}; do command -v $t >/dev/null || echo missing $t; done"
    )
    assert result["stdout"] == ""
    versions = await run(http, default_sandbox, "node --version; python --version")
    node, python = str(versions["stdout"]).split()[0], str(versions["stdout"]).split()[-1]
    assert node.startswith("v22.") and python.startswith("3.")


async def test_multiprocessing_and_a_shared_memory_tmpfs_work(
    http: httpx.AsyncClient, default_sandbox: str
) -> None:
    pool = "python3 -c 'import multiprocessing as m; print(m.Pool(2).map(abs, [-1, -2]))'"
    result = await run(http, default_sandbox, f"{pool}; stat -f -c %T /dev/shm")
    assert result["stdout"] == "[1, 2]\ntmpfs\n"


async def test_a_background_process_is_alive_after_hibernate_and_wake(
    http: httpx.AsyncClient, default_sandbox: str
) -> None:
    await run(
        http,
        default_sandbox,
        "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done' >/dev/null 2>&1 &",
    )
    assert (await http.post(f"/sandboxes/{default_sandbox}/hibernate")).status_code == 200
    assert (await http.get(f"/sandboxes/{default_sandbox}")).json()["status"] == "hibernated"
    assert (await http.post(f"/sandboxes/{default_sandbox}/wake")).status_code == 200
    result = await run(
        http, default_sandbox, "a=$(cat /tmp/n); sleep 0.5; b=$(cat /tmp/n); [ $b -gt $a ] && echo counting"
    )
    assert result["stdout"] == "counting\n"


async def test_memory_mb_is_a_real_limit(http: httpx.AsyncClient, default_sandbox: str) -> None:
    hog = "python3 -c 'x = bytearray(1536 * 1024 * 1024); print(len(x))'; echo exit=$?"
    result = await run(http, default_sandbox, hog)
    assert "exit=137" in str(result["stdout"])  # killed by the sandbox's own OOM killer
    assert (await run(http, default_sandbox, "echo still here"))["stdout"] == "still here\n"


@pytest.mark.slow
async def test_pip_install_works_as_the_user_and_dns_and_tcp_need_no_proxy(
    http: httpx.AsyncClient, default_sandbox: str
) -> None:
    script = (
        "env | grep -ci _proxy; getent hosts pypi.org >/dev/null && echo resolved; "
        "python3 -c \"import socket; socket.create_connection(('pypi.org', 443), 10); print('tcp')\"; "
        "pip install --user -q six && python -c 'import six; print(\"six\")'"
    )
    result = await run(http, default_sandbox, script + " || true", timeout=300)
    assert str(result["stdout"]).split() == ["0", "resolved", "tcp", "six"], result
