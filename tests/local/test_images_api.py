"""Images and snapshots on the wire: the build stream, the build cache, and the snapshot routes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from prefect_opencomputer.client import Image
from prefect_opencomputer.local import LocalServer, LocalServerConfig
from prefect_opencomputer.local.routes import images as image_routes

# Every test here builds at least one image in a builder sandbox.
pytestmark = pytest.mark.slow

SSE = {"Accept": "text/event-stream"}


@dataclass
class BuildStream:
    """What a build stream carried: its raw text, its events in order, and how it ended."""

    raw: str
    events: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def logs(self) -> list[dict[str, Any]]:
        return [data for name, data in self.events if name == "build_log"]

    @property
    def messages(self) -> list[str]:
        return [log["message"] for log in self.logs]

    @property
    def outcome(self) -> tuple[str, Any]:
        return self.events[-1]


async def post_stream(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> BuildStream:
    async with http.stream("POST", path, json=body, headers=SSE) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = (await response.aread()).decode()
    stream = BuildStream(raw)
    for frame in raw.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines() if not line.startswith(":"))
        if "event" in lines:
            stream.events.append((lines["event"], json.loads(lines["data"])))
    return stream


def unique_image() -> Image:
    """An image no other test builds: its cache entry starts empty."""
    return Image.base().run_commands(f"echo build {uuid.uuid4().hex}")


@pytest.fixture
async def snapshot_names(http: httpx.AsyncClient) -> AsyncIterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        await http.delete(f"/snapshots/{name}")


async def run(http: httpx.AsyncClient, sandbox_id: str, command: str) -> dict[str, Any]:
    response = await http.post(
        f"/sandboxes/{sandbox_id}/exec/run", json={"cmd": "sh", "args": ["-c", command]}
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def live_sandboxes(local_server: LocalServer) -> int:
    async with httpx.AsyncClient(base_url=local_server.url, headers={"X-API-Key": local_server.api_key}) as c:
        stats: dict[str, int] = (await c.get("/_test/stats")).json()
    return stats["liveSandboxes"]


async def test_an_image_create_streams_each_steps_output_then_the_fork(
    http: httpx.AsyncClient, created: list[str]
) -> None:
    marker = uuid.uuid4().hex
    image = (
        Image.base()
        .env({"IMAGE_GREETING": "hello from the image"})
        .run_commands(f"echo first {marker}", "echo second to stderr >&2")
        .workdir("/srv/app")
        .add_file("/srv/app/settings.ini", "[app]\n")
    )

    stream = await post_stream(
        http, "/sandboxes", {"templateID": "base", "image": image.to_dict(), "envs": {"CALLER": "wins"}}
    )

    name, result = stream.outcome
    assert name == "result", stream.raw
    created.append(result["sandboxID"])
    assert set(result) >= {"sandboxID", "status", "token", "region", "workerID", "fromCheckpointId"}
    assert result["status"] == "running"
    assert {"step": 2, "type": "run", "message": f"first {marker}"} in stream.logs
    assert {"step": 2, "type": "run", "message": "second to stderr"} in stream.logs
    assert "Step 2/4: echo first" in "\n".join(stream.messages)
    assert stream.logs[-1] == {"step": 0, "type": "create", "message": "Creating sandbox from image..."}

    sandbox = result["sandboxID"]
    # As hosted: the image's env is in /etc/environment (login shells and sudo see it, a plain
    # command does not) and its workdir only exists; commands still start in the home.
    script = (
        "echo ${IMAGE_GREETING:-unset} $CALLER; pwd; cat /srv/app/settings.ini; id -un; "
        "grep GREETING /etc/environment"
    )
    output = await run(http, sandbox, script)
    assert output["stdout"].split("\n") == [
        *("unset wins", "/home/sandbox", "[app]", "sandbox", "IMAGE_GREETING=hello from the image", "")
    ]
    assert (await http.get(f"/sandboxes/{sandbox}")).json()["status"] == "running"


async def test_the_same_image_again_is_a_cache_hit_that_forks_the_built_checkpoint(
    http: httpx.AsyncClient, created: list[str]
) -> None:
    image = unique_image().run_commands("sleep 1")
    first = await post_stream(http, "/sandboxes", {"image": image.to_dict()})
    created.append(first.outcome[1]["sandboxID"])

    second = await post_stream(http, "/sandboxes", {"image": image.to_dict()})
    created.append(second.outcome[1]["sandboxID"])

    assert second.outcome[0] == "result"
    assert second.logs[0] == {
        "step": 0,
        "type": "cache_hit",
        "message": f"Image found in cache (hash={image.cache_key()[:12]})",
    }
    assert not any(message.startswith("Step ") for message in second.messages)
    assert second.outcome[1]["fromCheckpointId"] == first.outcome[1]["fromCheckpointId"]


async def test_without_an_event_stream_an_image_create_answers_the_fork(
    http: httpx.AsyncClient, created: list[str]
) -> None:
    response = await http.post("/sandboxes", json={"image": unique_image().to_dict(), "memoryMB": 4096})

    assert response.status_code == 201, response.text
    body = response.json()
    created.append(body["sandboxID"])
    assert body["status"] == "running" and body["memoryMB"] == 4096 and body["fromCheckpointId"]


async def test_a_failing_step_ends_the_stream_with_its_error_and_leaves_nothing(
    http: httpx.AsyncClient, local_server: LocalServer
) -> None:
    image = unique_image().run_commands("echo compiling; echo 'missing header foo.h' >&2; exit 3")
    image = image.run_commands("echo never")
    live_before = await live_sandboxes(local_server)
    listed_before = {sandbox["sandboxID"] for sandbox in (await http.get("/sandboxes")).json()}

    stream = await post_stream(http, "/sandboxes", {"image": image.to_dict()})

    name, error = stream.outcome
    assert name == "error"
    message = error["error"]
    assert message.startswith("image build failed: step 2 (run: ") and "exited with code 3" in message
    assert "compiling" in message and "missing header foo.h" in message
    assert "never" not in "\n".join(stream.messages)
    assert await live_sandboxes(local_server) == live_before
    assert {sandbox["sandboxID"] for sandbox in (await http.get("/sandboxes")).json()} == listed_before
    cached = [entry["contentHash"] for entry in (await http.get("/images")).json()]
    assert image.cache_key() not in cached


async def test_bad_manifests_and_unknown_snapshots_are_refused_before_the_stream(
    http: httpx.AsyncClient,
) -> None:
    bad = await http.post(
        "/sandboxes", json={"image": {"base": "base", "steps": [{"type": "nope", "args": {}}]}}, headers=SSE
    )
    unknown = await http.post("/sandboxes", json={"snapshot": "no-such-snapshot"}, headers=SSE)

    assert bad.status_code == 400
    assert bad.json() == {"error": "invalid image manifest: step 1: unknown step type 'nope'"}
    assert unknown.status_code == 400 and unknown.json() == {"error": 'snapshot "no-such-snapshot" not found'}


async def test_a_quiet_step_keeps_the_stream_alive(
    http: httpx.AsyncClient, created: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_routes, "KEEPALIVE_SECONDS", 0.2)

    stream = await post_stream(
        http, "/sandboxes", {"image": unique_image().run_commands("sleep 1").to_dict()}
    )

    created.append(stream.outcome[1]["sandboxID"])
    assert ": keepalive\n\n" in stream.raw


async def test_concurrent_creates_of_one_new_image_share_one_build(
    http: httpx.AsyncClient, created: list[str]
) -> None:
    image = unique_image().run_commands("sleep 1")

    streams = await asyncio.gather(
        *(post_stream(http, "/sandboxes", {"image": image.to_dict()}) for _ in range(3))
    )

    created.extend(stream.outcome[1]["sandboxID"] for stream in streams)
    assert len({stream.outcome[1]["fromCheckpointId"] for stream in streams}) == 1
    joined = [s for s in streams if "Joining a build of the same image that is already running" in s.messages]
    assert len(joined) == 2
    # A request that joins late still sees the whole build log.
    assert all(any(message.startswith("build ") for message in stream.messages) for stream in streams)
    builds = [
        entry for entry in (await http.get("/images")).json() if entry["contentHash"] == image.cache_key()
    ]
    assert len(builds) == 1 and builds[0]["status"] == "ready"


async def test_a_snapshot_is_built_once_named_listed_forked_and_deleted(
    http: httpx.AsyncClient, created: list[str], snapshot_names: list[str]
) -> None:
    name = f"snap-{uuid.uuid4().hex[:8]}"
    snapshot_names.append(name)
    image = unique_image().add_file("/home/sandbox/from-snapshot.txt", "yes")

    stream = await post_stream(http, "/snapshots", {"name": name, "image": image.to_dict()})

    kind, snapshot = stream.outcome
    assert kind == "result", stream.raw
    assert snapshot["name"] == name and snapshot["status"] == "ready"
    assert snapshot["contentHash"] == image.cache_key() and snapshot["manifest"] == image.to_dict()
    assert set(snapshot) == {
        "id", "orgId", "contentHash", "checkpointId", "name", "manifest", "status", "createdAt", "lastUsedAt"
    }  # fmt: skip
    assert (await http.get(f"/snapshots/{name}")).json()["id"] == snapshot["id"]
    assert name in {entry["name"] for entry in (await http.get("/snapshots")).json()}

    duplicate = await http.post("/snapshots", json={"name": name, "image": image.to_dict()}, headers=SSE)
    assert duplicate.status_code == 409 and duplicate.json() == {"error": "snapshot name already exists"}

    fork = await http.post("/sandboxes", json={"snapshot": name})
    assert fork.status_code == 201, fork.text
    created.append(fork.json()["sandboxID"])
    assert (await run(http, fork.json()["sandboxID"], "cat from-snapshot.txt"))["stdout"] == "yes"

    assert (await http.delete(f"/snapshots/{name}")).status_code == 204
    assert (await http.get(f"/snapshots/{name}")).status_code == 404
    gone = await http.post("/sandboxes", json={"snapshot": name})
    assert gone.status_code == 400 and gone.json() == {"error": f'snapshot "{name}" not found'}
    assert (await run(http, fork.json()["sandboxID"], "echo still running"))["stdout"] == "still running\n"


async def test_an_async_snapshot_answers_at_once_and_is_not_usable_until_ready(
    http: httpx.AsyncClient, created: list[str], snapshot_names: list[str]
) -> None:
    name = f"snap-{uuid.uuid4().hex[:8]}"
    snapshot_names.append(name)

    response = await http.post(
        "/snapshots",
        params={"async": "1"},
        json={"name": name, "image": unique_image().run_commands("sleep 2").to_dict()},
    )

    assert response.status_code == 202 and response.json()["status"] == "building"
    early = await http.post("/sandboxes", json={"snapshot": name})
    assert early.status_code == 400
    assert early.json() == {"error": f'snapshot "{name}" is not ready (status: building)'}
    for _ in range(100):
        status = (await http.get(f"/snapshots/{name}")).json()["status"]
        if status != "building":
            break
        await asyncio.sleep(0.1)
    assert status == "ready"
    fork = await http.post("/sandboxes", json={"snapshot": name})
    assert fork.status_code == 201
    created.append(fork.json()["sandboxID"])


async def test_a_failed_async_snapshot_stays_visible_as_failed(
    http: httpx.AsyncClient, snapshot_names: list[str]
) -> None:
    name = f"snap-{uuid.uuid4().hex[:8]}"
    snapshot_names.append(name)
    image = unique_image().run_commands("exit 1")

    assert (
        await http.post("/snapshots?async=1", json={"name": name, "image": image.to_dict()})
    ).status_code == 202

    for _ in range(100):
        status = (await http.get(f"/snapshots/{name}")).json()["status"]
        if status != "building":
            break
        await asyncio.sleep(0.1)
    assert status == "failed"
    refused = await http.post("/sandboxes", json={"snapshot": name})
    assert refused.json() == {"error": f'snapshot "{name}" is not ready (status: failed)'}


async def test_a_synchronous_snapshot_answers_201_or_the_build_error(
    http: httpx.AsyncClient, snapshot_names: list[str]
) -> None:
    good, bad = f"snap-{uuid.uuid4().hex[:8]}", f"snap-{uuid.uuid4().hex[:8]}"
    snapshot_names.extend([good, bad])

    built = await http.post("/snapshots", json={"name": good, "image": unique_image().to_dict()})
    failed = await http.post(
        "/snapshots", json={"name": bad, "image": unique_image().run_commands("false").to_dict()}
    )
    missing = await http.post("/snapshots", json={"name": "x"})

    assert built.status_code == 201 and built.json()["status"] == "ready"
    assert failed.status_code == 500 and failed.json()["error"].startswith(
        "image build failed: step 2 (run: false)"
    )
    assert (await http.get(f"/snapshots/{bad}")).status_code == 404, "a failed build keeps no snapshot"
    assert missing.status_code == 400 and missing.json() == {"error": "image is required"}


async def test_snapshot_patches_run_in_sandboxes_started_from_it(
    http: httpx.AsyncClient, created: list[str], snapshot_names: list[str]
) -> None:
    name = f"snap-{uuid.uuid4().hex[:8]}"
    snapshot_names.append(name)
    await post_stream(http, "/snapshots", {"name": name, "image": unique_image().to_dict()})

    patch = await http.post(f"/snapshots/{name}/patches", json={"script": "echo patched > ~/patched.txt"})
    assert patch.status_code == 201
    assert [p["id"] for p in (await http.get(f"/snapshots/{name}/patches")).json()] == [
        patch.json()["patch"]["id"]
    ]

    fork = await http.post("/sandboxes", json={"snapshot": name})
    created.append(fork.json()["sandboxID"])
    assert (await run(http, fork.json()["sandboxID"], "cat ~/patched.txt"))["stdout"] == "patched\n"
    deleted = await http.delete(f"/snapshots/{name}/patches/{patch.json()['patch']['id']}")
    assert deleted.status_code == 204


async def test_the_build_cache_survives_a_server_restart(tmp_path: Any) -> None:
    image = unique_image()
    for attempt in ("build", "cache_hit"):
        with LocalServer(LocalServerConfig(data_dir=tmp_path / "data")) as server:
            async with httpx.AsyncClient(
                base_url=server.api_url, headers={"X-API-Key": server.api_key}, timeout=60
            ) as http:
                stream = await post_stream(http, "/sandboxes", {"image": image.to_dict()})
                assert stream.outcome[0] == "result"
                assert stream.logs[0]["type"] == attempt
