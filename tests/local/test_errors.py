"""Client mistakes get the service's error shapes: 400/404/405/413/501 JSON, never a 422 or a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from prefect_opencomputer.local import LocalServer


async def test_malformed_json_is_400_invalid_request_body(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/sandboxes", content=b'{"templateID": "base",', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("invalid request body: ")


async def test_wrong_field_type_is_400_not_422(http: httpx.AsyncClient, sandbox: str) -> None:
    response = await http.post(f"/sandboxes/{sandbox}/timeout", json={"timeout": "soon"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("invalid request body: ")
    assert "timeout" in error


async def test_json_body_above_the_limit_is_413(http: httpx.AsyncClient, local_server: LocalServer) -> None:
    too_big = local_server.config.max_json_bytes + 1
    response = await http.post("/sandboxes", json={"templateID": "base", "metadata": {"pad": "x" * too_big}})
    assert response.status_code == 413
    assert response.json() == {"error": "request body too large"}


async def test_chunked_json_body_above_the_limit_is_413_without_content_length(
    http: httpx.AsyncClient, local_server: LocalServer
) -> None:
    chunk = b" " * 65536
    chunks = local_server.config.max_json_bytes // len(chunk) + 2

    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield chunk

    response = await http.post("/sandboxes", content=body(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {"error": "request body too large"}


async def test_server_keeps_serving_after_an_oversized_body(http: httpx.AsyncClient) -> None:
    await http.post("/sandboxes", content=b"x" * (3 * 1024 * 1024))
    response = await http.get("/sandboxes")
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/api/no-such-route", "/no-such-route", "/api/sandboxes/sb-00000000/nope"])
async def test_unknown_route_is_404_with_echo_message(local_server: LocalServer, path: str) -> None:
    async with httpx.AsyncClient(base_url=local_server.url) as client:
        response = await client.get(path, headers={"X-API-Key": local_server.api_key})
    assert response.status_code == 404
    assert response.json() == {"message": "Not Found"}


async def test_wrong_method_is_405_with_echo_message(http: httpx.AsyncClient) -> None:
    response = await http.patch("/sandboxes", json={})
    assert response.status_code == 405
    assert response.json() == {"message": "Method Not Allowed"}


async def test_unknown_sandbox_is_404_sandbox_not_found(http: httpx.AsyncClient) -> None:
    response = await http.get("/sandboxes/sb-00000000")
    assert response.status_code == 404
    assert response.json() == {"error": "sandbox not found"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/sandboxes/{sb}/migrate"),
        ("PUT", "/sandboxes/{sb}/limits"),
        ("GET", "/sandboxes/{sb}/mounts"),
        ("POST", "/sandboxes/{sb}/agent"),
        ("GET", "/sandboxes/{sb}/logs"),
        ("GET", "/sandboxes/{sb}/allowed-hosts"),
        ("POST", "/sandboxes/{sb}/token/refresh"),
        ("GET", "/secret-stores"),
        ("PUT", "/secret-stores/abc/secrets/TOKEN"),
        ("GET", "/templates"),
        ("GET", "/capacity/calendar"),
        ("POST", "/capacity/reservations"),
        ("POST", "/images/python/patches"),
    ],
)
async def test_unsupported_route_is_501_with_a_clear_error(
    http: httpx.AsyncClient, sandbox: str, method: str, path: str
) -> None:
    response = await http.request(method, path.format(sb=sandbox), json={})
    assert response.status_code == 501, response.text
    assert response.json()["error"].endswith("is not supported by the local server")


@pytest.mark.parametrize(
    ("path", "missing"),
    [
        ("/sandboxes/sb-00000000/mounts", "sandbox not found"),
        ("/sandboxes/sb-00000000/allowed-hosts", "sandbox not found"),
        ("/sandboxes/checkpoints/00000000-0000-4000-8000-000000000000/publish", "checkpoint not found"),
        ("/snapshots/no-such-snapshot/publish", "snapshot not found"),
        ("/snapshots/no-such-snapshot/unpublish", "snapshot not found"),
    ],
)
async def test_unsupported_route_about_something_missing_is_404_first(
    http: httpx.AsyncClient, path: str, missing: str
) -> None:
    response = await http.post(path, json={})
    assert (response.status_code, response.json()) == (404, {"error": missing})


async def test_unsupported_routes_still_require_the_api_key(local_server: LocalServer) -> None:
    async with httpx.AsyncClient(base_url=local_server.api_url) as client:
        response = await client.get("/secret-stores")
    assert response.status_code == 401
