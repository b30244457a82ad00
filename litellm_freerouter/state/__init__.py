"""What the router knows, kept beyond one process: in memory, in SQLite, or in Redis.

:func:`open_store` picks the backend from the settings: Redis when ``redis_url`` is set, else
the SQLite file in ``state_dir`` (the user cache directory by default), else, when that cannot
be opened, memory with one warning.  The router never knows which one it has.  State is
scoped by endpoint and by a hash of the key (:func:`scope_of`); the key itself is never stored.

:func:`describe` and :func:`clear` are what ``freerouter models``, ``doctor`` and
``state clear`` show and do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import (
    ACCOUNT,
    COOL,
    MODEL,
    CachedCatalog,
    Change,
    Entry,
    Snapshot,
    StateStore,
    StateUnavailable,
    digest,
)
from .memory import MemoryStore
from .resilient import Resilient

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("litellm_freerouter")

__all__ = [
    "ACCOUNT",
    "COOL",
    "MODEL",
    "CachedCatalog",
    "Change",
    "Cooling",
    "Entry",
    "MemoryStore",
    "Snapshot",
    "StateReport",
    "StateStore",
    "StateUnavailable",
    "clear",
    "describe",
    "open_store",
    "scope_of",
]

_warned: set[str] = set()


def _warn_once(what: str, message: str) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning("freerouter state: %s", message)


def scope_of(settings: Settings) -> str:
    """Whose state: a hash of the key, and of the endpoint unless it is OpenRouter's own."""
    from ..config import DEFAULT_API_BASE

    if settings.base == DEFAULT_API_BASE:
        return settings.key_id
    return f"{settings.key_id}@{digest(settings.base, 8)}"


def catalog_id(settings: Settings) -> str:
    return digest(settings.base)


def open_store(settings: Settings) -> StateStore:
    """The store these settings name; never raises (the fallback is memory, with a warning)."""
    scope, catalog = scope_of(settings), catalog_id(settings)
    if settings.redis_url:
        try:
            from .redis import RedisStore

            return Resilient(RedisStore(settings.redis_url, scope, catalog))
        except ImportError:
            _warn_once(
                "redis-missing",
                "redis_url is set but the redis package is not installed (pip install"
                " 'litellm-freerouter[redis]'); keeping state in a local file instead",
            )
        except ValueError as exc:  # an unparsable URL
            _warn_once("redis-url", f"ignoring redis_url: {exc}")
    from .sqlite import LockedAtStart, SqliteStore

    directory = settings.resolved_state_dir()
    try:
        return Resilient(SqliteStore(directory, scope, catalog), retry_every=30.0)
    except StateUnavailable as exc:
        if exc.busy:  # in use by another process, not damaged: keep trying it
            return Resilient(
                LockedAtStart(directory, scope, catalog), retry_every=30.0, down=str(exc)
            )
        _warn_once(
            str(directory),
            f"{exc}; keeping state in memory for this process (`freerouter state clear`"
            " starts a fresh file)",
        )
        return MemoryStore(problem=f"{exc}; state is kept in memory, for this process only")


# --- for the command line ---------------------------------------------------------------------


def _plain(kind: str) -> str:
    return kind.replace("_", " ")


@dataclass(frozen=True, slots=True)
class Cooling:
    model: str
    seconds: float
    reason: str  # a failure kind, such as "rate_limited"


@dataclass(frozen=True, slots=True)
class AtLimit:
    model: str
    seconds: float  # until the oldest request sent to it leaves the minute
    limit_rpm: int


@dataclass(frozen=True, slots=True)
class StateReport:
    """What the shared state says, at one moment."""

    backend: str  # "sqlite", "redis" or "memory"
    where: str  # the file, or the Redis URL without its password
    problem: str | None  # why the configured backend is not (fully) in use
    cooling: tuple[Cooling, ...]
    # Models not cooling whose stated per-minute limit is used up: left out of races for now.
    at_limit: tuple[AtLimit, ...]
    blocked: str | None  # the failure kind stopping every call (daily_quota, minute_limit)
    blocked_for: float  # seconds until calls resume
    quota_remaining: int | None
    quota_limit: int | None
    quota_resets_at: float | None
    measured: int  # models with measured first-token times
    catalog_models: int | None  # free models in the cached list
    catalog_age: float | None  # seconds since it was fetched

    def lines(self, reason: Callable[[str], str] = _plain) -> list[str]:
        """The report as plain lines, for ``freerouter state show``; ``reason`` words a
        failure kind (the CLI passes its ``kind_text``)."""
        out = [f"state: {self.backend} at {self.where}"]
        if self.problem:
            out.append(f"  problem: {self.problem}")
        if self.catalog_models is not None and self.catalog_age is not None:
            plural = "" if self.catalog_models == 1 else "s"
            out.append(
                f"  cached catalogue: {self.catalog_models} free model{plural},"
                f" fetched {_ago(self.catalog_age)}"
            )
        if self.blocked:
            out.append(
                f"  every call held: {reason(self.blocked)} for another {_span(self.blocked_for)}"
            )
        if self.quota_remaining is not None and self.quota_limit is not None:
            out.append(f"  free requests left today: {self.quota_remaining} of {self.quota_limit}")
        out.append(f"  models measured: {self.measured}")
        if self.cooling:
            out.append(f"  cooling down: {len(self.cooling)}")
            out.extend(
                f"    {c.model}: {_span(c.seconds)} more ({reason(c.reason)})" for c in self.cooling
            )
        else:
            out.append("  cooling down: none")
        if self.at_limit:
            out.append(f"  at their per-minute limit: {len(self.at_limit)}")
            out.extend(
                f"    {a.model}: {_span(a.seconds)} more ({a.limit_rpm} a minute)"
                for a in self.at_limit
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "where": self.where,
            "problem": self.problem,
            "cooling": [
                {"model": c.model, "seconds": round(c.seconds, 1), "reason": c.reason}
                for c in self.cooling
            ],
            "at_limit": [
                {"model": a.model, "seconds": round(a.seconds, 1), "limit_rpm": a.limit_rpm}
                for a in self.at_limit
            ],
            "blocked": self.blocked,
            "blocked_seconds": round(self.blocked_for, 1) if self.blocked else None,
            "quota_remaining": self.quota_remaining,
            "quota_limit": self.quota_limit,
            "quota_resets_at": self.quota_resets_at,
            "measured": self.measured,
            "catalog_models": self.catalog_models,
            "catalog_age_seconds": None if self.catalog_age is None else round(self.catalog_age),
        }


def describe(settings: Settings, now: float | None = None) -> StateReport:
    """Read the state these settings share, once, without touching the network."""
    from ..health import Health

    store = open_store(settings)
    try:
        health = Health(store=store)
        now = time.time() if now is None else now
        snapshot = store.load(now)
        cooling = tuple(
            sorted(
                (
                    Cooling(name, health.cooling_for(name), health.view(name).cool_reason)
                    for (space, name) in snapshot
                    if space == COOL and health.cooling_for(name) > 0
                ),
                key=lambda c: c.model,
            )
        )
        at_limit = tuple(
            sorted(
                (
                    AtLimit(name, health.limit_wait(name), health.stats(name).limit_rpm or 0)
                    for (space, name) in snapshot
                    if space == MODEL
                    and health.cooling_for(name) <= 0
                    and health.limit_wait(name) > 0
                ),
                key=lambda a: a.model,
            )
        )
        block = health.account_block()
        quota = health.quota
        cached = store.load_catalog()
        problem = store.problem
        if settings.redis_url and store.kind != "redis":
            problem = "; ".join(filter(None, [_redis_unused(settings.redis_url), problem]))
        return StateReport(
            backend=store.kind,
            where=store.where,
            problem=problem,
            cooling=cooling,
            at_limit=at_limit,
            blocked=None if block is None else block.kind,
            blocked_for=health.account_blocked_for(),
            quota_remaining=health.quota_remaining(),
            quota_limit=quota.limit,
            quota_resets_at=quota.resets_at or None,
            measured=sum(
                1 for (space, name) in snapshot if space == MODEL and health.stats(name).measured
            ),
            catalog_models=None if cached is None else len(cached.models),
            catalog_age=None if cached is None else max(0.0, now - cached.fetched_at),
        )
    finally:
        store.close()


def _redis_unused(url: str) -> str:
    """Why a configured Redis is not the store (open_store fell back to a file)."""
    try:
        from .redis import RedisStore  # noqa: F401
    except ImportError:
        return (
            "FREEROUTER_REDIS_URL is set but the redis package is not installed (pip install"
            " 'litellm-freerouter[redis]'): state is not shared"
        )
    return "FREEROUTER_REDIS_URL is not a Redis URL (redis://host:port/db): state is not shared"


def clear(settings: Settings, everything: bool = False) -> str:
    """Forget the state of this endpoint and key (of every one with ``everything``): the
    cooldowns, statistics, account limits and cached catalogue.  Returns what was done."""
    from .sqlite import remove_files

    store = open_store(settings)
    try:
        if isinstance(store, MemoryStore) and settings.redis_url is None:
            directory = settings.resolved_state_dir()
            # The file could not be opened (damaged, or from a newer version): start afresh.
            # (One that is only locked is not a MemoryStore: clearing it waits for the lock.)
            if remove_files(directory):
                return f"removed the unusable state file in {directory}"
            return "no state to clear"
        try:
            count = store.clear(everything)
        except StateUnavailable as exc:
            raise StateUnavailable(f"{exc}; nothing was cleared: try again in a moment") from exc
    finally:
        store.close()
    whose = "every key and endpoint" if everything else "this key and endpoint"
    return (
        f"cleared {count} entries and the cached catalogue for {whose}"
        f" ({store.kind} at {store.where})"
    )


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _ago(seconds: float) -> str:
    return "just now" if seconds < 1 else f"{_span(seconds)} ago"
