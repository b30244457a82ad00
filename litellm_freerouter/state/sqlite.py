"""State in one SQLite file that every process of the user shares (the default).

Several aider sessions and proxy workers on one host use the file at once: WAL mode lets
readers run beside the one writer, every update is one short ``BEGIN IMMEDIATE`` transaction
(read the entry, apply the change, write it back: no lost updates), and ``busy_timeout`` waits
out another process's transaction instead of failing.  The file and its WAL are readable by
the owner only; they hold hashes of keys, never a key.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .base import CachedCatalog, Change, Entry, Key, Snapshot, StateStore, StateUnavailable

log = logging.getLogger("litellm_freerouter")

FILENAME = "state.sqlite3"
SCHEMA_VERSION = 1
# Seconds to wait for another process's transaction; ours last microseconds.
BUSY_TIMEOUT = 2.0
CATALOG_KEEP = 7 * 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    scope TEXT NOT NULL,
    space TEXT NOT NULL,
    name TEXT NOT NULL,
    data TEXT NOT NULL,
    expires REAL,
    PRIMARY KEY (scope, space, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS catalogs (
    id TEXT PRIMARY KEY,
    fetched_at REAL NOT NULL,
    models TEXT NOT NULL
);
"""


def _private_dir(directory: Path) -> None:
    if not directory.is_dir():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask


def _private_file(path: Path) -> None:
    """Create the file owner-only before SQLite does (SQLite gives its WAL the same mode)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with suppress(FileNotFoundError):
            if each.stat().st_mode & 0o077:
                os.chmod(each, 0o600)


def _busy(exc: BaseException) -> bool:
    """Is this SQLite's "database is locked" (another process is writing), not damage?"""
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in str(exc).lower() for word in ("locked", "busy")
    )


def _decode(data: str) -> Mapping[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class SqliteStore(StateStore):
    kind = "sqlite"
    errors = (sqlite3.Error, OSError)

    def __init__(self, directory: Path, scope: str, catalog_id: str) -> None:
        """Open (creating) the file; raises :class:`StateUnavailable` when it cannot."""
        self.path = directory / FILENAME
        self.where = str(self.path)
        self._scope = scope
        self._catalog_id = catalog_id
        self._lock = threading.Lock()
        self._decoded: dict[Key, tuple[str, Entry]] = {}
        try:
            _private_dir(directory)
            _private_file(self.path)
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StateUnavailable(f"cannot open {self.path}: {exc}", busy=_busy(exc)) from exc
        try:
            self._prepare()
        except (OSError, sqlite3.Error, StateUnavailable) as exc:
            self._db.close()
            if isinstance(exc, StateUnavailable):
                raise
            raise StateUnavailable(f"cannot use {self.path}: {exc}", busy=_busy(exc)) from exc

    def _prepare(self) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        with self._transaction():
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateUnavailable(
                    f"{self.path} was written by a newer litellm-freerouter"
                    f" (schema {version}, this one knows {SCHEMA_VERSION})"
                )
            # One statement at a time: executescript() would commit this transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # Also proves the file writable now, rather than at the first cooldown.
            db.execute("DELETE FROM entries WHERE expires <= ?", (time.time(),))
            db.execute("DELETE FROM catalogs WHERE fetched_at <= ?", (time.time() - CATALOG_KEEP,))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def load(self, now: float) -> Snapshot:
        with self._lock:
            rows = self._db.execute(
                "SELECT space, name, data, expires FROM entries"
                " WHERE scope = ? AND (expires IS NULL OR expires > ?)",
                (self._scope, now),
            ).fetchall()
        # Most entries are unchanged since the last request: decode only the ones that changed.
        known, self._decoded = self._decoded, {}
        snapshot: Snapshot = {}
        for space, name, raw, expires in rows:
            key = (space, name)
            entry = known.get(key)
            if entry is None or entry[0] != raw or entry[1].expires != expires:
                data = _decode(raw)
                if data is None:
                    continue
                entry = (raw, Entry(data, expires))
            self._decoded[key] = entry
            snapshot[key] = entry[1]
        return snapshot

    def update(self, space: str, name: str, change: Change, now: float) -> Entry | None:
        where = (self._scope, space, name)
        with self._transaction() as db:
            row = db.execute(
                "SELECT data, expires FROM entries WHERE scope = ? AND space = ? AND name = ?",
                where,
            ).fetchone()
            old = None
            if row is not None:
                data = _decode(row[0])
                if data is not None and (row[1] is None or row[1] > now):
                    old = Entry(data, row[1])
            new = change(old)
            if new is None or not new.live(now):
                if row is not None:
                    db.execute(
                        "DELETE FROM entries WHERE scope = ? AND space = ? AND name = ?", where
                    )
            elif new is not old:
                db.execute(
                    "INSERT OR REPLACE INTO entries (scope, space, name, data, expires)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (*where, json.dumps(new.data, separators=(",", ":")), _finite(new.expires)),
                )
        return new

    def load_catalog(self) -> CachedCatalog | None:
        with self._lock:
            row = self._db.execute(
                "SELECT fetched_at, models FROM catalogs WHERE id = ?", (self._catalog_id,)
            ).fetchone()
        if row is None:
            return None
        try:
            models = json.loads(row[1])
        except ValueError:
            return None
        if not isinstance(models, list):
            return None
        return CachedCatalog(tuple(m for m in models if isinstance(m, dict)), float(row[0]))

    def save_catalog(self, models: Sequence[Mapping[str, Any]], fetched_at: float) -> None:
        payload = json.dumps(list(models), separators=(",", ":"))
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO catalogs (id, fetched_at, models) VALUES (?, ?, ?)",
                (self._catalog_id, fetched_at, payload),
            )

    def clear(self, everything: bool = False) -> int:
        with self._transaction() as db:
            if everything:
                count = db.execute("DELETE FROM entries").rowcount
                db.execute("DELETE FROM catalogs")
            else:
                count = db.execute("DELETE FROM entries WHERE scope = ?", (self._scope,)).rowcount
                db.execute("DELETE FROM catalogs WHERE id = ?", (self._catalog_id,))
        return int(count)

    def ping(self) -> None:
        with self._lock:
            self._db.execute("SELECT count(*) FROM entries WHERE scope = ?", (self._scope,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def remove_files(directory: Path) -> bool:
    """Delete the state file and its WAL (for a file too damaged to open); True if any went."""
    removed = False
    for suffix in ("", "-wal", "-shm"):
        with suppress(FileNotFoundError, NotADirectoryError):
            (directory / (FILENAME + suffix)).unlink()
            removed = True
    return removed


class LockedAtStart(StateStore):
    """The SQLite file, held locked by another process when this one started: each use tries
    to open it again.  Used under :class:`Resilient`, which keeps state in memory meanwhile
    and writes it back once the file opens, so that a long-running process (a proxy) that
    happened to start during a lock does not stay on its own state for life."""

    kind = "sqlite"
    errors = (sqlite3.Error, OSError, StateUnavailable)

    def __init__(self, directory: Path, scope: str, catalog_id: str) -> None:
        self.where = str(directory / FILENAME)
        self._directory = directory
        self._scope = scope
        self._catalog_id = catalog_id
        self._lock = threading.Lock()
        self._store: SqliteStore | None = None
        self._closed = False

    def _opened(self) -> SqliteStore:
        with self._lock:
            if self._closed:
                raise StateUnavailable(f"{self.where} is closed")
            if self._store is None:
                try:
                    self._store = SqliteStore(self._directory, self._scope, self._catalog_id)
                except StateUnavailable as exc:
                    if exc.busy:
                        raise StateUnavailable(
                            f"the state file {self.where} is locked by another process",
                            busy=True,
                        ) from exc
                    raise
            return self._store

    def load(self, now: float) -> Snapshot:
        return self._opened().load(now)

    def update(self, space: str, name: str, change: Change, now: float) -> Entry | None:
        return self._opened().update(space, name, change, now)

    def load_catalog(self) -> CachedCatalog | None:
        return self._opened().load_catalog()

    def save_catalog(self, models: Sequence[Mapping[str, Any]], fetched_at: float) -> None:
        self._opened().save_catalog(models, fetched_at)

    def clear(self, everything: bool = False) -> int:
        return self._opened().clear(everything)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            store, self._store = self._store, None
        if store is not None:
            store.close()
