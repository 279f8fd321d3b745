"""Async exec on the wire (`exec/run-async`, `exec/{id}/result`), which the TypeScript SDK runs on."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from prefect_opencomputer.local.backend import exec as exec_sessions

EXEC_ID = re.compile(r"^[0-9a-f]{8}$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def _run_async(http: httpx.AsyncClient, sandbox: str, **body: object) -> httpx.Response:
    return await http.post(f"/sandboxes/{sandbox}/exec/run-async", json=body)


async def _finished(http: httpx.AsyncClient, sandbox: str, exec_id: str) -> dict[str, object]:
    """Poll the result until the command has exited."""
    for _ in range(60):
        response = await http.get(f"/sandboxes/{sandbox}/exec/{exec_id}/result")
        assert response.status_code == 200, response.text
        result: dict[str, object] = response.json()
        if not result["running"]:
            return result
    raise AssertionError("the command never finished")


async def test_a_fast_command_answers_inline_200_with_its_result(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    response = await _run_async(http, sandbox, cmd="sh", args=["-c", "echo out; echo err >&2; exit 3"])
    assert response.status_code == 200
    assert response.json() == {"exitCode": 3, "stdout": "out\n", "stderr": "err\n"}


async def test_a_slow_command_answers_202_and_its_result_long_polls_until_it_exits(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    response = await _run_async(http, sandbox, cmd="sh", args=["-c", "sleep 1.5; echo done"])
    assert response.status_code == 202
    started = response.json()
    assert set(started) == {"execId", "running", "startedAt"}
    assert EXEC_ID.match(started["execId"]) and started["running"] is True
    assert RFC3339.match(started["startedAt"])

    began = time.monotonic()
    first = (await http.get(f"/sandboxes/{sandbox}/exec/{started['execId']}/result")).json()
    assert first["running"] is True and "exitCode" not in first
    assert time.monotonic() - began >= 0.4  # it waited for the command before answering
    result = await _finished(http, sandbox, started["execId"])
    assert result == {"running": False, "exitCode": 0, "stdout": "done\n", "stderr": ""}
    # Kept after exit: polling again gives the same answer.
    assert await _finished(http, sandbox, started["execId"]) == result


async def test_run_async_is_argv_only_so_a_bare_shell_string_fails(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    response = await _run_async(http, sandbox, cmd="echo hi")
    # As the service: accepted, and the result says the command never started.
    assert response.status_code == 202
    result = await _finished(http, sandbox, response.json()["execId"])
    assert result == {
        "running": False,
        "exitCode": -1,
        "stdout": "",
        "stderr": "",
        "error": "create exec session in VM: rpc error: code = Unknown desc = start command: "
        'exec: "echo hi": executable file not found in $PATH',
    }


async def test_missing_cmd_is_400_and_unknown_exec_is_404(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await _run_async(http, sandbox, args=["x"])
    assert (response.status_code, response.json()) == (400, {"error": "cmd is required"})
    missing = await http.get(f"/sandboxes/{sandbox}/exec/deadbeef/result")
    assert missing.status_code == 404
    assert missing.json() == {"error": "exec deadbeef not found"}


async def test_the_run_timeout_kills_the_command_with_exit_minus_one(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    response = await _run_async(http, sandbox, cmd="sleep", args=["30"], timeout=1)
    assert response.status_code == 202
    result = await _finished(http, sandbox, response.json()["execId"])
    assert result["exitCode"] == -1


async def test_output_past_the_scrollback_is_never_inline_and_flagged_truncated(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    script = "head -c 1200000 /dev/zero | tr '\\0' a; echo; echo tail"
    response = await _run_async(http, sandbox, cmd="sh", args=["-c", script])
    assert response.status_code == 202
    result = await _finished(http, sandbox, response.json()["execId"])
    assert result["truncated"] is True and result["exitCode"] == 0
    stdout = result["stdout"]
    assert isinstance(stdout, str) and stdout.endswith("\ntail\n") and len(stdout) <= 1024 * 1024


async def test_results_are_forgotten_after_the_retention_time(
    http: httpx.AsyncClient, sandbox: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    response = await _run_async(http, sandbox, cmd="sh", args=["-c", "sleep 0.6; echo late"])
    exec_id = response.json()["execId"]
    await _finished(http, sandbox, exec_id)
    monkeypatch.setattr(exec_sessions, "FINISHED_RETENTION_SECONDS", 0.0)
    assert (await http.get(f"/sandboxes/{sandbox}/exec/{exec_id}/result")).status_code == 404


async def test_run_async_on_a_killed_sandbox_is_410(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await _run_async(http, sandbox, cmd="sh", args=["-c", "sleep 0.6"])
    exec_id = response.json()["execId"]
    await http.delete(f"/sandboxes/{sandbox}")
    assert (await _run_async(http, sandbox, cmd="true")).status_code == 410
    assert (await http.get(f"/sandboxes/{sandbox}/exec/{exec_id}/result")).status_code == 410


async def test_run_async_wakes_a_hibernated_sandbox(http: httpx.AsyncClient, sandbox: str) -> None:
    assert (await http.post(f"/sandboxes/{sandbox}/hibernate")).status_code == 200
    response = await _run_async(http, sandbox, cmd="echo", args=["awake"])
    assert response.status_code == 200 and response.json()["stdout"] == "awake\n"


async def test_a_nul_byte_in_an_async_command_is_a_400(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await _run_async(http, sandbox, cmd="echo", args=["a\0b"])
    assert response.status_code == 400
    assert "NUL" in response.json()["error"]
