"""Durable state of the local server: one SQLite file under the data dir.

Every write commits (WAL, ``synchronous=FULL``) before the caller answers its client, so nothing
acknowledged is lost when the server dies. The store runs on the event loop's thread: each
statement touches a handful of rows and costs well under a millisecond.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from prefect_opencomputer.local.backend import database
from prefect_opencomputer.local.backend.records import (
    CheckpointKind,
    CheckpointRecord,
    CheckpointStatus,
    MemorySample,
    PatchRecord,
    PreviewRecord,
    RunningInterval,
    SandboxRecord,
    SandboxStatus,
    ScalingRecord,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    template TEXT NOT NULL,
    timeout INTEGER NOT NULL,
    cpu_count INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    disk_mb INTEGER NOT NULL,
    token TEXT NOT NULL,
    started_at TEXT NOT NULL,
    envs TEXT NOT NULL,
    metadata TEXT NOT NULL,
    preview_auth_hash TEXT,
    stopped_at TEXT,
    tags TEXT NOT NULL,
    tags_updated_at TEXT,
    patch_error TEXT,
    based_on_checkpoint_id TEXT,
    last_patch_sequence INTEGER NOT NULL,
    network_enabled INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    sandbox_config TEXT NOT NULL,
    created_at TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    error_msg TEXT,
    failed_at TEXT,
    UNIQUE (sandbox_id, name)
);
CREATE TABLE IF NOT EXISTS patches (
    id TEXT PRIMARY KEY,
    checkpoint_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    script TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (checkpoint_id, sequence)
);
CREATE TABLE IF NOT EXISTS previews (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    port INTEGER NOT NULL,
    hostname TEXT NOT NULL,
    auth_config TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (sandbox_id, port)
);
CREATE TABLE IF NOT EXISTS running_intervals (
    sandbox_id TEXT NOT NULL,
    memory_mb INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT
);
CREATE INDEX IF NOT EXISTS running_intervals_by_sandbox ON running_intervals (sandbox_id, started_at);
CREATE TABLE IF NOT EXISTS memory_samples (
    sandbox_id TEXT NOT NULL,
    sampled_at TEXT NOT NULL,
    memory_bytes INTEGER NOT NULL,
    peak_bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS memory_samples_by_sandbox ON memory_samples (sandbox_id, sampled_at);
CREATE TABLE IF NOT EXISTS scaling (
    sandbox_id TEXT PRIMARY KEY,
    autoscale_enabled INTEGER NOT NULL,
    min_memory_mb INTEGER NOT NULL,
    max_memory_mb INTEGER NOT NULL,
    locked INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class DuplicateName(Exception):
    """A checkpoint with that name already exists for the sandbox."""


class StateStore(database.Database):
    """Sandboxes, checkpoints, patches, preview URLs and server settings, in SQLite."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA)

    # -- settings ----------------------------------------------------------------------------

    def setting(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_setting(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

    # -- sandboxes ---------------------------------------------------------------------------

    def save_sandbox(self, sandbox: SandboxRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO sandboxes VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sandbox.id,
                    sandbox.status,
                    sandbox.template,
                    sandbox.timeout,
                    sandbox.cpu_count,
                    sandbox.memory_mb,
                    sandbox.disk_mb,
                    sandbox.token,
                    _time(sandbox.started_at),
                    json.dumps(sandbox.envs),
                    json.dumps(sandbox.metadata),
                    sandbox.preview_auth_hash,
                    _time(sandbox.stopped_at),
                    json.dumps(sandbox.tags),
                    _time(sandbox.tags_updated_at),
                    sandbox.patch_error,
                    sandbox.based_on_checkpoint_id,
                    sandbox.last_patch_sequence,
                    int(sandbox.network_enabled),
                ),
            )

    def sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        row = self._db.execute("SELECT * FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
        return None if row is None else _sandbox(row)

    def sandboxes(self, status: SandboxStatus | None = None) -> list[SandboxRecord]:
        """Newest first."""
        if status is None:
            rows = self._db.execute("SELECT * FROM sandboxes ORDER BY started_at DESC").fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM sandboxes WHERE status = ? ORDER BY started_at DESC", (status,)
            ).fetchall()
        return [_sandbox(row) for row in rows]

    def delete_sandbox(self, sandbox_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM previews WHERE sandbox_id = ?", (sandbox_id,))
            db.execute("DELETE FROM running_intervals WHERE sandbox_id = ?", (sandbox_id,))
            db.execute("DELETE FROM memory_samples WHERE sandbox_id = ?", (sandbox_id,))
            db.execute("DELETE FROM scaling WHERE sandbox_id = ?", (sandbox_id,))
            db.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))

    def scaling(self, sandbox_id: str) -> ScalingRecord:
        """The sandbox's scaling settings (the defaults until some were saved)."""
        row = self._db.execute("SELECT * FROM scaling WHERE sandbox_id = ?", (sandbox_id,)).fetchone()
        if row is None:
            return ScalingRecord(sandbox_id)
        return ScalingRecord(
            sandbox_id,
            autoscale_enabled=bool(row["autoscale_enabled"]),
            min_memory_mb=row["min_memory_mb"],
            max_memory_mb=row["max_memory_mb"],
            locked=bool(row["locked"]),
        )

    def save_scaling(self, scaling: ScalingRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO scaling VALUES (?, ?, ?, ?, ?)",
                (
                    scaling.sandbox_id,
                    int(scaling.autoscale_enabled),
                    scaling.min_memory_mb,
                    scaling.max_memory_mb,
                    int(scaling.locked),
                ),
            )

    def is_fork_source(self, checkpoint_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM sandboxes WHERE based_on_checkpoint_id = ? LIMIT 1", (checkpoint_id,)
        ).fetchone()
        return row is not None

    # -- checkpoints -------------------------------------------------------------------------

    def insert_checkpoint(self, checkpoint: CheckpointRecord) -> None:
        """Insert a new checkpoint; raises `DuplicateName` when the sandbox has one of that name."""
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _checkpoint_row(checkpoint),
                )
        except sqlite3.IntegrityError as error:
            raise DuplicateName(checkpoint.name) from error

    def save_checkpoint(self, checkpoint: CheckpointRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _checkpoint_row(checkpoint),
            )

    def checkpoint(self, checkpoint_id: str) -> CheckpointRecord | None:
        row = self._db.execute("SELECT * FROM checkpoints WHERE id = ?", (checkpoint_id,)).fetchone()
        return None if row is None else _checkpoint(row)

    def checkpoints(
        self, *, sandbox_id: str | None = None, status: CheckpointStatus | None = None
    ) -> list[CheckpointRecord]:
        """Newest first, optionally for one sandbox or in one status."""
        query = "SELECT * FROM checkpoints WHERE 1 = 1"
        args: list[str] = []
        if sandbox_id is not None:
            query, args = query + " AND sandbox_id = ?", [*args, sandbox_id]
        if status is not None:
            query, args = query + " AND status = ?", [*args, status]
        rows = self._db.execute(query + " ORDER BY created_at DESC, rowid DESC", args).fetchall()
        return [_checkpoint(row) for row in rows]

    def checkpoint_name_taken(self, sandbox_id: str, name: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM checkpoints WHERE sandbox_id = ? AND name = ?", (sandbox_id, name)
        ).fetchone()
        return row is not None

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        """Delete a checkpoint with its patches; forks forget where they came from."""
        with self._transaction() as db:
            db.execute("DELETE FROM patches WHERE checkpoint_id = ?", (checkpoint_id,))
            db.execute(
                "UPDATE sandboxes SET based_on_checkpoint_id = NULL WHERE based_on_checkpoint_id = ?",
                (checkpoint_id,),
            )
            db.execute("DELETE FROM checkpoints WHERE id = ?", (checkpoint_id,))

    # -- patches -----------------------------------------------------------------------------

    def insert_patch(
        self, checkpoint_id: str, patch_id: str, script: str, description: str, created_at: datetime
    ) -> PatchRecord:
        """Append a patch with the next sequence number (max + 1, from 1)."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT COALESCE(MAX(sequence), 0) AS last FROM patches WHERE checkpoint_id = ?",
                (checkpoint_id,),
            ).fetchone()
            patch = PatchRecord(
                patch_id, checkpoint_id, int(row["last"]) + 1, script, description, created_at
            )
            db.execute(
                "INSERT INTO patches VALUES (?, ?, ?, ?, ?, ?)",
                (patch.id, checkpoint_id, patch.sequence, script, description, _time(created_at)),
            )
        return patch

    def patches(self, checkpoint_id: str, *, after_sequence: int = 0) -> list[PatchRecord]:
        rows = self._db.execute(
            "SELECT * FROM patches WHERE checkpoint_id = ? AND sequence > ? ORDER BY sequence",
            (checkpoint_id, after_sequence),
        ).fetchall()
        return [_patch(row) for row in rows]

    def has_patches(self, checkpoint_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM patches WHERE checkpoint_id = ? LIMIT 1", (checkpoint_id,)
        ).fetchone()
        return row is not None

    def delete_patch(self, checkpoint_id: str, patch_id: str) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM patches WHERE checkpoint_id = ? AND id = ?", (checkpoint_id, patch_id)
            )
        return cursor.rowcount > 0

    # -- preview URLs ------------------------------------------------------------------------

    def insert_preview(self, preview: PreviewRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO previews VALUES (?, ?, ?, ?, ?, ?)",
                (
                    preview.id,
                    preview.sandbox_id,
                    preview.port,
                    preview.hostname,
                    json.dumps(preview.auth_config),
                    _time(preview.created_at),
                ),
            )

    def preview(self, sandbox_id: str, port: int) -> PreviewRecord | None:
        row = self._db.execute(
            "SELECT * FROM previews WHERE sandbox_id = ? AND port = ?", (sandbox_id, port)
        ).fetchone()
        return None if row is None else _preview(row)

    def previews(self, sandbox_id: str) -> list[PreviewRecord]:
        rows = self._db.execute(
            "SELECT * FROM previews WHERE sandbox_id = ? ORDER BY created_at, rowid", (sandbox_id,)
        ).fetchall()
        return [_preview(row) for row in rows]

    def delete_previews(self, sandbox_id: str, *, port: int | None = None) -> int:
        with self._transaction() as db:
            if port is None:
                cursor = db.execute("DELETE FROM previews WHERE sandbox_id = ?", (sandbox_id,))
            else:
                cursor = db.execute(
                    "DELETE FROM previews WHERE sandbox_id = ? AND port = ?", (sandbox_id, port)
                )
        return cursor.rowcount

    # -- usage -------------------------------------------------------------------------------

    def start_running(self, sandbox_id: str, memory_mb: int, at: datetime) -> None:
        """Open a running interval, unless one is open already (a thaw of a sandbox still counted)."""
        with self._transaction() as db:
            open_row = db.execute(
                "SELECT 1 FROM running_intervals WHERE sandbox_id = ? AND ended_at IS NULL",
                (sandbox_id,),
            ).fetchone()
            if open_row is None:
                db.execute(
                    "INSERT INTO running_intervals VALUES (?, ?, ?, NULL)",
                    (sandbox_id, memory_mb, _time(at)),
                )

    def stop_running(self, sandbox_id: str, at: datetime, sample: MemorySample | None = None) -> None:
        """Close the sandbox's open running interval at ``at``, with its last memory sample."""
        with self._transaction() as db:
            if sample is not None:
                _insert_sample(db, sample)
            db.execute(
                "UPDATE running_intervals SET ended_at = MAX(started_at, ?) "
                "WHERE sandbox_id = ? AND ended_at IS NULL",
                (_time(at), sandbox_id),
            )

    def close_abandoned_intervals(self) -> int:
        """Close what a killed server left open, at the sandbox's last sample (or where it opened)."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE running_intervals SET ended_at = MAX(started_at, COALESCE(("
                "SELECT MAX(sampled_at) FROM memory_samples s "
                "WHERE s.sandbox_id = running_intervals.sandbox_id), started_at)) "
                "WHERE ended_at IS NULL"
            )
        return cursor.rowcount

    def record_samples(self, samples: list[MemorySample]) -> None:
        if not samples:
            return
        with self._transaction() as db:
            for sample in samples:
                _insert_sample(db, sample)

    def running_intervals(
        self, start: datetime, end: datetime, *, sandbox_id: str | None = None
    ) -> list[RunningInterval]:
        """Intervals overlapping ``[start, end)`` (open ones too), oldest first."""
        query = "SELECT * FROM running_intervals WHERE started_at < ? AND (ended_at IS NULL OR ended_at > ?)"
        args: list[str | None] = [_time(end), _time(start)]
        if sandbox_id is not None:
            query, args = query + " AND sandbox_id = ?", [*args, sandbox_id]
        rows = self._db.execute(query + " ORDER BY started_at, rowid", args).fetchall()
        return [
            RunningInterval(
                row["sandbox_id"],
                row["memory_mb"],
                _required_time(row["started_at"]),
                _parse_time(row["ended_at"]),
            )
            for row in rows
        ]

    def memory_samples(self, sandbox_id: str, start: datetime, end: datetime) -> list[MemorySample]:
        """Samples taken in ``[start, end)``, oldest first."""
        rows = self._db.execute(
            "SELECT * FROM memory_samples WHERE sandbox_id = ? AND sampled_at >= ? AND sampled_at < ? "
            "ORDER BY sampled_at, rowid",
            (sandbox_id, _time(start), _time(end)),
        ).fetchall()
        return [
            MemorySample(
                row["sandbox_id"],
                _required_time(row["sampled_at"]),
                row["memory_bytes"],
                row["peak_bytes"],
            )
            for row in rows
        ]

    # -- whole store -------------------------------------------------------------------------

    def forget_everything(self) -> None:
        """Drop every resource; settings (the URL-signing secret) stay."""
        with self._transaction() as db:
            for table in (
                "previews",
                "patches",
                "checkpoints",
                "scaling",
                "running_intervals",
                "memory_samples",
                "sandboxes",
            ):
                db.execute(f"DELETE FROM {table}")


def _time(moment: datetime | None) -> str | None:
    # Fixed width, so text order is time order.
    return None if moment is None else moment.isoformat(timespec="microseconds")


def _insert_sample(db: sqlite3.Connection, sample: MemorySample) -> None:
    db.execute(
        "INSERT INTO memory_samples VALUES (?, ?, ?, ?)",
        (sample.sandbox_id, _time(sample.sampled_at), sample.memory_bytes, sample.peak_bytes),
    )


def _parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _required_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _sandbox(row: sqlite3.Row) -> SandboxRecord:
    plain = ("id", "template", "timeout", "cpu_count", "memory_mb", "disk_mb", "token", "preview_auth_hash")
    return SandboxRecord(
        **database.columns(row, *plain, "patch_error", "based_on_checkpoint_id", "last_patch_sequence"),
        status=cast(SandboxStatus, row["status"]),
        started_at=_required_time(row["started_at"]),
        stopped_at=_parse_time(row["stopped_at"]),
        tags_updated_at=_parse_time(row["tags_updated_at"]),
        envs=json.loads(row["envs"]),
        metadata=json.loads(row["metadata"]),
        tags=json.loads(row["tags"]),
        network_enabled=bool(row["network_enabled"]),
    )


def _checkpoint_row(checkpoint: CheckpointRecord) -> tuple[Any, ...]:
    return (
        checkpoint.id,
        checkpoint.sandbox_id,
        checkpoint.name,
        checkpoint.kind,
        checkpoint.status,
        json.dumps(checkpoint.sandbox_config),
        _time(checkpoint.created_at),
        checkpoint.size_bytes,
        checkpoint.error_msg,
        _time(checkpoint.failed_at),
    )


def _checkpoint(row: sqlite3.Row) -> CheckpointRecord:
    return CheckpointRecord(
        **database.columns(row, "id", "sandbox_id", "name", "size_bytes", "error_msg"),
        kind=cast(CheckpointKind, row["kind"]),
        status=cast(CheckpointStatus, row["status"]),
        sandbox_config=json.loads(row["sandbox_config"]),
        created_at=_required_time(row["created_at"]),
        failed_at=_parse_time(row["failed_at"]),
    )


def _patch(row: sqlite3.Row) -> PatchRecord:
    return PatchRecord(
        **database.columns(row, "id", "checkpoint_id", "sequence", "script", "description"),
        created_at=_required_time(row["created_at"]),
    )


def _preview(row: sqlite3.Row) -> PreviewRecord:
    return PreviewRecord(
        **database.columns(row, "id", "sandbox_id", "port", "hostname"),
        auth_config=json.loads(row["auth_config"]),
        created_at=_required_time(row["created_at"]),
    )
