"""What the router knows about each model and the account: cooldowns, speed, success, quota.

The knowledge lives in a :class:`~litellm_freerouter.state.StateStore` (memory, SQLite or
Redis) so that other processes share it; :class:`Health` is its meaning.  It reads the whole
state once per request (:meth:`Health.refresh`), answers every question from that copy, and
sends each change to the store as a pure function of the old entry, which the store applies
atomically: two processes recording a failure at once count two failures.

Times are wall-clock epoch seconds (``clock=time.time``) rather than monotonic ones, because
they are compared across processes and hosts; tests inject a fake clock.  All methods are
thread-safe and cheap: the sync and async paths and the CLI read the same object.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

from .errors import Failure, next_utc_midnight
from .state.base import ACCOUNT, COOL, MODEL, Entry, StateStore
from .state.memory import MemoryStore

# Until a model is measured, assume this first-token time (seconds): slower than a typical
# measured model, so a model that proved fast keeps its lead, yet fast enough to be explored.
DEFAULT_TTFT = 3.0
# How fast old results fade: each new result keeps this share of the old weight.
DECAY = 0.8
# A model's speed is judged on its last this many races (won or lost): its median first-token
# time over them is its expected time, so that one slow draw from a heavy tail does not bench a
# good model, and a model that turned slow is known as slow within half this many races.
SAMPLES = 32
# A model whose last this many races were all more than SHIFT times its median before them (or
# all wins in under 1/SHIFT of it) has changed: the older races are forgotten.  For a model
# with a wide but steady spread (a log-spread of 0.8) three in a row happen about once in 70.
SHIFT_AFTER = 3
SHIFT = 2.0
# Until a model has won this many of its last races, its quantiles are too rough to go by:
# its expected time is a moving average of what it showed (its prior before that), and a
# hedge waits a multiple of that instead of its 95th percentile.
QUANTILES_FROM = 3
# A quantile further out than a model's times can show (of n first-token times, past 1 - 1/n:
# the 95th needs 20, the 99th more than a window of 32 holds; of 32 times the largest is about
# the 97th percentile, of three about the 75th; a race lost early says nothing of the tail, so
# lost races do not count) is never taken below a lognormal's, fitted to the times with
# TAIL_PRIOR_WEIGHT races' worth of a log-spread of TAIL_PRIOR_SPREAD (free models show
# 0.35-0.9). With many times of a steady model the fit narrows to what they show; a heavy tail
# they show still stands. So a model with few races is not hedged at the largest of them.
TAIL_PRIOR_SPREAD = 0.7
TAIL_PRIOR_WEIGHT = 3.0
# Seconds a failed attempt is taken to cost, in ranking (a new contender must start).
FAILURE_COST = 2.0
# Statistics of a model not raced for this long are forgotten.
STATS_KEEP = 7 * 86400.0
# A model's own per-minute limit (learnt from its 429) counts requests over this many seconds.
RPM_WINDOW = 60.0
# At most this many send times are kept per model: far above any free per-minute limit, and a
# bound on what each write stores for a busy proxy.
SENT_KEEP = 100
# A quota entry outlives its reset by a day, so that the limit is still known the next day.
QUOTA_KEEP = 86400.0


@dataclass(slots=True)
class ModelStats:
    cooling_until: float = 0.0
    cool_reason: str = ""
    # Its last races, oldest first: a first-token time it showed (>= 0), or minus the time
    # after which it had still sent no token when it lost (a lower bound).
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    ewma_ttft: float | None = None
    successes: float = 0.0
    failures: float = 0.0
    prior_ttft: float | None = None  # from OpenRouter's per-endpoint latency, when known
    wins: int = 0
    attempts: int = 0
    limit_rpm: int | None = None  # the model's own requests-per-minute limit, once it said so
    # When it was last sent a request, by any process sharing the state (the last minute only).
    sent: deque[float] = field(default_factory=lambda: deque(maxlen=SENT_KEEP))
    # The requests of ``sent`` it refused with a 429 (moved here): they did not use the model's
    # own minute, but OpenRouter counts every attempt against the account's (the last minute).
    refused: deque[float] = field(default_factory=lambda: deque(maxlen=SENT_KEEP))

    @property
    def ttft(self) -> list[float]:
        """The first-token times it showed, in its last races."""
        return [s for s in self.samples if s >= 0]

    @property
    def lost(self) -> list[float]:
        """The times it had still sent no token when it lost, in its last races."""
        return [-s for s in self.samples if s < 0]

    @property
    def measured(self) -> bool:
        return any(s >= 0 for s in self.samples)

    @property
    def settled(self) -> bool:
        """Won enough of its last races for its quantiles to mean something."""
        return sum(1 for s in self.samples if s >= 0) >= QUANTILES_FROM

    def expected_ttft(self) -> float:
        median = self.quantile(0.5) if self.settled else None
        if median is not None:
            return median
        if self.ewma_ttft is not None:
            return self.ewma_ttft
        if self.prior_ttft is not None:
            return self.prior_ttft
        return DEFAULT_TTFT

    def reliability(self) -> float:
        # Laplace's rule: an unknown model counts as 50% until it shows otherwise.
        return (self.successes + 1.0) / (self.successes + self.failures + 2.0)

    def score(self) -> float:
        """Expected seconds to a first token, penalised by how often the model fails: lower wins.

        A failure costs the time it took plus a fresh start elsewhere (``FAILURE_COST``), and a
        model that fails a share ``1 - r`` of the time needs ``1 / r`` tries on average.
        """
        reliability = self.reliability()
        return (self.expected_ttft() + FAILURE_COST * (1 - reliability)) / reliability

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of first-token times (None before the first one).

        Lost races count as lower bounds (Kaplan-Meier): a model is measured only when it wins,
        and leaving out the times it was overtaken while still silent would make its slow tail
        look shorter than it is. Further out than its times can show (past ``1 - 1/n`` of ``n``
        first-token times), it is never below the lognormal estimate (``TAIL_PRIOR_SPREAD``).
        """
        measured = _quantile(self.samples, q)
        if measured is None:
            return None
        times = self.ttft
        # Counted in the times it showed: a race lost early (a hedge overtaken just after it
        # started) says nothing of how far out its tail reaches, so it must not narrow it.
        if q <= 1.0 - 1.0 / len(times):
            return measured
        return max(measured, _lognormal_quantile(times, q))

    def forget_if_changed(self) -> None:
        """Keep only the last ``SHIFT_AFTER`` races when each of them was far from the median
        of the ones before: the model turned slow (or fast), and its old times would hide
        that for half a window."""
        if len(self.samples) < 2 * SHIFT_AFTER:
            return
        races = list(self.samples)
        recent = races[-SHIFT_AFTER:]
        median = _quantile(races[:-SHIFT_AFTER], 0.5)
        if median is None:
            return
        slower = all(abs(s) > median * SHIFT for s in recent)  # a loss this late is slow too
        quicker = all(0 <= s < median / SHIFT for s in recent)
        if slower or quicker:
            self.samples = deque(recent, maxlen=SAMPLES)


@dataclass(slots=True)
class Quota:
    limit: int | None = None
    remaining: int | None = None
    used_here: int = 0  # upstream requests counted (by every sharing process) since read
    resets_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelView:
    id: str
    cooling_for: float  # seconds left, 0 when ready
    cool_reason: str
    measured: bool
    ttft_p50: float | None
    ttft_p90: float | None
    expected_ttft: float
    reliability: float
    score: float
    wins: int
    attempts: int
    limit_rpm: int | None = None  # the model's own requests a minute, once a 429 said it
    limit_wait: float = 0.0  # seconds until its minute frees, when that limit is used up


class Health:
    def __init__(
        self, clock: Callable[[], float] = time.time, store: StateStore | None = None
    ) -> None:
        self.clock = clock
        self.store: StateStore = store if store is not None else MemoryStore()
        self._lock = threading.RLock()
        self._models: dict[str, ModelStats] = {}
        self._blocked: Failure | None = None
        self._blocked_until = 0.0
        self._quota = Quota()
        self._spent_at: deque[float] = deque(maxlen=256)  # this process's recent requests
        # The model entries behind the current copy, to skip rebuilding unchanged ones.
        self._last: dict[str, Entry | None] = {}
        self._read: dict[str, Entry | None] = {}
        self.refresh()

    def refresh(self) -> None:
        """Read what every process sharing the store knows (once per request)."""
        if not self.store.shared:
            return  # nobody else writes there: this copy is already complete
        with self._lock:
            snapshot = self.store.load(self.clock())
            known, self._models, self._read = self._models, {}, {}
            self._blocked, self._blocked_until, self._quota = None, 0.0, Quota()
            # Statistics first: a cooldown lands on the record they made.
            for (space, name), entry in sorted(snapshot.items(), key=lambda i: i[0][0] != MODEL):
                if space == MODEL and entry is self._last.get(name) and name in known:
                    stats = self._models[name] = known[name]  # unchanged: no need to rebuild
                    stats.cooling_until, stats.cool_reason = 0.0, ""
                    self._read[name] = entry
                else:
                    self._absorb(space, name, entry)
            self._last = self._read

    def close(self) -> None:
        self.store.close()

    def _change(
        self, space: str, name: str, change: Callable[[Entry | None], Entry | None]
    ) -> None:
        with self._lock:
            self._absorb(space, name, self.store.update(space, name, change, self.clock()))

    def _absorb(self, space: str, name: str, entry: Entry | None) -> None:
        """Take an entry, as stored, into this copy."""
        data: Mapping[str, Any] = entry.data if entry is not None else {}
        if space == MODEL:
            old = self._models.get(name)
            stats = _stats_from(data)
            self._read[name] = entry
            if old is not None:
                stats.cooling_until, stats.cool_reason = old.cooling_until, old.cool_reason
            self._models[name] = stats
        elif space == COOL:
            stats = self._stats(name)
            stats.cooling_until = _float(data.get("until"))
            stats.cool_reason = str(data.get("reason") or "")
        elif (space, name) == (ACCOUNT, "block"):
            self._blocked = _failure_from(data.get("failure"))
            self._blocked_until = _float(data.get("until")) if self._blocked else 0.0
        elif (space, name) == (ACCOUNT, "quota"):
            self._quota = _quota_from(data)

    # --- models --------------------------------------------------------------------------------

    def _stats(self, model: str) -> ModelStats:
        stats = self._models.get(model)
        if stats is None:
            stats = self._models[model] = ModelStats()
        return stats

    def stats(self, model: str) -> ModelStats:
        with self._lock:
            return self._stats(model)

    def _update_stats(self, model: str, edit: Callable[[ModelStats], None]) -> None:
        expires = self.clock() + STATS_KEEP

        def change(old: Entry | None) -> Entry:
            stats = _stats_from(old.data if old is not None else {})
            edit(stats)
            return Entry(_stats_data(stats), expires)

        self._change(MODEL, model, change)

    def cool(self, model: str, seconds: float, reason: str) -> None:
        if not seconds <= STATS_KEEP:  # an absurd (or not-a-number) length: a week at most
            seconds = STATS_KEEP
        until = self.clock() + seconds

        def change(old: Entry | None) -> Entry:
            if old is not None and _float(old.data.get("until")) >= until:
                return old  # a longer cooldown already holds
            return Entry({"until": until, "reason": reason}, until)

        self._change(COOL, model, change)

    def uncool(self, model: str, reason: str) -> None:
        """Lift ``model``'s cooldown if it was given for ``reason`` (it turned out not to be
        the model's fault)."""

        def change(old: Entry | None) -> Entry | None:
            if old is not None and old.data.get("reason") == reason:
                return None
            return old

        self._change(COOL, model, change)

    def cooling_for(self, model: str) -> float:
        with self._lock:
            stats = self._models.get(model)
            return max(0.0, stats.cooling_until - self.clock()) if stats else 0.0

    def ready(self, model: str) -> bool:
        """May ``model`` be asked now: not cooling down, and under its known per-minute limit."""
        return self.back_in(model) <= 0

    def record_attempt(self, model: str) -> None:
        now = self.clock()

        def edit(stats: ModelStats) -> None:
            stats.attempts += 1
            _trim(stats.sent, now)
            _trim(stats.refused, now)
            stats.sent.append(now)

        self._update_stats(model, edit)

    def _account_minute(self, now: float) -> list[float]:
        """The send times in the account's last minute, oldest first: to any model, refused
        ones included, by every process sharing the state (as of the last refresh and this
        process's own since). Call with the lock held."""
        return sorted(
            t
            for stats in self._models.values()
            for t in (*stats.sent, *stats.refused)
            if t > now - RPM_WINDOW
        )

    def sent_last_minute(self) -> int:
        """Upstream requests started in the account's last minute."""
        with self._lock:
            return len(self._account_minute(self.clock()))

    def minute_frees_in(self, limit: int) -> float:
        """Seconds until fewer than ``limit`` requests are in the account's last minute (0:
        now)."""
        with self._lock:
            now = self.clock()
            recent = self._account_minute(now)
        return _frees_in(recent, limit, now)

    def refused(self, model: str, limit_rpm: int | None) -> None:
        """The model answered 429 without serving: the request did not use the model's minute
        (so its own limit does not count it), but still counts in the account's minute; its
        per-minute limit, when it said one, is remembered."""

        def edit(stats: ModelStats) -> None:
            if stats.sent:
                stats.refused.append(stats.sent.pop())
            if limit_rpm is not None:
                stats.limit_rpm = limit_rpm

        self._update_stats(model, edit)

    def limit_wait(self, model: str) -> float:
        """Seconds until ``model`` may be sent another request without passing its known
        per-minute limit (0: now), counting every sharing process's requests."""
        with self._lock:
            stats = self._models.get(model)
            if stats is None or not stats.limit_rpm:
                return 0.0
            now = self.clock()
            recent = [t for t in stats.sent if t > now - RPM_WINDOW]
            return _frees_in(recent, stats.limit_rpm, now)

    def record_first_token(self, model: str, seconds: float) -> None:
        def edit(stats: ModelStats) -> None:
            stats.samples.append(max(0.0, seconds))
            stats.forget_if_changed()
            stats.ewma_ttft = (
                seconds if stats.ewma_ttft is None else 0.5 * stats.ewma_ttft + 0.5 * seconds
            )
            stats.successes = stats.successes * DECAY + 1.0
            stats.failures *= DECAY
            stats.wins += 1

        self._update_stats(model, edit)

    def record_lower_bound(self, model: str, seconds: float) -> None:
        """A race's loser had sent no token after ``seconds``: its first-token time is at least
        that. Kept for its quantiles, and only ever raises the expected time (a quick loss says
        nothing about being fast), so a model that keeps losing slowly drops down the ranking
        without being called a failure."""

        if not seconds > 0:
            return  # lost before it could have answered: nothing learnt

        def edit(stats: ModelStats) -> None:
            stats.samples.append(-seconds)
            stats.forget_if_changed()
            expected = stats.expected_ttft()
            if seconds > expected:
                stats.ewma_ttft = 0.5 * expected + 0.5 * seconds

        self._update_stats(model, edit)

    def record_failure(self, model: str) -> None:
        def edit(stats: ModelStats) -> None:
            stats.failures = stats.failures * DECAY + 1.0
            stats.successes *= DECAY

        self._update_stats(model, edit)

    def set_prior(self, model: str, ttft: float | None) -> None:
        with self._lock:
            if model in self._models and self._models[model].prior_ttft == ttft:
                return  # the hourly catalogue refresh mostly repeats what is known

        def edit(stats: ModelStats) -> None:
            stats.prior_ttft = ttft

        self._update_stats(model, edit)

    def view(self, model: str) -> ModelView:
        with self._lock:
            stats = self._stats(model)
            return ModelView(
                id=model,
                cooling_for=max(0.0, stats.cooling_until - self.clock()),
                cool_reason=stats.cool_reason if stats.cooling_until > self.clock() else "",
                measured=stats.measured,
                ttft_p50=stats.quantile(0.5),
                ttft_p90=stats.quantile(0.9),
                expected_ttft=stats.expected_ttft(),
                reliability=stats.reliability(),
                score=stats.score(),
                wins=stats.wins,
                attempts=stats.attempts,
                limit_rpm=stats.limit_rpm,
                limit_wait=self.limit_wait(model),
            )

    def back_in(self, model: str) -> float:
        """Seconds until ``model`` may be asked again (0: now): the end of its cooldown, or of
        its known per-minute limit, which a request sent before then would only meet as a 429
        that still counts against the day's quota."""
        with self._lock:
            return max(self.cooling_for(model), self.limit_wait(model))

    def next_ready_in(self, models: Iterable[str]) -> float | None:
        """Seconds until the first of ``models`` may be asked again; None if one may now."""
        with self._lock:
            waits = [self.back_in(m) for m in models]
        waits = [w for w in waits if w > 0]
        return min(waits) if waits else None

    # --- account -------------------------------------------------------------------------------

    def block_account(self, failure: Failure, until: float) -> None:
        if not until <= self.clock() + STATS_KEEP:
            until = self.clock() + STATS_KEEP

        def change(old: Entry | None) -> Entry:
            if old is not None and _float(old.data.get("until")) >= until:
                return old
            return Entry({"until": until, "failure": asdict(failure)}, until)

        self._change(ACCOUNT, "block", change)

    def account_block(self) -> Failure | None:
        with self._lock:
            if self._blocked is not None and self.clock() < self._blocked_until:
                return self._blocked
            return None

    def account_blocked_for(self) -> float:
        """Seconds until calls resume (0 when they are not held)."""
        with self._lock:
            if self._blocked is None:
                return 0.0
            return max(0.0, self._blocked_until - self.clock())

    def clear_account_block(self) -> None:
        self._change(ACCOUNT, "block", lambda old: None)

    @property
    def quota(self) -> Quota:
        with self._lock:
            q = self._quota
            return Quota(q.limit, q.remaining, q.used_here, q.resets_at)

    def set_quota(
        self, limit: int | None, remaining: int | None, asked_at: float | None = None
    ) -> None:
        """The count /key gave; with ``asked_at`` (when the read was decided on, before the
        race it accompanies started), this process's requests sent since are taken off it,
        whether /key counted them yet or not: the count can be low by those, not high."""
        if asked_at is not None and remaining is not None:
            with self._lock:
                since = sum(1 for t in self._spent_at if t >= asked_at)
            remaining = max(0, remaining - since)
        resets_at = next_utc_midnight(self.clock())
        entry = Entry(_quota_data(Quota(limit, remaining, 0, resets_at)), resets_at + QUOTA_KEEP)
        self._change(ACCOUNT, "quota", lambda old: entry)

    def spend(self, requests: int = 1) -> None:
        now = self.clock()
        with self._lock:
            self._spent_at.extend([now] * requests)
            if not self._quota.resets_at:
                # No count known to take it from yet: the /key read that gives one takes it
                # off (see set_quota).
                return

        def change(old: Entry | None) -> Entry | None:
            if old is None:
                return None
            quota = _quota_from(old.data)
            if quota.resets_at and now >= quota.resets_at:
                quota = Quota(quota.limit, quota.limit, 0, next_utc_midnight(now))
            quota.used_here += requests
            if quota.remaining is not None:
                quota.remaining = max(0, quota.remaining - requests)
            return Entry(_quota_data(quota), quota.resets_at + QUOTA_KEEP)

        self._change(ACCOUNT, "quota", change)

    def quota_remaining(self) -> int | None:
        with self._lock:
            if self._quota.resets_at and self.clock() >= self._quota.resets_at:
                return self._quota.limit
            return self._quota.remaining


def _frees_in(recent: list[float], limit: int, now: float) -> float:
    """Seconds until fewer than ``limit`` of the send times ``recent`` (oldest first, all
    within the last minute) are left in the minute (0: now)."""
    if len(recent) < limit:
        return 0.0
    return max(0.0, recent[len(recent) - limit] + RPM_WINDOW - now)


# --- entries, as stored ------------------------------------------------------------------------


def _float(value: Any, default: float = 0.0) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default


def _optional_float(value: Any) -> float | None:
    return None if value is None else _float(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _trim(sent: deque[float], now: float) -> None:
    while sent and sent[0] <= now - RPM_WINDOW:
        sent.popleft()


def _quantile(races: Iterable[float], q: float) -> float | None:
    """Kaplan-Meier: the ``q`` quantile of first-token times over ``races`` (a time >= 0, or
    minus a lower bound), None without a single time."""
    times = sorted((abs(s), s >= 0) for s in races)
    if not any(observed for _, observed in times):
        return None
    survival = 1.0
    for i, (seconds, observed) in enumerate(times):
        if observed:
            survival *= 1.0 - 1.0 / (len(times) - i)
            if 1.0 - survival >= q - 1e-9:
                return seconds
    return times[-1][0]


def _lognormal_quantile(times: list[float], q: float) -> float:
    """The ``q`` quantile of a lognormal fitted to ``times``, its spread drawn towards
    ``TAIL_PRIOR_SPREAD`` by ``TAIL_PRIOR_WEIGHT`` races' worth (0 without a positive time)."""
    logs = [math.log(t) for t in times if t > 0]
    if not logs:
        return 0.0
    mean = sum(logs) / len(logs)
    squares = sum((x - mean) ** 2 for x in logs)
    variance = (TAIL_PRIOR_WEIGHT * TAIL_PRIOR_SPREAD**2 + squares) / (
        TAIL_PRIOR_WEIGHT + len(logs) - 1
    )
    return math.exp(mean + NormalDist().inv_cdf(q) * math.sqrt(variance))


def _numbers(raw: Any) -> list[float]:
    values = raw if isinstance(raw, list) else ()
    return [
        float(s)
        for s in values
        if isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)
    ]


def _samples(raw: Any, maxlen: int | None = None) -> deque[float]:
    return deque(_numbers(raw), maxlen=SAMPLES if maxlen is None else maxlen)


def _races(data: Mapping[str, Any]) -> deque[float]:
    if "samples" in data:
        return _samples(data.get("samples"))
    # Written before wins and losses shared one window: their order between kinds is unknown.
    lost = [-s for s in _numbers(data.get("lost")) if s > 0]
    return _samples(lost + [s for s in _numbers(data.get("ttft")) if s >= 0])


def _stats_from(data: Mapping[str, Any]) -> ModelStats:
    return ModelStats(
        samples=_races(data),
        ewma_ttft=_optional_float(data.get("ewma")),
        successes=_float(data.get("successes")),
        failures=_float(data.get("failures")),
        prior_ttft=_optional_float(data.get("prior")),
        wins=_int(data.get("wins")) or 0,
        attempts=_int(data.get("attempts")) or 0,
        limit_rpm=_int(data.get("limit_rpm")),
        sent=_samples(data.get("sent"), maxlen=SENT_KEEP),
        refused=_samples(data.get("refused"), maxlen=SENT_KEEP),
    )


def _stats_data(stats: ModelStats) -> dict[str, Any]:
    return {
        "samples": list(stats.samples),
        "ewma": stats.ewma_ttft,
        "successes": stats.successes,
        "failures": stats.failures,
        "prior": stats.prior_ttft,
        "wins": stats.wins,
        "attempts": stats.attempts,
        "limit_rpm": stats.limit_rpm,
        "sent": list(stats.sent),
        "refused": list(stats.refused),
    }


def _quota_from(data: Mapping[str, Any]) -> Quota:
    return Quota(
        limit=_int(data.get("limit")),
        remaining=_int(data.get("remaining")),
        used_here=_int(data.get("used")) or 0,
        resets_at=_float(data.get("resets_at")),
    )


def _quota_data(quota: Quota) -> dict[str, Any]:
    return {
        "limit": quota.limit,
        "remaining": quota.remaining,
        "used": quota.used_here,
        "resets_at": quota.resets_at,
    }


def _failure_from(raw: Any) -> Failure | None:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("kind"), str):
        return None
    scope = raw.get("scope")
    return Failure(
        kind=raw["kind"],
        scope=scope if scope in ("model", "request", "account") else "account",
        message=str(raw.get("message") or ""),
        model=raw.get("model") if isinstance(raw.get("model"), str) else None,
        status=_int(raw.get("status")),
        retry_after=_optional_float(raw.get("retry_after")),
        reset_at=_optional_float(raw.get("reset_at")),
    )
