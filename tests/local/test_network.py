"""Sandbox networking against real network namespaces, nftables and (marked slow) the package registry.

Traffic goes only to loopback, this host's own addresses and pypi.org; every other range is checked
through ``destination_allowed`` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from prefect_opencomputer.local.sandbox.egress import (
    GATEWAY_ADDRESS,
    RESOLV_CONF,
    SANDBOX_ADDRESS,
    EgressPolicy,
    destination_allowed,
    host_addresses,
    host_resolver,
)
from prefect_opencomputer.local.sandbox.forwarding import SandboxNetwork
from prefect_opencomputer.local.sandbox.netns import NetworkSetupError
from prefect_opencomputer.local.sandbox.nftables import ListenerPorts, ruleset

REGISTRY = "pypi.org"
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"}


# --- the policy, without traffic ---------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "0.0.0.0",
        "0.1.2.3",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "100.127.255.254",
        "169.254.169.254",
        "192.0.0.8",
        "192.0.2.7",
        "198.18.0.1",
        "198.19.255.1",
        "198.51.100.1",
        "203.0.113.9",
        "224.0.0.251",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "64:ff9b::808:808",
        "2001:db8::1",
        "2002:a00:1::1",
        "2002:808:808::1",
        "192.88.99.1",
        "5f00::1",
        "3fff::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "not-an-address",
    ],
)
def test_special_and_private_destinations_are_refused(address: str) -> None:
    assert not destination_allowed(address, 443)


@pytest.mark.parametrize("address", ["151.101.0.223", "8.8.8.8", "2a04:4e42::223", "::ffff:151.101.0.223"])
def test_global_unicast_destinations_are_allowed(address: str) -> None:
    assert destination_allowed(address, 443)


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_ports_outside_1_to_65535_are_refused(port: int) -> None:
    assert not destination_allowed("151.101.0.223", port)


def test_every_address_of_this_host_is_refused_even_when_declared_public() -> None:
    addresses = host_addresses()
    assert ipaddress.ip_address("127.0.0.1") in addresses
    everything = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    for address in addresses:
        assert not destination_allowed(str(address), 443, also_public=everything)


def test_declared_public_networks_open_special_ranges_but_never_loopback_or_link_local() -> None:
    lab = [ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("127.0.0.0/8")]
    lab.append(ipaddress.ip_network("169.254.0.0/16"))
    assert destination_allowed("203.0.113.9", 443, also_public=lab)
    assert not destination_allowed("127.0.0.1", 443, also_public=lab)
    assert not destination_allowed("169.254.169.254", 80, also_public=lab)
    assert not destination_allowed("198.51.100.1", 443, also_public=lab)


def test_a_sandboxs_policy_opens_registries_to_tcp_only_and_host_ports_only_at_the_gateway() -> None:
    policy = EgressPolicy(registries=(ipaddress.ip_network("203.0.113.9/32"),), host_ports=frozenset({4200}))
    assert policy.allows_connection("203.0.113.9", 443)
    assert not policy.allows_datagram("203.0.113.9", 443)
    assert policy.reaches_host_port(GATEWAY_ADDRESS, 4200)
    assert not policy.reaches_host_port(GATEWAY_ADDRESS, 4201)
    assert not policy.reaches_host_port("127.0.0.1", 4200)
    # The gateway's opened port is the host's loopback, never an ordinary destination.
    assert not policy.allows_connection(GATEWAY_ADDRESS, 4200)


def test_the_registries_exception_opens_the_ports_package_clients_use_and_nothing_else() -> None:
    registry = [ipaddress.ip_network("203.0.113.9/32")]
    assert destination_allowed("203.0.113.9", 443, registries=registry)
    assert destination_allowed("203.0.113.9", 80, registries=registry)
    for port in (22, 53, 8080, 6379):
        assert not destination_allowed("203.0.113.9", port, registries=registry), port
    # Its UDP is refused by the rules (only TCP to those ports passes the fence).
    rules = ruleset(ListenerPorts(1, 2, 3, 4), EgressPolicy(registries=tuple(registry)))
    assert "ip daddr @registries tcp dport { 80, 443 } accept" in rules
    assert "203.0.113.9" not in rules.split("set also_public")[1].split("}")[0]


def test_the_host_resolver_is_the_first_nameserver(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# comment\nsearch example\nnameserver 10.9.8.7\nnameserver 10.9.8.8\n")
    assert host_resolver(resolv) == ("10.9.8.7", 53)


# --- real namespaces ---------------------------------------------------------------------------


@dataclass
class Namespace:
    """A host-owned network namespace, held open by a sleeping process, as the runtime makes them."""

    pid: int
    fd: int
    resolv_conf: Path

    async def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a host binary inside this namespace only, resolving through the sandbox's DNS address."""
        # A private mount namespace for the client alone, so it reads the sandbox's resolv.conf.
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        env = {key: value for key, value in os.environ.items() if key not in _PROXY_VARIABLES}
        process = await asyncio.create_subprocess_exec(
            *("nsenter", f"--net=/proc/{self.pid}/ns/net", "--", "unshare", "--mount", "--"),
            *("sh", "-c", script, str(self.resolv_conf), *argv),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode is not None
        return subprocess.CompletedProcess(argv, process.returncode, stdout.decode(), stderr.decode())

    async def python(self, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return await self.run("python3", "-c", code, timeout=timeout)


def _needs_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and nftables need root")
    for tool in ("unshare", "nsenter", "ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make system-deps)")


@contextlib.contextmanager
def _held_namespace(*unshare: str) -> Iterator[tuple[int, int]]:
    """(pid, descriptor) of a new network namespace held open by a sleeping process."""
    _needs_root_and_tools()
    holder = subprocess.Popen(["unshare", *unshare, "--net", "--", "sleep", "1000"])
    fd = -1
    try:
        own = os.stat("/proc/self/ns/net").st_ino
        deadline = time.monotonic() + 5
        while os.stat(f"/proc/{holder.pid}/ns/net").st_ino == own:
            assert time.monotonic() < deadline, "unshare did not make a network namespace"
            time.sleep(0.01)
        fd = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        yield holder.pid, fd
    finally:
        if fd >= 0:
            os.close(fd)
        holder.kill()
        holder.wait(timeout=10)


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[Namespace]:
    """A fresh network namespace with only lo up, like the one the boot helper makes."""
    with _held_namespace() as (pid, fd):
        subprocess.run(
            ["nsenter", f"--net=/proc/{pid}/ns/net", "--", "ip", "link", "set", "lo", "up"], check=True
        )
        resolv_conf = tmp_path / "resolv.conf"
        resolv_conf.write_text(RESOLV_CONF)
        yield Namespace(pid, fd, resolv_conf)


@pytest.fixture
def self_owned_namespace() -> Iterator[int]:
    """A network namespace owned by a user namespace of its own: its root could rewrite any rule."""
    with _held_namespace("--user", "--map-root-user") as (_, fd):
        yield fd


def _registry_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The registry's own addresses, declared public: here they sit in a documentation range."""
    infos = socket.getaddrinfo(REGISTRY, 443, socket.AF_INET, socket.SOCK_STREAM)
    return [ipaddress.ip_network(info[4][0]) for info in infos]


@pytest.fixture
async def network(namespace: Namespace) -> AsyncIterator[SandboxNetwork]:
    attached = await SandboxNetwork.attach(namespace.fd, name="test", registries=_registry_networks())
    try:
        yield attached
    finally:
        await attached.close()


def _own_socket_count() -> int:
    count = 0
    for entry in os.scandir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # an fd closed while we listed
            count += os.readlink(entry.path).startswith("socket:")
    return count


def _host_ipv4_address() -> str:
    """One of this host's own non-loopback addresses: traffic to it stays on this machine."""
    for address in sorted(host_addresses(), key=str):
        if address.version == 4 and not address.is_loopback:
            return str(address)
    pytest.skip("this host has no non-loopback IPv4 address")


_CONNECT = """
import errno, socket, sys, time
s = socket.socket(); s.settimeout(5); start = time.monotonic()
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.send(b"x"); data = s.recv(1)
    print("open", data)
except OSError as e:
    print(errno.errorcode.get(e.errno, e), round(time.monotonic() - start, 3))
"""


@pytest.mark.parametrize("bind", ["0.0.0.0", "127.0.0.1"])
async def test_the_hosts_own_addresses_and_loopback_are_unreachable_from_inside(
    namespace: Namespace, network: SandboxNetwork, bind: str
) -> None:
    # Inside, 127.0.0.1 is the namespace's own loopback: the host's listener there must stay unseen.
    target = _host_ipv4_address() if bind == "0.0.0.0" else "127.0.0.1"
    with socket.create_server((bind, 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        result = await namespace.run("python3", "-c", _CONNECT, target, str(port))
        assert result.stdout.split()[0] == "ECONNREFUSED", result
        with pytest.raises(BlockingIOError):
            listener.accept()


async def test_loopback_inside_still_works_and_the_server_reaches_it(
    namespace: Namespace, network: SandboxNetwork
) -> None:
    from prefect_opencomputer.local.sandbox import netns

    serve = "import socket; s = socket.create_server(('127.0.0.1', 8123)); print('up', flush=True); "
    serve += "c, _ = s.accept(); c.sendall(c.recv(5)); c.close()"
    server = asyncio.create_task(namespace.python(serve, timeout=20))
    sock = netns.socket_in(namespace.fd)
    loop = asyncio.get_running_loop()
    for _ in range(200):  # as the preview proxy does: connect into the namespace from the host
        try:
            await loop.sock_connect(sock, ("127.0.0.1", 8123))
            break
        except ConnectionRefusedError:
            sock.close()
            sock = netns.socket_in(namespace.fd)
            await asyncio.sleep(0.05)
    with sock:
        await loop.sock_sendall(sock, b"hello")
        assert await asyncio.wait_for(loop.sock_recv(sock, 5), 10) == b"hello"
    assert (await server).returncode == 0


async def test_udp_to_this_host_and_ipv6_do_not_leave(namespace: Namespace, network: SandboxNetwork) -> None:
    address = _host_ipv4_address()
    code = f"""
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"x", ({address!r}, 9)); print("sent")
except OSError as e:
    print("udp", e.errno)
s = socket.socket(socket.AF_INET6)
try:
    s.connect(("2a04:4e42::223", 443)); print("connected")
except OSError as e:
    print("v6", e.errno)
"""
    result = await namespace.python(code)
    assert result.stdout.split() == ["udp", "1", "v6", "101"], result  # EPERM, ENETUNREACH


async def test_the_sandboxes_root_cannot_change_the_rules_or_routes(
    namespace: Namespace, network: SandboxNetwork
) -> None:
    # Root of a user namespace made inside the sandbox's network namespace, as a sandbox's root is:
    # the network namespace belongs to the host's user namespace, so it has no CAP_NET_ADMIN there.
    as_sandbox_root = ("unshare", "--user", "--map-root-user", "--")
    flush = await namespace.run(*as_sandbox_root, "nft", "flush", "ruleset")
    assert flush.returncode != 0 and "Operation not permitted" in flush.stderr, flush
    route = await namespace.run(*as_sandbox_root, "ip", "route", "del", "default")
    assert route.returncode != 0, route
    rules = await namespace.run("nft", "list", "table", "inet", "prefect_sandbox")
    assert "redirect to" in rules.stdout
    routes = await namespace.run("ip", "route", "show", "default")
    assert "via 10.0.2.2" in routes.stdout


async def test_the_namespace_looks_like_a_vm_network(namespace: Namespace, network: SandboxNetwork) -> None:
    addresses = await namespace.run("ip", "-br", "-4", "addr", "show", "dev", "eth0")
    assert f"{SANDBOX_ADDRESS}/24" in addresses.stdout, addresses
    routes = await namespace.run("ip", "-4", "route", "show", "default")
    assert routes.stdout.split()[:5] == ["default", "via", GATEWAY_ADDRESS, "dev", "eth0"], routes


async def test_the_sandboxes_root_can_serve_on_port_80(namespace: Namespace, network: SandboxNetwork) -> None:
    code = "import socket; socket.create_server(('0.0.0.0', 80)); print('bound')"
    result = await namespace.run("unshare", "--user", "--map-root-user", "--", "python3", "-c", code)
    assert result.stdout.strip() == "bound", result


async def test_close_leaves_no_listener_and_no_socket(namespace: Namespace) -> None:
    before = _own_socket_count()
    attached = await SandboxNetwork.attach(namespace.fd, name="test")
    listening = await namespace.run("ss", "-Hltun")
    # The TCP forwarder, DNS over TCP and UDP, and the UDP relay.
    assert listening.stdout.count("127.0.0.1:") == 4, listening
    await attached.close()
    assert (await namespace.run("ss", "-Hltun")).stdout.strip() == ""
    assert _own_socket_count() == before


async def test_attaching_again_replaces_the_rules(namespace: Namespace) -> None:
    first = await SandboxNetwork.attach(namespace.fd, name="test")
    await first.close()
    second = await SandboxNetwork.attach(namespace.fd, name="test")
    try:
        rules = await namespace.run("nft", "list", "ruleset")
        assert rules.stdout.count("table inet prefect_sandbox") == 1
    finally:
        await second.close()


async def test_attach_refuses_the_servers_own_namespace() -> None:
    _needs_root_and_tools()
    before = _own_socket_count()
    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(NetworkSetupError, match="own network namespace"):
            await SandboxNetwork.attach(own)
    finally:
        os.close(own)
    assert _own_socket_count() == before


async def test_attach_refuses_a_namespace_its_sandbox_could_reconfigure(self_owned_namespace: int) -> None:
    with pytest.raises(NetworkSetupError, match="server's user namespace"):
        await SandboxNetwork.attach(self_owned_namespace)


@pytest.mark.slow
@pytest.mark.parametrize("settle", [0, 0.5], ids=["at-once", "relaying"])
async def test_close_drops_forwarded_connections_in_flight(
    namespace: Namespace, network: SandboxNetwork, settle: float
) -> None:
    code = f"""
import socket
try:  # the reset can come before connect() has returned
    s = socket.create_connection(({REGISTRY!r}, 443), timeout=20)
    print("ended", s.recv(1))
except ConnectionResetError:
    print("ended reset")
"""
    before = _own_socket_count()
    client = asyncio.create_task(namespace.python(code, timeout=30))
    deadline = time.monotonic() + 20
    while network.active_connections < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0)  # spin: close as soon as the accept shows, maybe before its first step
    assert network.active_connections == 1
    await asyncio.sleep(settle)
    await network.close()
    result = await client
    # A reset is the server dropping it; the registry, left alone, keeps it open or ends it with a FIN.
    assert result.stdout.strip() == "ended reset", result
    assert network.active_connections == 0
    assert _own_socket_count() <= before - 4  # the four listeners, and both ends of the connection


def test_udp_reaches_a_public_peer_from_its_address_and_nothing_fenced() -> None:
    """In throwaway namespaces (`udp_lab.py`): nothing public answers UDP from this machine."""
    _needs_root_and_tools()
    lab = Path(__file__).with_name("udp_lab.py")
    result = subprocess.run(
        ["unshare", "--net", "--", sys.executable, str(lab)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    # Two datagrams of one flow, answered from the peer's own address, as on a VM; 60 kB whole.
    assert seen["answers"] == [["echo:one", ["198.51.100.7", 7]], ["echo:two", ["198.51.100.7", 7]]]
    assert seen["big"] == 60005
    # Past the cap (4 in the lab: the echo's flow and three more), new flows are dropped.
    assert seen["flows_open"] == 4 and seen["flows_after_close"] == 0
    # The host's and private addresses are dropped by the rules (EPERM at the sender) ...
    assert seen["host"] == seen["private"] == "PermissionError"
    # ... and an address the host gained after the rules were written, by the server's own check.
    assert seen["late_host"] == "TimeoutError"
    assert seen["warnings"] == ["network of lab: datagram to 198.51.100.20:7 refused"]


# --- through to the package registry -------------------------------------------------------------


@pytest.mark.slow
async def test_dns_resolves_over_udp_and_tcp(namespace: Namespace, network: SandboxNetwork) -> None:
    udp = await namespace.run("getent", "hosts", REGISTRY)
    assert udp.returncode == 0 and REGISTRY in udp.stdout, udp
    # A query for the registry's A record over TCP, length-prefixed as RFC 1035 says.
    code = """
import socket, struct
query = bytes.fromhex("abcd01000001000000000000") + b"\\x04pypi\\x03org\\x00" + b"\\x00\\x01\\x00\\x01"
s = socket.create_connection(("10.0.2.3", 53), timeout=10)
s.sendall(struct.pack("!H", len(query)) + query)
stream = s.makefile("rb")
size = struct.unpack("!H", stream.read(2))[0]
answer = stream.read(size)
print(answer[:2].hex(), struct.unpack("!H", answer[6:8])[0])
"""
    tcp = await namespace.python(code)
    transaction, answers = tcp.stdout.split()
    assert transaction == "abcd" and int(answers) >= 1, tcp


async def test_dns_queries_past_the_rate_are_dropped_before_the_resolver(
    namespace: Namespace, network: SandboxNetwork
) -> None:
    # Datagrams too short to be DNS, paced so none is lost on the way: each costs the budget, and
    # none reaches the host's resolver.
    code = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(400):
    s.sendto(b"not-dns", ("10.0.2.3", 53))
    time.sleep(0.001)
"""
    sent = await namespace.python(code)
    assert sent.returncode == 0, sent
    for _ in range(100):
        if network.dns_queries_dropped >= 100:
            break
        await asyncio.sleep(0.05)
    assert network.dns_queries_dropped >= 100


@pytest.mark.slow
async def test_direct_https_to_the_registry_works_without_proxy_settings(
    namespace: Namespace, network: SandboxNetwork
) -> None:
    url = f"https://{REGISTRY}/simple/six/"
    result = await namespace.run(
        "curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", url
    )
    assert result.stdout == "200", result


@pytest.mark.slow
async def test_connections_past_the_cap_are_reset_and_logged_once(
    namespace: Namespace, caplog: pytest.LogCaptureFixture
) -> None:
    cap = 3
    attached = await SandboxNetwork.attach(
        namespace.fd, name="capped", max_connections=cap, registries=_registry_networks()
    )
    code = f"""
import socket, time
held = [socket.create_connection(({REGISTRY!r}, 443), timeout=10) for _ in range({cap})]
time.sleep(1)  # the server accepts them and connects upstream
outcomes = []
for _ in range(4):
    try:  # reset as soon as the server accepts: during connect() or on the first read
        s = socket.create_connection(({REGISTRY!r}, 443), timeout=10)
        outcomes.append("reset" if s.recv(1) == b"" else "data")
    except ConnectionResetError:
        outcomes.append("reset")
    except socket.timeout:
        outcomes.append("open")
print(" ".join(outcomes), flush=True)
time.sleep(2)
"""
    try:
        with caplog.at_level(logging.WARNING, "prefect_opencomputer.local.sandbox.forwarding"):
            client = asyncio.create_task(namespace.python(code))
            deadline = time.monotonic() + 20
            while attached.active_connections < cap and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            sockets_at_cap = _own_socket_count()
            result = await client
        assert result.stdout.split() == ["reset"] * 4, result
        assert attached.active_connections <= cap
        assert _own_socket_count() <= sockets_at_cap + 1
        refusals = [record for record in caplog.records if "already open" in record.getMessage()]
        assert len(refusals) == 1  # the other three are counted for the next report
    finally:
        await attached.close()
    assert attached.active_connections == 0


async def test_the_library_and_the_nft_program_load_the_same_rules_and_the_thread_comes_back(
    namespace: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_opencomputer.local.sandbox import nftables

    own = os.stat("/proc/thread-self/ns/net").st_ino
    listings = []
    for library in (nftables._libnftables(), None):
        assert library is not None or listings, "libnftables is missing: the comparison would prove nothing"
        monkeypatch.setattr(nftables, "_libnftables", lambda library=library: library)
        attached = await SandboxNetwork.attach(namespace.fd, name="test")
        try:
            assert os.stat("/proc/thread-self/ns/net").st_ino == own, "the server's thread stayed inside"
            rules = await namespace.run("nft", "list", "table", "inet", "prefect_sandbox")
            # The listener ports differ per attach; the rules around them must not.
            listings.append(re.sub(r"\b\d{4,5}\b", "PORT", rules.stdout))
        finally:
            await attached.close()
    assert "redirect to" in listings[0]
    assert listings[0] == listings[1]
