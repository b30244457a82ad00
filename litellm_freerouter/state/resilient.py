"""A shared store that can never fail a request: local state while it is away.

Every entry read from or written to the shared store is mirrored in memory.  When the store
stops answering (Redis killed, the SQLite file locked for too long or damaged), one warning is
logged and the mirror takes over: the cooldowns and limits known so far still hold, and new
ones are kept locally.  A background probe asks the store again every few seconds, off the
event loop; when it answers, every live entry known here is written back (the later expiry
wins, so no cooldown is shortened, and a Redis restarted empty learns them again; of two
counts of the day's quota, the one with fewer requests left) and the store is used again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .base import (
    ACCOUNT,
    CachedCatalog,
    Change,
    Entry,
    Snapshot,
    StateStore,
    StateUnavailable,
)
from .memory import MemoryStore

log = logging.getLogger("litellm_freerouter")
T = TypeVar("T")

# Seconds between probes of a store that went away.
RETRY_EVERY = 5.0


class Resilient(StateStore):
    def __init__(
        self, primary: StateStore, retry_every: float | None = None, down: str | None = None
    ) -> None:
        """``down``: the store is known to be away already (why), and is tried again in the
        background from the first use, warning once now."""
        self.primary = primary
        self.kind = primary.kind
        self.where = primary.where
        self.errors = primary.errors
        self.retry_every = RETRY_EVERY if retry_every is None else retry_every
        self.local = MemoryStore()
        self._lock = threading.Lock()
        self._down: str | None = None  # what went wrong, while it is away
        self._answered = False  # the probe got an answer: try the store again
        self._probe: threading.Thread | None = None
        self._next_probe = 0.0
        self._closed = False
        if down is not None:
            self._mark_down(down, probe_in=0.0)

    @property
    def problem(self) -> str | None:
        down = self._down
        return None if down is None else f"{down}; using this process's own state meanwhile"

    # --- the switch --------------------------------------------------------------------------

    def _run(self, shared: Callable[[], T], local: Callable[[], T], now: float) -> T:
        if self._down is None:
            try:
                return shared()
            except self.errors as exc:
                self._went_away(exc)
                return local()
        if not self._answered:
            self._start_probe()
            return local()
        try:
            self._write_back(now)
            result = shared()
        except self.errors as exc:
            self._went_away(exc)  # still away: no second warning
            return local()
        with self._lock:
            self._down = None
        log.info("freerouter state: %s at %s answers again", self.kind, self.where)
        return result

    def _went_away(self, exc: BaseException) -> None:
        self._mark_down(_describe(exc), probe_in=self.retry_every)

    def _mark_down(self, why: str, probe_in: float) -> None:
        """The store is away (``why``): use the local state, and probe it again after
        ``probe_in`` seconds; warn the first time only."""
        with self._lock:
            first = self._down is None
            self._down = f"{self.kind} at {self.where} is unavailable ({why})"
            self._answered = False
            self._next_probe = time.monotonic() + probe_in
        if first:
            log.warning(
                "freerouter state: %s; carrying on with this process's own state, and trying"
                " again every %g s",
                self._down,
                self.retry_every,
            )

    def _start_probe(self) -> None:
        with self._lock:
            if (
                self._closed
                or time.monotonic() < self._next_probe
                or (self._probe is not None and self._probe.is_alive())
            ):
                return
            self._next_probe = time.monotonic() + self.retry_every
            self._probe = threading.Thread(
                target=self._ping, name="freerouter-state-probe", daemon=True
            )
            self._probe.start()

    def _ping(self) -> None:
        try:
            self.primary.ping()
        except Exception:  # any failure just means "not yet"
            return
        self._answered = True

    def _write_back(self, now: float) -> None:
        """What this process knows, merged back in: the later expiry wins.

        All of it, not only what changed meanwhile: a Redis that restarted has lost the rest.
        """
        for key, entry in self.local.load(now).items():
            merge = _fewer_left if key == (ACCOUNT, "quota") else _later
            self.primary.update(*key, merge(entry), now)
        mine = self.local.load_catalog()
        if mine is not None:
            theirs = self.primary.load_catalog()
            if theirs is None or theirs.fetched_at < mine.fetched_at:
                self.primary.save_catalog(mine.models, mine.fetched_at)

    # --- the interface -----------------------------------------------------------------------

    def load(self, now: float) -> Snapshot:
        def shared() -> Snapshot:
            snapshot = self.primary.load(now)
            self.local.replace(snapshot)
            return snapshot

        return self._run(shared, lambda: self.local.load(now), now)

    def update(self, space: str, name: str, change: Change, now: float) -> Entry | None:
        def shared() -> Entry | None:
            entry = self.primary.update(space, name, change, now)
            self.local.put((space, name), entry)
            return entry

        return self._run(shared, lambda: self.local.update(space, name, change, now), now)

    def load_catalog(self) -> CachedCatalog | None:
        now = time.time()
        return self._run(self.primary.load_catalog, self.local.load_catalog, now)

    def save_catalog(self, models: Sequence[Mapping[str, Any]], fetched_at: float) -> None:
        self.local.save_catalog(models, fetched_at)
        self._run(lambda: self.primary.save_catalog(models, fetched_at), lambda: None, time.time())

    def clear(self, everything: bool = False) -> int:
        self.local.clear()
        try:
            return self.primary.clear(everything)
        except self.errors as exc:
            raise StateUnavailable(f"{self.kind} at {self.where}: {_describe(exc)}") from exc

    def ping(self) -> None:
        self.primary.ping()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            probe = self._probe
        if probe is not None:
            probe.join(2.0)
        self.primary.close()


def _later(mine: Entry) -> Change:
    def change(old: Entry | None) -> Entry | None:
        if old is None:
            return mine
        theirs = math.inf if old.expires is None else old.expires
        ours = math.inf if mine.expires is None else mine.expires
        return mine if ours > theirs else old

    return change


def _fewer_left(mine: Entry) -> Change:
    """The day's quota: of two counts of the same day, the one with fewer requests left.

    Both carry the same expiry (the reset, plus a day), so the later expiry would keep the
    store's and drop what this process spent while it was away; the lower count keeps at
    least the larger of the two spendings. A count of a later day wins over an earlier one.
    """

    def change(old: Entry | None) -> Entry | None:
        if old is None:
            return mine
        if old.data.get("resets_at") != mine.data.get("resets_at"):
            return _later(mine)(old)
        return mine if _left(mine) < _left(old) else old

    return change


def _left(entry: Entry) -> float:
    remaining = entry.data.get("remaining")
    if isinstance(remaining, (int, float)) and not isinstance(remaining, bool):
        return float(remaining)
    return math.inf


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
