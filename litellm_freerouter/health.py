"""What the router knows about each model and the account: cooldowns, speed, success, quota.

Times are wall-clock epoch seconds (``clock=time.time``) rather than monotonic ones, because
this state is shared between processes (issue 5); tests inject a fake clock.  All methods are
thread-safe and cheap: the sync and async paths and the CLI read the same object.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .errors import Failure, next_utc_midnight

# Until a model is measured, assume this first-token time (seconds): slower than a typical
# measured model, so a model that proved fast keeps its lead, yet fast enough to be explored.
DEFAULT_TTFT = 3.0
# How fast old results fade: each new result keeps this share of the old weight.
DECAY = 0.8
SAMPLES = 32
# Seconds a failed attempt is taken to cost, in ranking (a new contender must start).
FAILURE_COST = 2.0


@dataclass(slots=True)
class ModelStats:
    cooling_until: float = 0.0
    cool_reason: str = ""
    ttft: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    ewma_ttft: float | None = None
    successes: float = 0.0
    failures: float = 0.0
    prior_ttft: float | None = None  # from OpenRouter's per-endpoint latency, when known
    wins: int = 0
    attempts: int = 0

    @property
    def measured(self) -> bool:
        return bool(self.ttft)

    def expected_ttft(self) -> float:
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
        if not self.ttft:
            return None
        ordered = sorted(self.ttft)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(slots=True)
class Quota:
    limit: int | None = None
    remaining: int | None = None
    used_here: int = 0  # upstream requests this process (or shared state) counted since read
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


class Health:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self._models: dict[str, ModelStats] = {}
        self._blocked: Failure | None = None
        self._blocked_until = 0.0
        self.quota = Quota()

    # --- models --------------------------------------------------------------------------------

    def _stats(self, model: str) -> ModelStats:
        stats = self._models.get(model)
        if stats is None:
            stats = self._models[model] = ModelStats()
        return stats

    def stats(self, model: str) -> ModelStats:
        with self._lock:
            return self._stats(model)

    def cool(self, model: str, seconds: float, reason: str) -> None:
        with self._lock:
            stats = self._stats(model)
            until = self.clock() + seconds
            if until > stats.cooling_until:
                stats.cooling_until = until
                stats.cool_reason = reason

    def cooling_for(self, model: str) -> float:
        with self._lock:
            stats = self._models.get(model)
            return max(0.0, stats.cooling_until - self.clock()) if stats else 0.0

    def ready(self, model: str) -> bool:
        return self.cooling_for(model) <= 0

    def record_attempt(self, model: str) -> None:
        with self._lock:
            self._stats(model).attempts += 1

    def record_first_token(self, model: str, seconds: float) -> None:
        with self._lock:
            stats = self._stats(model)
            stats.ttft.append(seconds)
            stats.ewma_ttft = (
                seconds if stats.ewma_ttft is None else 0.5 * stats.ewma_ttft + 0.5 * seconds
            )
            stats.successes = stats.successes * DECAY + 1.0
            stats.failures *= DECAY
            stats.wins += 1

    def record_failure(self, model: str) -> None:
        with self._lock:
            stats = self._stats(model)
            stats.failures = stats.failures * DECAY + 1.0
            stats.successes *= DECAY

    def set_prior(self, model: str, ttft: float | None) -> None:
        with self._lock:
            self._stats(model).prior_ttft = ttft

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
            )

    def next_ready_in(self, models: Iterable[str]) -> float | None:
        with self._lock:
            waits = [self.cooling_for(m) for m in models]
        waits = [w for w in waits if w > 0]
        return min(waits) if waits else None

    # --- account -------------------------------------------------------------------------------

    def block_account(self, failure: Failure, until: float) -> None:
        with self._lock:
            if until > self._blocked_until:
                self._blocked, self._blocked_until = failure, until

    def account_block(self) -> Failure | None:
        with self._lock:
            if self._blocked is not None and self.clock() < self._blocked_until:
                return self._blocked
            self._blocked = None
            return None

    def clear_account_block(self) -> None:
        with self._lock:
            self._blocked, self._blocked_until = None, 0.0

    def set_quota(self, limit: int | None, remaining: int | None) -> None:
        with self._lock:
            self.quota = Quota(limit, remaining, 0, next_utc_midnight(self.clock()))

    def spend(self, requests: int = 1) -> None:
        with self._lock:
            if self.quota.resets_at and self.clock() >= self.quota.resets_at:
                limit = self.quota.limit
                self.quota = Quota(limit, limit, 0, next_utc_midnight(self.clock()))
            self.quota.used_here += requests
            if self.quota.remaining is not None:
                self.quota.remaining = max(0, self.quota.remaining - requests)

    def quota_remaining(self) -> int | None:
        with self._lock:
            if self.quota.resets_at and self.clock() >= self.quota.resets_at:
                return self.quota.limit
            return self.quota.remaining
