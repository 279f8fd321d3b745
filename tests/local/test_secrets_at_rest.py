"""What the server keeps and prints is private: data dir 0700, state 0600, key out of argv, quiet logs."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from serving import COMMAND, Served, environment, wait_until_serving

from prefect_opencomputer.local.log_limits import LogRateLimit

KEY = "osb_secrets-at-rest-0123456789abcdef"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.slow
def test_a_loose_data_dir_and_state_are_made_private_and_the_key_never_reaches_argv(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    sqlite3.connect(data / "state.db").close()
    (data / "state.db").chmod(0o644)

    server = Served(
        ["--port", "0", "--data-dir", str(data)],
        environment(OPENCOMPUTER_LOCAL_API_KEY=KEY),
        tmp_path / "out.log",
    )
    try:
        wait_until_serving(server.url)
        assert httpx.get(server.url + "/api/sandboxes", headers={"X-API-Key": KEY}).status_code == 200
        assert httpx.get(server.url + "/api/sandboxes").status_code == 401
        argv = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        assert KEY.encode() not in argv
        assert _mode(data) == 0o700
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            assert _mode(data / name) == 0o600, name
        output = server.signal(signal.SIGTERM)
    finally:
        server.stop()
    assert KEY not in output


@pytest.mark.slow
def test_serve_help_says_the_api_key_option_shows_in_the_process_list() -> None:
    result = subprocess.run(
        [*COMMAND, "--help"], env=environment(COLUMNS="200"), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "OPENCOMPUTER_LOCAL_API_KEY" in result.stdout
    assert "process list" in result.stdout


@pytest.mark.slow
@pytest.mark.security
def test_sigterm_stops_a_server_with_live_sandboxes_after_a_refused_fifo_read(tmp_path: Path) -> None:
    server = Served(
        ["--port", "0", "--data-dir", str(tmp_path / "data")],
        environment(OPENCOMPUTER_LOCAL_API_KEY=KEY),
        tmp_path / "out.log",
    )
    try:
        wait_until_serving(server.url)
        with httpx.Client(base_url=server.url + "/api", headers={"X-API-Key": KEY}, timeout=60) as api:
            sandboxes = [api.post("/sandboxes", json={"timeout": 0}).json()["sandboxID"] for _ in range(2)]
            sandbox = sandboxes[0]
            made = api.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": "mkfifo /tmp/stuck"})
            assert made.json()["exitCode"] == 0
            read = api.get(f"/sandboxes/{sandbox}/files", params={"path": "/tmp/stuck"})
            assert read.status_code == 400
            api.post(f"/sandboxes/{sandboxes[1]}/exec/run", json={"cmd": "nohup sleep 600 >/dev/null 2>&1 &"})
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=20)
        assert time.monotonic() - started < 20
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log.read_text()


# -- log rate limits --------------------------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def limited() -> tuple[logging.Logger, _Lines]:
    logger = logging.getLogger("prefect_opencomputer.local.tests.flood")
    logger.propagate = False
    lines = _Lines()
    logger.handlers = [lines]
    logger.filters = [LogRateLimit(burst=3, refill_seconds=0.2)]
    return logger, lines


@pytest.mark.security
def test_a_flood_of_one_message_is_cut_to_a_burst_and_then_summarised(
    limited: tuple[logging.Logger, _Lines],
) -> None:
    logger, lines = limited
    for attempt in range(1000):
        logger.warning("egress refused for %s", f"10.0.0.{attempt % 250}")
    assert len(lines.records) == 3
    time.sleep(0.25)
    logger.warning("egress refused for %s", "10.0.0.1")
    assert lines.records[-1].getMessage() == "egress refused for 10.0.0.1 (997 similar messages suppressed)"
    logger.warning("another message entirely")
    assert lines.records[-1].getMessage() == "another message entirely"


def test_a_repeated_failure_carries_its_traceback_once(limited: tuple[logging.Logger, _Lines]) -> None:
    logger, lines = limited
    for _ in range(3):
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            logger.exception("accept failed")
    assert [record.exc_info is not None for record in lines.records] == [True, False, False]
