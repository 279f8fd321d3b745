"""API key enforcement as the hosted front door answers: 401 for a missing or a wrong key, header or query."""

from __future__ import annotations

import logging

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from prefect_opencomputer.local import LocalServer


async def test_request_without_api_key_is_401(local_server: LocalServer) -> None:
    async with httpx.AsyncClient(base_url=local_server.api_url) as client:
        response = await client.get("/sandboxes")
    assert response.status_code == 401
    assert response.json() == {"error": "missing or invalid API key"}


async def test_request_with_wrong_api_key_is_401_like_a_missing_one(local_server: LocalServer) -> None:
    async with httpx.AsyncClient(base_url=local_server.api_url) as client:
        response = await client.get("/sandboxes", headers={"X-API-Key": "osb_not-the-key"})
    assert response.status_code == 401
    assert response.json() == {"error": "missing or invalid API key"}


async def test_api_key_is_accepted_in_the_header(local_server: LocalServer) -> None:
    async with httpx.AsyncClient(base_url=local_server.api_url) as client:
        response = await client.get("/sandboxes", headers={"X-API-Key": local_server.api_key})
    assert response.status_code == 200
    assert isinstance(response.json(), list)


async def test_api_key_is_accepted_in_the_query(local_server: LocalServer) -> None:
    async with httpx.AsyncClient(base_url=local_server.api_url) as client:
        response = await client.get("/sandboxes", params={"api_key": local_server.api_key})
    assert response.status_code == 200


async def test_wrong_key_in_query_is_401_even_with_no_header(local_server: LocalServer) -> None:
    async with httpx.AsyncClient(base_url=local_server.api_url) as client:
        response = await client.get("/sandboxes", params={"api_key": "wrong"})
    assert response.status_code == 401


async def test_websocket_upgrade_without_key_is_refused_before_the_upgrade(
    local_server: LocalServer, sandbox: str
) -> None:
    ws_url = local_server.api_url.replace("http://", "ws://") + f"/sandboxes/{sandbox}/exec/deadbeef"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url):
            pass
    assert refused.value.response.status_code == 401
    assert b"missing or invalid API key" in refused.value.response.body


async def test_websocket_upgrade_with_wrong_query_key_is_401(local_server: LocalServer, sandbox: str) -> None:
    ws_url = local_server.api_url.replace("http://", "ws://") + f"/sandboxes/{sandbox}/exec/deadbeef"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url + "?api_key=wrong"):
            pass
    assert refused.value.response.status_code == 401


async def test_signed_file_urls_need_no_api_key(local_server: LocalServer, sandbox: str) -> None:
    # A signed URL is its own credential: a bad signature is the file route's 403, not auth's 401.
    async with httpx.AsyncClient(base_url=local_server.api_url) as client:
        response = await client.get(
            f"/sandboxes/{sandbox}/files/download",
            params={"path": "/etc/hostname", "expires": "4102444800", "signature": "00" * 32},
        )
    assert response.status_code == 403
    assert response.json()["error"] != "missing or invalid API key"


async def test_api_key_in_a_websocket_query_never_reaches_the_log(
    local_server: LocalServer, sandbox: str, caplog: pytest.LogCaptureFixture
) -> None:
    ws_url = local_server.api_url.replace("http://", "ws://") + f"/sandboxes/{sandbox}/exec/deadbeef"
    with caplog.at_level(logging.INFO, logger="uvicorn.error"), pytest.raises(InvalidStatus):
        async with connect(f"{ws_url}?api_key={local_server.api_key}"):
            pass
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "WebSocket" in logged
    assert local_server.api_key not in logged
    assert "api_key=***" in logged


async def test_a_sandbox_token_in_a_pty_socket_query_never_reaches_the_log(
    local_server: LocalServer, sandbox: str, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    token = (await http.get(f"/sandboxes/{sandbox}")).json()["token"]
    ws_url = local_server.api_url.replace("http://", "ws://") + f"/sandboxes/{sandbox}/pty/deadbeef"
    with caplog.at_level(logging.INFO, logger="uvicorn.error"), pytest.raises(InvalidStatus) as refused:
        async with connect(f"{ws_url}?token={token}"):
            pass
    assert refused.value.response.status_code == 404  # the token was good: the session is what is missing
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "WebSocket" in logged and token not in logged and "token=***" in logged
