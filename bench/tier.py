"""The simulated free tier: its models, their seeded per-request behaviour, workload, oracle.

Everything here is a pure function of the seed, so that the tier server (which plays the
behaviour) and the harness (which computes the oracle) agree on every draw, and every policy
meets exactly the same models, request by request.

Times are *simulated* seconds; the server multiplies them by ``time_scale``.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

N_MODELS = 36
ANSWER_CHUNKS = 24
# OpenRouter's real free-tier numbers (REFERENCE.md), before scaling.
FIRST_TOKEN_TIMEOUT = 30.0
IDLE_TIMEOUT = 30.0
COOLDOWN_RATE_LIMIT = 90.0
COOLDOWN_SLOW = 15.0
COOLDOWN_REJECTED = 90.0
WAIT_FOR_MODEL = 30.0
RATE_WINDOW = 60.0  # a per-model limit counts requests in the last minute

REQUEST_TAG = re.compile(rb"\[bench req (\d+)\]")

_AUTHORS = (
    "meta-llama",
    "mistralai",
    "google",
    "qwen",
    "deepseek",
    "nvidia",
    "moonshotai",
    "microsoft",
    "tngtech",
    "z-ai",
    "openai",
    "arcee-ai",
)
_CONTEXTS = (8192, 16384, 32768, 65536, 131072, 163840, 262144)

_ANSWER_PROSE = (
    "Racing several free models trades a little extra upstream load for a first token that "
    "arrives about as soon as the quickest healthy model can manage, while a single model "
    "leaves you waiting on its slowest day."
)
ANSWER = tuple(f" {word}" for word in _ANSWER_PROSE.split(" "))[:ANSWER_CHUNKS]
ANSWER_TEXT = "".join(ANSWER)


def _stable_seed(*parts: Any) -> int:
    raw = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big")


@dataclass
class TierModel:
    id: str
    context_length: int
    ttft_median: float  # simulated seconds
    ttft_sigma: float  # of the lognormal
    error_rate: float  # 429 / 5xx / 408, before any first token
    stall_before: float  # connection opens, keep-alives, then nothing
    stall_after: float  # the answer starts, then goes silent
    rpm: int  # this model's own requests-per-minute limit upstream
    outages: list[tuple[float, float]] = field(default_factory=list)  # 503 throughout
    chunk_delay: float = 0.03
    published_p50: float = 1.0  # what /endpoints reports as latency_last_30m p50 (simulated s)

    def down_at(self, t: float) -> bool:
        return any(start <= t < end for start, end in self.outages)


@dataclass(frozen=True)
class Draw:
    """What one upstream attempt at one request does (before rate limits and outages)."""

    kind: str  # "ok", "error", "stall_before"
    ttft: float  # first-token delay, simulated seconds (drawn for every kind)
    status: int = 200
    error_delay: float = 0.0
    error_in_stream: bool = False
    stall_after: int | None = None  # chunks sent before going silent

    @property
    def answers(self) -> bool:
        return self.kind == "ok" and self.stall_after is None


@dataclass
class Tier:
    seed: int
    models: list[TierModel]
    duration: float  # simulated seconds the workload spans

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "duration": self.duration,
            "models": [asdict(m) for m in self.models],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Tier:
        models = []
        for m in raw["models"]:
            values = dict(m)
            values["outages"] = [tuple(w) for w in values.get("outages", [])]
            models.append(TierModel(**values))
        return cls(raw["seed"], models, raw["duration"])

    def model(self, model_id: str) -> TierModel | None:
        for m in self.models:
            if m.id == model_id:
                return m
        return None

    def draw(self, model: TierModel, request: int, attempt: int) -> Draw:
        """The seeded behaviour of ``attempt`` (0, 1, ...) of ``model`` at ``request``."""
        rng = random.Random(_stable_seed(self.seed, model.id, request, attempt))
        ttft = model.ttft_median * math.exp(model.ttft_sigma * rng.gauss(0.0, 1.0))
        if rng.random() < 0.05:  # the heavy tail: a bad minute at the provider
            ttft *= rng.paretovariate(1.3)
        ttft = min(ttft, 300.0)
        u = rng.random()
        if u < model.error_rate:
            status = rng.choices((429, 502, 503, 500, 408), (0.5, 0.2, 0.15, 0.1, 0.05))[0]
            delay = 0.6 * math.exp(0.7 * rng.gauss(0.0, 1.0))
            return Draw("error", ttft, status, min(delay, 20.0), rng.random() < 0.3)
        if u < model.error_rate + model.stall_before:
            return Draw("stall_before", ttft)
        stall_after = None
        if rng.random() < model.stall_after:
            stall_after = rng.randint(1, ANSWER_CHUNKS - 1)
        return Draw("ok", ttft, stall_after=stall_after)

    def random_model(self, request: int, attempt: int) -> TierModel:
        """What ``openrouter/free`` picks for this attempt: any free model, uniformly."""
        rng = random.Random(_stable_seed(self.seed, "openrouter/free", request, attempt))
        return self.models[rng.randrange(len(self.models))]


def make_tier(seed: int, duration: float) -> Tier:
    """36 free models: heavy-tailed speeds, a few flaky ones, tight per-model limits, outages."""
    rng = random.Random(_stable_seed(seed, "tier"))
    models = []
    used: set[str] = set()
    for i in range(N_MODELS):
        author = _AUTHORS[i % len(_AUTHORS)]
        size = rng.choice((3, 7, 8, 12, 14, 24, 27, 32, 70, 72, 235, 405))
        name = f"{author}/sim-{size}b-{i:02d}:free"
        used.add(name)
        # Speeds across models: lognormal around 2 s, from well under a second to ~10 s.
        median = min(12.0, max(0.35, 2.0 * math.exp(0.75 * rng.gauss(0.0, 1.0))))
        sigma = rng.uniform(0.35, 0.9)
        flaky = rng.random() < 0.2
        error_rate = rng.uniform(0.25, 0.45) if flaky else rng.uniform(0.02, 0.1)
        stall_before = rng.uniform(0.03, 0.1) if rng.random() < 0.25 else rng.uniform(0.0, 0.02)
        stall_after = rng.uniform(0.0, 0.01)
        rpm = rng.choice((4, 6, 8, 8, 10, 12, 16, 20))
        outages = []
        if rng.random() < 0.2:
            length = rng.uniform(0.1, 0.3) * duration
            start = rng.uniform(0.0, duration - length)
            outages.append((round(start, 3), round(start + length, 3)))
        published = median * math.exp(0.3 * rng.gauss(0.0, 1.0))  # a noisy 30-minute average
        models.append(
            TierModel(
                id=name,
                context_length=rng.choice(_CONTEXTS),
                ttft_median=round(median, 4),
                ttft_sigma=round(sigma, 4),
                error_rate=round(error_rate, 4),
                stall_before=round(stall_before, 4),
                stall_after=round(stall_after, 4),
                rpm=rpm,
                outages=outages,
                chunk_delay=round(rng.uniform(0.01, 0.05), 4),
                published_p50=round(published, 4),
            )
        )
    return Tier(seed, models, duration)


@dataclass(frozen=True)
class Workload:
    """The same request arrival sequence for every policy (simulated seconds from the start)."""

    arrivals: tuple[float, ...]

    @classmethod
    def poisson(cls, seed: int, count: int, mean_gap: float) -> Workload:
        rng = random.Random(_stable_seed(seed, "arrivals"))
        t, out = 0.0, []
        for _ in range(count):
            out.append(round(t, 4))
            t += rng.expovariate(1.0 / mean_gap)
        return cls(tuple(out))


def messages_for(request: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": f"[bench req {request}] Why race several free models?"},
    ]


@dataclass(frozen=True)
class OracleChoice:
    request: int
    model: str | None  # None: no model would have answered
    ttft: float | None


def oracle(tier: Tier, workload: Workload) -> list[OracleChoice]:
    """Per request, the fastest model that would have answered: first attempt succeeds, the
    answer completes, no outage, and its per-model limit not yet used up by the oracle itself
    (which sends exactly one request per answer)."""
    return _one_per_answer(tier, workload, lambda model, draw: draw.ttft)


def best_known(tier: Tier, workload: Workload) -> list[OracleChoice]:
    """Per request, the model with the lowest *median* first-token time among those that would
    have answered: perfect knowledge of health, none of this request's luck. One request per
    answer, limited like :func:`oracle`."""
    return _one_per_answer(tier, workload, lambda model, draw: model.ttft_median)


def _one_per_answer(
    tier: Tier, workload: Workload, key: Callable[[TierModel, Draw], float]
) -> list[OracleChoice]:
    """Per request, among the models that would have answered (first attempt succeeds and
    completes, no outage, per-model limit not used up by these picks' own one request per
    answer), the one with the lowest ``key``; its first-token time is this request's."""
    windows: dict[str, deque[float]] = {m.id: deque() for m in tier.models}
    out = []
    for request, arrival in enumerate(workload.arrivals):
        best: tuple[float, float, TierModel] | None = None
        for model in tier.models:
            if model.down_at(arrival):
                continue
            window = windows[model.id]
            while window and window[0] <= arrival - RATE_WINDOW:
                window.popleft()
            if len(window) >= model.rpm:
                continue
            draw = tier.draw(model, request, 0)
            if draw.answers and (best is None or key(model, draw) < best[0]):
                best = (key(model, draw), draw.ttft, model)
        if best is None:
            out.append(OracleChoice(request, None, None))
            continue
        windows[best[2].id].append(arrival)
        out.append(OracleChoice(request, best[2].id, best[1]))
    return out


@dataclass(frozen=True)
class InformedResult:
    request: int
    ttft: float | None  # None: no model answered
    requests: int  # upstream requests started before the first token


def informed(
    tier: Tier, workload: Workload, *, width: int, hedge_quantile: float | None = None
) -> list[InformedResult]:
    """The best a router can do *without* seeing the request's draws: it knows every model's
    true median and spread, error and stall rates, per-minute limit and outages, and races the
    ``width`` models of best expected time (failures count as in freerouter's score) that are up
    and under their limit, replacing each failure at once; with ``hedge_quantile`` it starts
    one model and adds the next each time the last one started passes that quantile of its own
    first-token distribution. The behaviour of each attempt is the same seeded draw the tier
    server plays, so this line meets exactly what the policies met."""
    z = NormalDist().inv_cdf(hedge_quantile) if hedge_quantile is not None else None
    sent: dict[str, list[float]] = {m.id: [] for m in tier.models}

    def score(m: TierModel) -> float:
        good = max(0.05, 1.0 - m.error_rate - m.stall_before)
        return (m.ttft_median + 2.0 * (1.0 - good)) / good

    ranked = sorted(tier.models, key=score)
    out = []
    for request, arrival in enumerate(workload.arrivals):
        race = _InformedRace(tier, request, [m for m in ranked if not m.down_at(arrival)], sent, z)
        out.append(InformedResult(request, race.run(arrival, width), race.started))
    return out


class _InformedRace:
    """One request of :func:`informed`: an event loop over the attempts' drawn outcomes."""

    def __init__(
        self,
        tier: Tier,
        request: int,
        queue: list[TierModel],
        sent: dict[str, list[float]],
        z: float | None,
    ) -> None:
        self.tier, self.request, self.queue, self.sent, self.z = tier, request, queue, sent, z
        self.events: list[tuple[float, bool]] = []  # (time, True: a first token / False: failed)
        self.attempts: dict[str, int] = {}
        self.running = self.started = 0
        self.next_hedge = math.inf

    def start(self, at: float) -> None:
        while self.queue:
            model = self.queue.pop(0)
            window = [t for t in self.sent[model.id] if at - RATE_WINDOW < t <= at]
            if len(window) >= model.rpm:
                continue  # it knows the limit: not sent
            self.sent[model.id].append(at)
            attempt = self.attempts.get(model.id, 0)
            self.attempts[model.id] = attempt + 1
            draw = self.tier.draw(model, self.request, attempt)
            self.running += 1
            self.started += 1
            if draw.kind == "error":
                self.events.append((at + draw.error_delay, False))
            elif draw.kind == "stall_before":
                self.events.append((at + FIRST_TOKEN_TIMEOUT, False))
            else:
                self.events.append((at + draw.ttft, True))
            if self.z is not None:
                self.next_hedge = at + model.ttft_median * math.exp(self.z * model.ttft_sigma)
            return

    def run(self, arrival: float, width: int) -> float | None:
        for _ in range(1 if self.z is not None else width):
            self.start(arrival)
        while self.events:
            self.events.sort()
            at, token = self.events[0]
            if self.next_hedge < at and self.running < width and self.queue:
                self.start(self.next_hedge)
                continue
            self.events.pop(0)
            if token:
                return at - arrival
            self.running -= 1
            self.start(at)
        return None
