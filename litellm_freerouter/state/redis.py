"""State in Redis, shared by every proxy worker on every host (``FREEROUTER_REDIS_URL``).

Each entry is its own key, ``freerouter:{<scope>}:<space>:<name>``, holding
``{"data": ..., "expires": ...}`` and expiring when the entry does: a cooldown's key vanishes
when the cooldown ends, the daily-quota block's at the reset.  A sorted set
``freerouter:{<scope>}:index`` names the entries, scored by expiry, so that a request reads
the whole state in two round trips (an update takes three).  The free-model list is
``freerouter:catalog:<endpoint hash>``, kept a week.

An update is an optimistic transaction (``WATCH`` the key, read, ``MULTI``/``EXEC``), retried
if another worker changed the key in between: no lost updates.

The client is the sync one, because :class:`~litellm_freerouter.health.Health` is called
synchronously by the router: a request makes one read and a handful of writes, each a fraction
of a millisecond on a nearby Redis.  Timeouts are short and there are no retries, so a Redis
that has gone away costs at most one timeout before :class:`~.resilient.Resilient` switches to
local state; it then probes for Redis's return from a thread, never from the event loop.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .base import CachedCatalog, Change, Entry, Snapshot, StateStore

# Seconds before a Redis command is given up (the store then falls back to local state).
TIMEOUT = 0.5
INDEX_KEEP = 8 * 86400  # longer than any entry's expiry
CATALOG_KEEP = 7 * 86400


def redact(url: str) -> str:
    """The URL without its password, for logs and ``doctor``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _decode(raw: Any) -> Mapping[str, Any] | None:
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _entry(raw: Any) -> Entry | None:
    """An entry from its stored envelope (``{"data": ..., "expires": ...}``); None if garbled."""
    envelope = _decode(raw) if raw is not None else None
    if envelope is None or not isinstance(envelope.get("data"), dict):
        return None
    expires = envelope.get("expires")
    if expires is not None and not isinstance(expires, (int, float)):
        return None
    return Entry(envelope["data"], None if expires is None else float(expires))


class RedisStore(StateStore):
    kind = "redis"

    def __init__(self, url: str, scope: str, catalog_id: str, timeout: float = TIMEOUT) -> None:
        """Raises ImportError without the ``redis`` package; connects lazily."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.where = redact(url)
        self.errors = (redis.exceptions.RedisError, OSError)
        # Typed loosely: redis-py's annotations cover both of its modes (bytes and str).
        self._client: Any = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._prefix = f"freerouter:{{{scope}}}:"
        self._index = self._prefix + "index"
        self._catalog_key = f"freerouter:catalog:{catalog_id}"

    def load(self, now: float) -> Snapshot:
        names: list[str] = self._client.zrangebyscore(self._index, f"({now!r}", "+inf")
        if not names:
            return {}
        values = self._client.mget([self._prefix + n for n in names])
        snapshot: Snapshot = {}
        for member, raw in zip(names, values, strict=True):
            entry = _entry(raw)
            if entry is not None and entry.live(now):
                space, _, name = member.partition(":")
                snapshot[(space, name)] = entry
        return snapshot

    def update(self, space: str, name: str, change: Change, now: float) -> Entry | None:
        member = f"{space}:{name}"
        key = self._prefix + member

        def transaction(pipe: Any) -> Entry | None:
            old = _entry(pipe.get(key))
            if old is not None and not old.live(now):
                old = None
            new = change(old)
            pipe.multi()
            if new is None or not new.live(now):
                pipe.delete(key)
                pipe.zrem(self._index, member)
            elif new is not old:
                value = json.dumps(
                    {"data": new.data, "expires": new.expires}, separators=(",", ":")
                )
                if new.expires is None:
                    pipe.set(key, value)
                    pipe.zadd(self._index, {member: "+inf"})
                else:
                    pipe.set(key, value, px=_ms(new.expires - now))
                    pipe.zadd(self._index, {member: new.expires})
            pipe.zremrangebyscore(self._index, "-inf", now)
            pipe.expire(self._index, INDEX_KEEP)
            return new

        result: Entry | None = self._client.transaction(transaction, key, value_from_callable=True)
        return result

    def load_catalog(self) -> CachedCatalog | None:
        raw = self._client.get(self._catalog_key)
        data = _decode(raw) if raw is not None else None
        if data is None or not isinstance(data.get("models"), list):
            return None
        models = tuple(m for m in data["models"] if isinstance(m, dict))
        return CachedCatalog(models, float(data.get("fetched_at") or 0.0))

    def save_catalog(self, models: Sequence[Mapping[str, Any]], fetched_at: float) -> None:
        payload = {"fetched_at": fetched_at, "models": list(models)}
        self._client.set(
            self._catalog_key, json.dumps(payload, separators=(",", ":")), ex=CATALOG_KEEP
        )

    def clear(self, everything: bool = False) -> int:
        pattern = "freerouter:*" if everything else self._prefix + "*"
        keys = list(self._client.scan_iter(match=pattern, count=500))
        entries = sum(1 for k in keys if not k.endswith(":index") and ":catalog:" not in k)
        if not everything:
            keys.append(self._catalog_key)
        for start in range(0, len(keys), 500):
            self._client.delete(*keys[start : start + 500])
        return entries

    def ping(self) -> None:
        self._client.ping()

    def close(self) -> None:
        self._client.close()
