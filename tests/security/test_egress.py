"""Class 5: from inside a sandbox, this host's own services stay out of reach.

Only loopback and this host's own interface address are ever contacted; other ranges are
checked against the egress policy function alone, without sending them traffic.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest

from prefect_opencomputer.local import LocalServer
from prefect_opencomputer.local.sandbox.egress import destination_allowed
from tests.security.conftest import run

pytestmark = pytest.mark.security

CONNECT = (
    'python3 -c "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); '
    "print('connected')\""
)


def host_interface_address() -> str | None:
    """This host's first global IPv4 address, from ``ip -j addr``."""
    try:
        out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for link in json.loads(out):
        for address in link.get("addr_info", []):
            if address.get("family") == "inet" and address.get("scope") == "global":
                return str(address["local"])
    return None


@dataclass
class Listener:
    port: int
    reached: list[bytes] = field(default_factory=list)


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    """A TCP listener on every host address; it notes every connection that reaches it."""
    state = Listener(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.reached.append(await reader.read(100))
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nreached")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "0.0.0.0", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    await server.wait_closed()


async def test_the_hosts_own_interface_address_is_out_of_reach(
    http: httpx.AsyncClient, sandbox: str, listener: Listener
) -> None:
    address = host_interface_address()
    if address is None:
        pytest.skip("this host has no global IPv4 address")
    direct = await run(http, sandbox, f"{CONNECT} {address} {listener.port}")
    assert "connected" not in direct["stdout"]
    fetched = await run(http, sandbox, f"curl -sS --max-time 10 http://{address}:{listener.port}/")
    assert "reached" not in fetched["stdout"]
    assert listener.reached == [], "a sandbox reached a service listening on this host"


async def test_udp_to_the_hosts_own_interface_address_never_arrives(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    address = host_interface_address()
    if address is None:
        pytest.skip("this host has no global IPv4 address")
    loop = asyncio.get_running_loop()
    arrived: list[bytes] = []

    class Note(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            arrived.append(data)

    transport, _ = await loop.create_datagram_endpoint(Note, local_addr=("0.0.0.0", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        send = (
            'python3 -c "import socket,sys; u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); '
            "u.sendto(b'uid', (sys.argv[1], int(sys.argv[2]))); print('sent')\""
        )
        to_host = await run(http, sandbox, f"{send} {address} {port}")
        assert "PermissionError" in to_host["stderr"], to_host  # dropped in the sandbox's namespace
        own_loopback = await run(http, sandbox, f"{send} 127.0.0.1 {port}")
        assert own_loopback["stdout"] == "sent\n", own_loopback  # the sandbox's own, not the host's
        await asyncio.sleep(0.5)  # a datagram that got out would have arrived by now
        assert arrived == [], "a sandbox's datagram reached a socket of this host"
    finally:
        transport.close()


RELAY_PROBE = """
import json, os, socket
seen = {"uid": os.getuid()}
options = (("SO_MARK", socket.SOL_SOCKET, socket.SO_MARK), ("IP_TRANSPARENT", socket.SOL_IP, 19))
for name, level, option in options:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).setsockopt(level, option, 1)
        seen[name] = "set"
    except OSError as error:
        seen[name] = type(error).__name__
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("1.1.1.1", 53))
    seen["foreign_bind"] = "bound"
except OSError as error:
    seen["foreign_bind"] = type(error).__name__
print(json.dumps(seen))
"""


async def test_the_sandboxs_root_cannot_take_the_datagram_relays_place(
    http: httpx.AsyncClient, sandbox: str
) -> None:
    # Marks and transparent sockets are what the relay's own sockets use; root inside gets neither.
    script = base64.b64encode(RELAY_PROBE.encode()).decode()
    out = await run(http, sandbox, f"echo {script} | base64 -d > /tmp/probe.py && sudo python3 /tmp/probe.py")
    assert json.loads(out["stdout"]) == {
        "uid": 0,
        "SO_MARK": "PermissionError",
        "IP_TRANSPARENT": "PermissionError",
        "foreign_bind": "OSError",
    }, out


async def test_the_api_servers_loopback_port_is_not_the_sandboxs_loopback(
    http: httpx.AsyncClient, sandbox: str, local_server: LocalServer
) -> None:
    port = urlsplit(local_server.url).port
    direct = await run(http, sandbox, f"{CONNECT} 127.0.0.1 {port}")
    assert direct["exitCode"] != 0
    assert "ConnectionRefusedError" in direct["stderr"]


def reachable(address: str) -> bool:
    """The egress policy's verdict on one address, for a port a server would listen on."""
    return destination_allowed(address, 443)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "198.18.0.1",
        "198.19.255.1",
        "192.0.2.1",
        "0.0.0.0",
        "::1",
        "fd00::1",
        "fe80::1",
        "::ffff:10.0.0.1",
    ],
)
def test_the_egress_policy_refuses_non_public_ranges(address: str) -> None:
    assert not reachable(address)


def test_the_egress_policy_refuses_this_hosts_own_address() -> None:
    address = host_interface_address()
    if address is None:
        pytest.skip("this host has no global IPv4 address")
    assert not reachable(address)
