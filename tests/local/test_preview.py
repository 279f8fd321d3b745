"""Preview traffic: a server inside a sandbox answers at ``sb-xxxxxxxx-p<port>.<domain>``, no API key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from prefect_opencomputer.local import LocalServer

# Echoes method, path and body, and streams a body back on GET /stream.
ECHO_SERVER = r"""
import http.server, sys

class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, body, status=200):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Seen-Host", self.headers.get("Host", ""))
        self.send_header("X-Seen-Token", self.headers.get("X-OC-Preview-Token", "-"))
        self.send_header("X-Seen-Authorization", self.headers.get("Authorization", "-"))
        self.send_header("X-Seen-Names", ",".join(sorted(name.lower() for name in self.headers)))
        self.send_header("X-Seen-Forwarded-For", self.headers.get("X-Forwarded-For", "-"))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(5):
                chunk = f"part-{i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
            return
        self._reply(f"GET {self.path}".encode())

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self._reply(self.rfile.read(length), status=201)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"""


async def run(http: httpx.AsyncClient, sandbox: str, script: str) -> None:
    response = await http.post(f"/sandboxes/{sandbox}/exec/run", json={"cmd": "sh", "args": ["-c", script]})
    assert response.status_code == 200, response.text
    assert response.json()["exitCode"] == 0, response.json()


def preview_host(local_server: LocalServer, sandbox: str, port: int) -> str:
    return f"{sandbox}-p{port}.localhost:{local_server.config.port}"


@pytest.fixture
async def browser(local_server: LocalServer) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no API key, like a browser opening a preview URL."""
    async with httpx.AsyncClient(base_url=local_server.url, timeout=30) as client:
        yield client


async def wait_until_serving(browser: httpx.AsyncClient, host: str) -> httpx.Response:
    for _ in range(200):
        response = await browser.get("/", headers={"Host": host})
        if response.status_code != 502:
            return response
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing came up behind {host}")


async def test_http_server_started_in_the_background_is_reachable_through_its_preview_host(
    local_server: LocalServer, http: httpx.AsyncClient, browser: httpx.AsyncClient, sandbox: str
) -> None:
    await run(
        http,
        sandbox,
        "mkdir -p site && echo hello-preview > site/index.html && cd site && "
        "nohup python3 -m http.server 8000 >/dev/null 2>&1 &",
    )
    host = preview_host(local_server, sandbox, 8000)
    await wait_until_serving(browser, host)

    response = await browser.get("/index.html", headers={"Host": host})
    assert response.status_code == 200
    assert response.text == "hello-preview\n"


async def test_preview_forwards_method_path_query_and_streamed_bodies_both_ways(
    local_server: LocalServer, http: httpx.AsyncClient, browser: httpx.AsyncClient, sandbox: str
) -> None:
    assert (
        await http.put(f"/sandboxes/{sandbox}/files", params={"path": "echo.py"}, content=ECHO_SERVER)
    ).is_success
    await run(http, sandbox, "nohup python3 echo.py 3000 >/dev/null 2>&1 &")
    host = preview_host(local_server, sandbox, 3000)
    await wait_until_serving(browser, host)

    got = await browser.get("/some/path?x=1&y=two", headers={"Host": host, "Authorization": "Bearer app-own"})
    assert got.text == "GET /some/path?x=1&y=two"
    assert got.headers["X-Seen-Host"] == host
    assert got.headers["X-Seen-Authorization"] == "Bearer app-own"

    payload = bytes(range(256)) * 4096  # 1 MiB, binary

    posted = await browser.post("/upload", content=payload, headers={"Host": host})
    assert posted.status_code == 201
    assert posted.content == payload

    streamed = await browser.get("/stream", headers={"Host": host})
    assert streamed.text == "".join(f"part-{i}\n" for i in range(5))

    head = await browser.head("/", headers={"Host": host})
    assert head.status_code == 200
    assert head.headers["Content-Length"] == "5"
    assert head.content == b""


async def test_preview_never_passes_the_api_key_spoofed_forwarding_or_connection_listed_headers(
    local_server: LocalServer, http: httpx.AsyncClient, browser: httpx.AsyncClient, sandbox: str
) -> None:
    assert (
        await http.put(f"/sandboxes/{sandbox}/files", params={"path": "echo.py"}, content=ECHO_SERVER)
    ).is_success
    await run(http, sandbox, "nohup python3 echo.py 3001 >/dev/null 2>&1 &")
    host = preview_host(local_server, sandbox, 3001)
    await wait_until_serving(browser, host)

    got = await browser.get(
        "/",
        headers={
            "Host": host,
            "X-API-Key": local_server.api_key,
            "X-Forwarded-For": "203.0.113.7",
            "Forwarded": "for=203.0.113.7",
            "X-Real-IP": "203.0.113.7",
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "only for the proxy",
            "X-App-Header": "kept",
        },
    )
    seen = got.headers["X-Seen-Names"].split(",")
    assert "x-app-header" in seen
    for name in ("x-api-key", "forwarded", "x-real-ip", "x-secret-hop"):
        assert name not in seen, name
    # The proxy's own record of who asked, not the client's claim.
    assert got.headers["X-Seen-Forwarded-For"] == "127.0.0.1"


async def test_preview_routes_on_the_first_label_whatever_the_domain(
    local_server: LocalServer, http: httpx.AsyncClient, browser: httpx.AsyncClient, sandbox: str
) -> None:
    await run(
        http,
        sandbox,
        "cd /tmp && echo any-domain > index.html && nohup python3 -m http.server 8080 >/dev/null 2>&1 &",
    )
    await wait_until_serving(browser, preview_host(local_server, sandbox, 8080))

    response = await browser.get("/index.html", headers={"Host": f"{sandbox}-p8080.preview.example.test"})
    assert response.text == "any-domain\n"


async def test_preview_of_a_port_nobody_listens_on_is_502(
    local_server: LocalServer, browser: httpx.AsyncClient, sandbox: str
) -> None:
    response = await browser.get("/", headers={"Host": preview_host(local_server, sandbox, 8001)})
    assert response.status_code == 502
    assert response.json() == {"error": f"nothing is listening on port 8001 in sandbox {sandbox}"}


async def test_preview_of_an_unknown_sandbox_is_404(
    local_server: LocalServer, browser: httpx.AsyncClient
) -> None:
    response = await browser.get("/", headers={"Host": preview_host(local_server, "sb-00000000", 8000)})
    assert response.status_code == 404
    assert response.json() == {"error": "sandbox not found"}


async def test_a_host_that_is_no_preview_is_an_api_request(
    local_server: LocalServer, browser: httpx.AsyncClient
) -> None:
    response = await browser.get(
        "/api/sandboxes", headers={"Host": f"sb-nothex00-p8000.localhost:{local_server.config.port}"}
    )
    assert response.status_code == 401


async def test_preview_auth_token_gates_the_preview_and_is_not_forwarded(
    local_server: LocalServer, http: httpx.AsyncClient, browser: httpx.AsyncClient
) -> None:
    created = await http.post("/sandboxes", json={"previewAuth": {"scheme": "bearer", "token": "auto"}})
    assert created.status_code == 201, created.text
    sandbox, token = created.json()["sandboxID"], created.json()["previewAuthToken"]
    try:
        assert (
            await http.put(f"/sandboxes/{sandbox}/files", params={"path": "echo.py"}, content=ECHO_SERVER)
        ).is_success
        await run(http, sandbox, "nohup python3 echo.py 3000 >/dev/null 2>&1 &")
        host = preview_host(local_server, sandbox, 3000)

        refused = await browser.get("/", headers={"Host": host})
        assert refused.status_code == 401
        wrong = await browser.get("/", headers={"Host": host, "X-OC-Preview-Token": "not-the-token-at-all"})
        assert wrong.status_code == 401

        for _ in range(200):
            allowed = await browser.get("/", headers={"Host": host, "X-OC-Preview-Token": token})
            if allowed.status_code != 502:
                break
            await asyncio.sleep(0.05)
        assert allowed.status_code == 200
        assert allowed.headers["X-Seen-Token"] == "-"

        bearer = await browser.get("/", headers={"Host": host, "Authorization": f"bearer {token}"})
        assert bearer.status_code == 200
        assert bearer.headers["X-Seen-Authorization"] == "-"
    finally:
        await http.delete(f"/sandboxes/{sandbox}")


# Streams forever; notes in a file when its client is gone.
ENDLESS_SERVER = r"""
import http.server, time

class Endless(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"5\r\ntick\n\r\n")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            open("/home/sandbox/client-gone", "w").write("yes")

http.server.ThreadingHTTPServer(("127.0.0.1", 4000), Endless).serve_forever()
"""


async def test_a_client_that_leaves_an_endless_stream_closes_the_upstream(
    local_server: LocalServer, http: httpx.AsyncClient, browser: httpx.AsyncClient, sandbox: str
) -> None:
    written = await http.put(
        f"/sandboxes/{sandbox}/files", params={"path": "endless.py"}, content=ENDLESS_SERVER
    )
    assert written.is_success
    await run(http, sandbox, "nohup python3 endless.py >/dev/null 2>&1 &")
    host = preview_host(local_server, sandbox, 4000)
    for _ in range(200):
        async with browser.stream("GET", "/", headers={"Host": host}) as response:
            if response.status_code == 200:
                async for chunk in response.aiter_bytes():
                    assert chunk.startswith(b"tick")
                    break
                break
        await asyncio.sleep(0.05)

    for _ in range(100):
        gone = await http.get(f"/sandboxes/{sandbox}/files", params={"path": "client-gone"})
        if gone.status_code == 200:
            break
        await asyncio.sleep(0.05)
    assert gone.status_code == 200, "the sandbox's server kept streaming to a client that had left"
