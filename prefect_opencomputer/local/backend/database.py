"""The server's SQLite file: how it is opened and how a write is committed, in one place."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from prefect_opencomputer.local.private_files import force_private, make_private_dir, make_private_file


def connect(path: Path, schema: str) -> sqlite3.Connection:
    """Open ``path`` (WAL, fsync on every commit: an acknowledged write survives a crash) with ``schema``.

    The file and its ``-wal``/``-shm`` companions are 0600 (SQLite gives the companions the main
    file's mode; existing ones are forced too): the state holds secrets.
    """
    make_private_dir(path.parent)
    make_private_file(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    force_private(path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Database:
    """Tables in one SQLite file (`connect`); every write goes through `_transaction`."""

    def __init__(self, path: Path, schema: str) -> None:
        self._db = connect(path, schema)

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db)


def columns(row: sqlite3.Row, *names: str) -> dict[str, Any]:
    """The row's values of ``names``, by name: the fields a record stores as they are."""
    return {name: row[name] for name in names}
