"""State in this process only: the fallback, and what a bare ``Health()`` uses."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .base import CachedCatalog, Change, Entry, Key, Snapshot, StateStore


class MemoryStore(StateStore):
    kind = "memory"
    shared = False

    def __init__(self, where: str = "this process only", problem: str | None = None) -> None:
        self.where = where
        self._problem = problem  # why a shared store could not be used, if that is why
        self._lock = threading.Lock()
        self._entries: dict[Key, Entry] = {}
        self._catalog: CachedCatalog | None = None

    @property
    def problem(self) -> str | None:
        return self._problem

    def load(self, now: float) -> Snapshot:
        with self._lock:
            return {key: entry for key, entry in self._entries.items() if entry.live(now)}

    def update(self, space: str, name: str, change: Change, now: float) -> Entry | None:
        key = (space, name)
        with self._lock:
            old = self._entries.get(key)
            new = change(old if old is not None and old.live(now) else None)
            if new is None or not new.live(now):
                self._entries.pop(key, None)
            else:
                self._entries[key] = new
            return new

    def put(self, key: Key, entry: Entry | None) -> None:
        with self._lock:
            if entry is None:
                self._entries.pop(key, None)
            else:
                self._entries[key] = entry

    def replace(self, snapshot: Snapshot) -> None:
        """Take ``snapshot`` as the whole state (a mirror of a shared store)."""
        with self._lock:
            self._entries = dict(snapshot)

    def load_catalog(self) -> CachedCatalog | None:
        return self._catalog

    def save_catalog(self, models: Sequence[Mapping[str, Any]], fetched_at: float) -> None:
        self._catalog = CachedCatalog(tuple(models), fetched_at)

    def clear(self, everything: bool = False) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            self._catalog = None
            return count
