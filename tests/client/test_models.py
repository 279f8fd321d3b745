"""The models accept every shape the service sends (control plane, hosted edge, combined mode)."""

from __future__ import annotations

import pickle

from prefect_opencomputer.client import (
    Checkpoint,
    CheckpointPatch,
    CommandResult,
    ExecExit,
    ExecOutput,
    ExecScrollbackEnd,
    ExecSession,
    FileEntry,
    PreviewURL,
    RetentionPolicy,
    Sandbox,
)
from prefect_opencomputer.client._attach import decode_frame

EDGE_GET = {
    "sandboxID": "sb-1a2b3c4d",
    "templateID": "python",
    "cellID": "c1",
    "workerID": "w1",
    "status": "running",
    "cpuCount": 1,
    "memoryMB": 4096,
    "startedAt": "2026-05-01T12:00:00.000Z",
    "endAt": "0001-01-01T00:00:00Z",
    "cellEndpoint": "https://cell",
}
CP_GET = {
    "sandboxID": "sb-1a2b3c4d",
    "token": "jwt.secret.token",
    "status": "running",
    "region": "use2",
    "workerID": "w1",
    "startedAt": "2026-05-01T12:00:00.123456789Z",
    "template": "python",
    "tags": None,
    "tagsLastUpdatedAt": None,
    "patchError": "patch seq 1 failed",
}


def test_sandbox_reads_edge_and_control_plane_shapes_alike() -> None:
    edge, cp = Sandbox.model_validate(EDGE_GET), Sandbox.model_validate(CP_GET)

    assert edge.template == cp.template == "python"
    assert edge.end_at is None  # the Go zero time means "not set"
    assert edge.memory_mb == 4096 and edge.region is None
    assert cp.tags == {} and cp.patch_error == "patch seq 1 failed"
    assert cp.started_at is not None and cp.started_at.microsecond == 123456


def test_sandbox_tokens_stay_out_of_repr_and_dumps() -> None:
    sandbox = Sandbox.model_validate({**CP_GET, "previewAuthToken": "preview-secret-token"})

    assert sandbox.token is not None and sandbox.token.get_secret_value() == "jwt.secret.token"
    for text in (repr(sandbox), str(sandbox), sandbox.model_dump_json(), str(sandbox.model_dump())):
        assert "jwt.secret.token" not in text and "preview-secret-token" not in text
    # Round-trips as a persisted task result would.
    assert pickle.loads(pickle.dumps(sandbox)).sandbox_id == "sb-1a2b3c4d"
    assert Sandbox.model_validate(sandbox.model_dump()).template == "python"


def test_sandbox_dumps_control_plane_spelling_by_alias() -> None:
    wire = Sandbox.model_validate(EDGE_GET).model_dump(by_alias=True, exclude_none=True)

    assert wire["sandboxID"] == "sb-1a2b3c4d" and wire["template"] == "python" and wire["memoryMB"] == 4096


def test_checkpoint_accepts_either_sandbox_id_spelling_and_drops_sandbox_config() -> None:
    wire = {
        "id": "3f0c",
        "sandboxID": "sb-1",
        "name": "base",
        "kind": "full",
        "status": "ready",
        "sizeBytes": 10,
        "createdAt": "2026-05-01T12:00:00Z",
        "sandboxConfig": {"envs": {"SECRET": "hunter2-value"}},
    }
    checkpoint = Checkpoint.model_validate(wire)

    assert checkpoint.sandbox_id == "sb-1" and checkpoint.is_ready
    assert "hunter2-value" not in repr(checkpoint) + checkpoint.model_dump_json()


def test_retention_policy_serialises_to_the_wire_names() -> None:
    assert RetentionPolicy(max_count=3).model_dump(by_alias=True, exclude_none=True) == {
        "mode": "delete_oldest",
        "maxCount": 3,
    }


def test_command_result_reports_timeouts_as_results() -> None:
    timed_out = CommandResult.model_validate({"exitCode": -1, "stdout": "x", "stderr": "\nProcess timed out"})
    killed = CommandResult.model_validate({"exitCode": -1, "stdout": "", "stderr": ""})

    assert timed_out.timed_out and not timed_out.ok
    assert not killed.timed_out
    assert CommandResult.model_validate({"exitCode": 0}).ok


def test_exec_session_and_file_entry_tolerate_omitted_fields() -> None:
    session = ExecSession.model_validate(
        {"sessionID": "ab12cd34", "sandboxID": "sb-1", "command": "sleep", "args": None, "running": True}
    )
    entry = FileEntry.model_validate({"name": "a", "isDir": False, "path": "/home/sandbox/a"})

    assert session.args == [] and session.exit_code is None
    assert entry.size == 0


def test_patch_and_preview_parse_the_wire_shapes() -> None:
    patch = CheckpointPatch.model_validate(
        {"id": "p1", "checkpointId": "c1", "sequence": 2, "script": "true", "strategy": "on_wake"}
    )
    preview = PreviewURL.model_validate(
        {
            "id": "v1",
            "sandboxId": "sb-1",
            "hostname": "sb-1-p80.workers.example.dev",
            "port": 80,
            "authConfig": None,
        }
    )

    assert patch.sequence == 2 and patch.description == ""
    assert preview.auth_config == {}


def test_preview_url_scheme_follows_the_hostname() -> None:
    def url(hostname: str) -> str:
        return PreviewURL(id="v", sandbox_id="sb-1", hostname=hostname, port=8000).url

    assert url("sb-1-p8000.workers.opencomputer.dev") == "https://sb-1-p8000.workers.opencomputer.dev"
    assert url("sb-1-p8000.localhost:41234") == "http://sb-1-p8000.localhost:41234"
    assert url("sb-1-p8000.localhost") == "http://sb-1-p8000.localhost"
    assert url("sb-1-p8000.example.com:8443") == "http://sb-1-p8000.example.com:8443"


def test_exec_frames_decode_to_events() -> None:
    assert decode_frame(b"\x01hello") == ExecOutput("stdout", b"hello")
    assert decode_frame(b"\x02oops") == ExecOutput("stderr", b"oops")
    assert decode_frame(b"\x03" + (-1).to_bytes(4, "big", signed=True)) == ExecExit(-1)
    assert decode_frame(b"\x03\x00\x00\x00\x07") == ExecExit(7)
    assert decode_frame(b"\x04") == ExecScrollbackEnd()
    assert decode_frame(b"") is None  # keepalive
    assert decode_frame(b"\x09future") is None
