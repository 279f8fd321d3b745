"""The `Image` builder and the event-stream parser, on their own (no server)."""

from __future__ import annotations

import base64
from pathlib import Path

import opencomputer
import pytest

from prefect_opencomputer.client import Image
from prefect_opencomputer.client._sse import ServerSentEvent, SSEDecoder


def test_manifest_and_cache_key_match_the_official_sdk(tmp_path: Path) -> None:
    (tmp_path / "conf.ini").write_text("[x]\n")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "b.bin").write_bytes(b"\x00\x01")

    def declare(image: opencomputer.Image | Image) -> opencomputer.Image | Image:
        return (
            image.apt_install(["cowsay"])
            .pip_install(["six==1.16.0"])
            .run_commands("echo one", "echo ü")
            .env({"APP_ENV": "ci"})
            .workdir("/srv/app")
            .add_file("/srv/app/a.txt", "text")
            .add_local_file(str(tmp_path / "conf.ini"), "/etc/conf.ini")
            .add_local_dir(str(tmp_path / "tree"), "/srv/tree")
            .builder_memory(8192)
        )

    ours, theirs = declare(Image.base()), declare(opencomputer.Image.base())

    assert ours.to_dict() == theirs.to_dict()
    assert ours.cache_key() == theirs.cache_key()


def test_images_are_immutable_values_that_round_trip_through_their_manifest() -> None:
    base = Image.base()
    grown = base.apt_install(["cowsay"]).builder_memory(2048)

    assert base.steps == () and len(grown.steps) == 1
    assert Image.from_dict(grown.to_dict()) == grown
    assert Image.model_validate_json(grown.model_dump_json()) == grown
    # Memory sizes the build, not the image: the cache key ignores it.
    assert grown.cache_key() == grown.builder_memory(0).cache_key()
    assert grown.cache_key() != base.cache_key()


def test_files_travel_base64_encoded() -> None:
    image = Image.base().add_file("/bin.dat", b"\xff\x00").add_dir("/d", {"x/y.txt": "hi"})
    add_file, add_dir = (step.args for step in image.steps)

    assert base64.b64decode(str(add_file["content"])) == b"\xff\x00"
    assert add_dir["files"] == [{"relativePath": "x/y.txt", "content": base64.b64encode(b"hi").decode()}]


def test_sse_decoder_reads_events_across_arbitrary_chunk_boundaries() -> None:
    body = (
        ": keepalive\n\n"
        'event: build_log\ndata: {"step":1,"type":"run","message":"hi"}\n\n'
        "event: result\r\ndata: line one\r\ndata:line two\r\n\r\n"
        "data: no event name\r\r"
    )
    expected = [
        ServerSentEvent("build_log", '{"step":1,"type":"run","message":"hi"}'),
        ServerSentEvent("result", "line one\nline two"),
        ServerSentEvent("message", "no event name"),
    ]
    for size in (1, 2, 3, 7, len(body)):
        decoder = SSEDecoder()
        events = [
            event for start in range(0, len(body), size) for event in decoder.feed(body[start : start + size])
        ]
        assert [*events, *decoder.close()] == expected, size


@pytest.mark.parametrize("tail", ["event: result\ndata: {}", "event: result\ndata: {}\n"])
def test_sse_decoder_drops_an_event_the_stream_never_finished(tail: str) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(tail) == []
    assert decoder.close() == []
