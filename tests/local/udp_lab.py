"""A network of throwaway namespaces for the UDP relay, run as ``unshare --net -- python udp_lab.py``.

This process's new namespace plays the host; a veth pair leads to a peer namespace where a UDP echo
listens at PEER (a documentation address, declared public for the lab); a third namespace is the
sandbox. Nothing leaves these namespaces. Prints one JSON object: what the sandbox's program saw.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from prefect_opencomputer.local.sandbox import egress, forwarding
from prefect_opencomputer.local.sandbox.forwarding import SandboxNetwork

HOST_SIDE, PEER = "198.51.100.1", "198.51.100.7"
# Declared public for the lab, then made one of the host's addresses after the rules were written:
# only the server's own check stands between the sandbox and it.
LATE_HOST_ADDRESS = "198.51.100.20"
MAX_FLOWS = 4

ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(b"echo:" + data, peer)
"""

PROGRAM = f"""
import json, socket
seen = {{}}
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
answers = []
for word in (b"one", b"two"):  # two datagrams of one flow
    u.sendto(word, ({PEER!r}, 7))
    data, peer = u.recvfrom(65535)
    answers.append([data.decode(), list(peer)])
seen["answers"] = answers
u.sendto(b"x" * 60000, ({PEER!r}, 7))
seen["big"] = len(u.recvfrom(65535)[0])
for name, address in (("host", {HOST_SIDE!r}), ("private", "10.9.9.9"), ("late_host", {LATE_HOST_ADDRESS!r})):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.settimeout(1)
    try:
        probe.sendto(b"x", (address, 7))
        seen[name] = "answered: " + probe.recvfrom(65535)[0].decode()
    except OSError as error:
        seen[name] = type(error).__name__
for port in range(1000, 1010):  # more flows than the lab's cap, unanswered
    u.sendto(b"x", ({PEER!r}, port))
print(json.dumps(seen))
"""


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextmanager
def namespace() -> Iterator[int]:
    holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "600"])
    try:
        while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            pass  # until unshare has made the namespace
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def inside(pid: int, *argv: str) -> list[str]:
    return ["nsenter", f"--net=/proc/{pid}/ns/net", "--", *argv]


def main() -> None:
    run("ip", "link", "set", "lo", "up")
    with namespace() as peer, namespace() as sandbox:
        run("ip", "link", "add", "lab-host", "type", "veth", "peer", "name", "lab-peer", "netns", str(peer))
        run("ip", "addr", "add", f"{HOST_SIDE}/24", "dev", "lab-host")
        run("ip", "link", "set", "lab-host", "up")
        for step in (("lo", "up"), ("lab-peer", "up")):
            run(*inside(peer, "ip", "link", "set", *step))
        run(*inside(peer, "ip", "addr", "add", f"{PEER}/24", "dev", "lab-peer"))
        echo = subprocess.Popen(inside(peer, sys.executable, "-c", ECHO), stdout=subprocess.PIPE, text=True)
        try:
            assert echo.stdout is not None and echo.stdout.readline() == "ready\n"
            seen = asyncio.run(attach_and_probe(sandbox))
        finally:
            echo.kill()
            echo.wait()
    print(json.dumps(seen))


async def attach_and_probe(sandbox: int) -> dict[str, object]:
    """Attach the relay to the sandbox's namespace, run the program there, and report."""
    fd = os.open(f"/proc/{sandbox}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    public = [ipaddress.ip_network(f"{address}/32") for address in (PEER, LATE_HOST_ADDRESS)]
    network = await SandboxNetwork.attach(
        fd, name="lab", also_public=public, resolver=(PEER, 53), max_udp_flows=MAX_FLOWS
    )
    os.close(fd)
    try:
        added = await asyncio.create_subprocess_exec(
            "ip", "addr", "add", f"{LATE_HOST_ADDRESS}/32", "dev", "lab-host"
        )
        assert await added.wait() == 0
        egress._host_addresses.cache_clear()
        warnings: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger(forwarding.__name__).addHandler(handler)
        program = await asyncio.create_subprocess_exec(
            *inside(sandbox, sys.executable, "-c", PROGRAM), stdout=asyncio.subprocess.PIPE
        )
        output, _ = await program.communicate()
        seen: dict[str, object] = json.loads(output)
        for _ in range(100):  # the relay may read the last datagrams after the program has exited
            if network.udp_flows >= MAX_FLOWS:
                break
            await asyncio.sleep(0.02)
        seen["flows_open"] = network.udp_flows
        seen["warnings"] = warnings
    finally:
        await network.close()
    seen["flows_after_close"] = network.udp_flows
    return seen


if __name__ == "__main__":
    main()
