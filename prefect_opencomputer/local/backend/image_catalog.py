"""The image cache and named snapshots, persisted in the server's state database (table `images`).

One unnamed row per content hash is the build cache: it owns the checkpoint a build produced. A named row is
a snapshot: a name pointing at a build's checkpoint (the service shares one checkpoint between them too).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, cast

from prefect_opencomputer.local.backend import database
from prefect_opencomputer.local.errors import NameTaken

ImageStatus = Literal["building", "ready", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    name TEXT UNIQUE,
    checkpoint_id TEXT,
    manifest TEXT NOT NULL,
    status TEXT NOT NULL,
    workdir TEXT,
    created_at TEXT NOT NULL,
    last_used_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS images_build_cache ON images (content_hash) WHERE name IS NULL;
"""


@dataclass
class ImageRecord:
    id: str
    content_hash: str
    name: str | None
    checkpoint_id: str | None
    manifest: dict[str, object]
    status: ImageStatus
    created_at: datetime
    last_used_at: datetime
    workdir: str | None = None


class ImageCatalog(database.Database):
    """Rows of the `images` table; every write commits before it returns, like the rest of the state."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA)

    def insert(self, image: ImageRecord) -> None:
        """Add a row; raises `NameTaken` when a snapshot already has its name."""
        try:
            with self._transaction() as db:
                db.execute("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _row(image))
        except sqlite3.IntegrityError as error:
            if image.name is not None and self.named(image.name) is not None:
                raise NameTaken("snapshot name already exists") from error
            raise

    def save(self, image: ImageRecord) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _row(image))

    def delete(self, image_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM images WHERE id = ?", (image_id,))

    def build_cache(self, content_hash: str) -> ImageRecord | None:
        """The unnamed row holding the build of this content, if any."""
        return self._one("SELECT * FROM images WHERE content_hash = ? AND name IS NULL", (content_hash,))

    def named(self, name: str) -> ImageRecord | None:
        return self._one("SELECT * FROM images WHERE name = ?", (name,))

    def all(self, *, named_only: bool = False) -> list[ImageRecord]:
        """Newest first."""
        where = "WHERE name IS NOT NULL " if named_only else ""
        rows = self._db.execute(
            f"SELECT * FROM images {where}ORDER BY created_at DESC, rowid DESC"
        ).fetchall()
        return [_image(row) for row in rows]

    def forget_everything(self) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM images")

    def _one(self, query: str, args: tuple[str, ...]) -> ImageRecord | None:
        row = self._db.execute(query, args).fetchone()
        return None if row is None else _image(row)


def _time(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def _row(image: ImageRecord) -> tuple[object, ...]:
    return (
        image.id,
        image.content_hash,
        image.name,
        image.checkpoint_id,
        json.dumps(image.manifest),
        image.status,
        image.workdir,
        _time(image.created_at),
        _time(image.last_used_at),
    )


def _image(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(
        **database.columns(row, "id", "content_hash", "name", "checkpoint_id", "workdir"),
        manifest=json.loads(row["manifest"]),
        status=cast(ImageStatus, row["status"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        last_used_at=datetime.fromisoformat(row["last_used_at"]),
    )
