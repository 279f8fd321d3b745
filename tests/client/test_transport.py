"""Base URL, credentials and retry behaviour that need no sandbox (real sockets, no server needed)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from prefect_opencomputer.client import (
    BadRequestError,
    NotFoundError,
    OpenComputerClient,
    RateLimitedError,
    RetryPolicy,
    ServerError,
    TransportError,
)
from prefect_opencomputer.client._transport import error_from_response

FAST_RETRY = RetryPolicy(max_attempts=4, backoff_initial=0.01, backoff_max=0.05, retry_after_max=0.05)
KEY = "osb_" + "ab" * 32


@pytest.mark.parametrize(
    ("api_url", "api_base"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/api"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/api"),
        ("https://app.example.dev/api", "https://app.example.dev/api"),
        ("https://app.example.dev/api/", "https://app.example.dev/api"),
    ],
)
async def test_api_is_appended_to_the_url_unless_present(api_url: str, api_base: str) -> None:
    async with OpenComputerClient(api_key=KEY, api_url=api_url) as client:
        assert client.api_base == api_base


async def test_url_and_key_fall_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCOMPUTER_API_URL", "http://10.0.0.1:9")
    monkeypatch.setenv("OPENCOMPUTER_API_KEY", KEY)
    async with OpenComputerClient() as client:
        assert client.api_base == "http://10.0.0.1:9/api"
        assert client._transport.auth_headers() == {"X-API-Key": KEY}


async def test_default_url_is_the_hosted_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENCOMPUTER_API_URL", raising=False)
    monkeypatch.delenv("OPENCOMPUTER_API_KEY", raising=False)
    async with OpenComputerClient() as client:
        assert client.api_base == "https://app.opencomputer.dev/api"
        assert client._transport.auth_headers() == {}  # no empty X-API-Key header


async def test_api_key_never_appears_in_reprs() -> None:
    async with OpenComputerClient(api_key=KEY, api_url="http://127.0.0.1:1") as client:
        attachment = client.exec.attach("sb-12345678", "ab12cd34")
        for text in (repr(client), str(client), repr(client.sandboxes), repr(attachment)):
            assert KEY not in text


def test_error_bodies_of_both_shapes_become_the_message() -> None:
    handler = error_from_response(404, b'{"error":"sandbox not found"}', {})
    framework = error_from_response(404, b'{"message":"Not Found"}', {})
    plain = error_from_response(502, b"Bad Gateway", {})

    assert isinstance(handler, NotFoundError) and handler.message == "sandbox not found"
    assert framework.message == "Not Found"
    assert isinstance(plain, ServerError) and plain.message == "Bad Gateway"


def test_only_marked_429_and_503_are_retryable() -> None:
    migrating = error_from_response(
        503,
        b'{"error":"sandbox is migrating","code":"sandbox_migrating","retryable":true}',
        {"retry-after": "1"},
    )
    no_workers = error_from_response(503, b'{"error":"no workers available"}', {})
    at_limit = error_from_response(
        429, b'{"error":"concurrent sandbox limit reached","active":5,"limit":5}', {}
    )

    assert migrating.retryable and migrating.retry_after == 1.0 and migrating.code == "sandbox_migrating"
    assert not no_workers.retryable
    assert isinstance(at_limit, RateLimitedError) and not at_limit.retryable


def test_an_echoed_key_is_scrubbed_from_error_messages() -> None:
    error = error_from_response(400, f'{{"error":"bad key {KEY}"}}'.encode(), {}, secret=KEY)

    assert isinstance(error, BadRequestError)
    assert KEY not in str(error) and KEY not in repr(error)


def test_backoff_grows_and_retry_after_is_capped() -> None:
    policy = RetryPolicy(backoff_initial=1.0, backoff_max=4.0, retry_after_max=10.0)

    assert 0.5 <= policy.delay(1) <= 1.0
    assert 2.0 <= policy.delay(3) <= 4.0
    assert 2.0 <= policy.delay(10) <= 4.0
    assert policy.delay(1, retry_after=120) == 10.0


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_refused_connection_is_retried_and_reported_as_not_ambiguous() -> None:
    async with OpenComputerClient(
        api_key=KEY, api_url=f"http://127.0.0.1:{_closed_port()}", retry=FAST_RETRY
    ) as client:
        with pytest.raises(TransportError) as caught:
            await client.sandboxes.create()

    assert caught.value.ambiguous is False
    assert "never reached" in str(caught.value) and KEY not in str(caught.value)


class _DroppingServer:
    """Accepts TCP connections, reads the request, and hangs up without answering."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.read(1024)
        writer.close()

    async def __aenter__(self) -> _DroppingServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def dropping_server() -> AsyncIterator[_DroppingServer]:
    async with _DroppingServer() as server:
        yield server


async def test_dropped_read_is_retried_but_dropped_command_is_not(dropping_server: _DroppingServer) -> None:
    url = f"http://127.0.0.1:{dropping_server.port}"
    async with OpenComputerClient(api_key=KEY, api_url=url, retry=FAST_RETRY) as client:
        with pytest.raises(TransportError) as read_failure:
            await client.sandboxes.get("sb-12345678")
        reads = dropping_server.connections

        with pytest.raises(TransportError) as run_failure:
            await client.exec.run("sb-12345678", "echo once")
        runs = dropping_server.connections - reads

    assert reads == FAST_RETRY.max_attempts
    assert runs == 1 and run_failure.value.ambiguous
    assert read_failure.value.ambiguous  # it reached the server; a GET just does not care


async def test_dropped_sandbox_create_says_the_sandbox_may_exist(dropping_server: _DroppingServer) -> None:
    url = f"http://127.0.0.1:{dropping_server.port}"
    async with OpenComputerClient(api_key=KEY, api_url=url, retry=FAST_RETRY) as client:
        with pytest.raises(TransportError) as caught:
            await client.sandboxes.create()

    assert dropping_server.connections == 1
    assert caught.value.ambiguous and "may exist" in str(caught.value)
