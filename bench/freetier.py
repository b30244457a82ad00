"""Section 2: routing policies side by side on one simulated free tier and one seeded workload.

The tier server runs in its own process (its own core); every policy is called through litellm
from this process, request by request at the workload's arrival times, and the tier's log says
how many upstream requests each answer cost. See README.md for the policies' exact set-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from common import BENCH, PYTHON, STATE_DIR, Server, clean_env, percentile
from tier import (
    ANSWER_TEXT,
    COOLDOWN_RATE_LIMIT,
    COOLDOWN_REJECTED,
    COOLDOWN_SLOW,
    FIRST_TOKEN_TIMEOUT,
    IDLE_TIMEOUT,
    WAIT_FOR_MODEL,
    OracleChoice,
    Tier,
    Workload,
    best_known,
    informed,
    make_tier,
    messages_for,
    oracle,
)

from litellm_freerouter.router import HEDGE_QUANTILE

# A request that has not finished after this many simulated seconds counts as failed.
REQUEST_DEADLINE = 180.0


@dataclass
class Params:
    seed: int = 20260501
    requests: int = 160
    mean_gap: float = 2.5  # simulated seconds between arrivals
    time_scale: float = 0.1
    quota: int = 50  # the quota run: OpenRouter's free daily limit without credits
    quota_requests: int = 50
    quota_gap: float = 4.0  # simulated seconds between the quota run's requests
    run_oracle: bool = True


@dataclass
class Outcome:
    ok: bool
    ttft: float | None = None  # simulated seconds from arrival to the first content
    error: str | None = None
    started_content: bool = False


@dataclass
class PolicyResult:
    name: str
    label: str
    outcomes: list[Outcome] = field(default_factory=list)
    upstream: list[int] = field(default_factory=list)  # upstream requests per workload request
    decisions: dict[str, int] = field(default_factory=dict)
    resumed: int = 0
    wall: float = 0.0
    quota_answers: int | None = None
    quota_requests: int | None = None
    quota_upstream: int | None = None

    def summary(self, oracle_ok: list[bool]) -> dict[str, Any]:
        ttfts = [o.ttft for o in self.outcomes if o.ok and o.ttft is not None]
        answers = sum(o.ok for o in self.outcomes)
        requests = sum(self.upstream)
        healthy = [o for o, good in zip(self.outcomes, oracle_ok, strict=True) if good]
        errors = Counter(o.error for o in self.outcomes if not o.ok)
        return {
            "name": self.name,
            "label": self.label,
            "requests": len(self.outcomes),
            "answers": answers,
            "success": answers / len(self.outcomes) if self.outcomes else None,
            "success_when_healthy": (
                sum(o.ok for o in healthy) / len(healthy) if healthy else None
            ),
            "broke_mid_answer": sum(1 for o in self.outcomes if not o.ok and o.started_content),
            "resumed": self.resumed,
            "p50": percentile(ttfts, 50),
            "p95": percentile(ttfts, 95),
            "p99": percentile(ttfts, 99),
            "ttfts": ttfts,
            "upstream": requests,
            "per_answer": requests / answers if answers else None,
            "answers_per_1000": 1000 * answers / requests if requests else None,
            "quota_answers": self.quota_answers,
            "quota_requests": self.quota_requests,
            "quota_upstream": self.quota_upstream,
            "errors": dict(errors.most_common(4)),
            "decisions": self.decisions,
            "wall": self.wall,
        }


Call = Callable[[int], Awaitable[Any]]  # request number -> a litellm stream


async def _consume(stream: Any, started: float, scale: float) -> Outcome:
    text = ""
    first: float | None = None
    try:
        async for chunk in stream:
            choices = getattr(chunk, "choices", None)
            if not choices:
                continue
            piece = getattr(choices[0].delta, "content", None)
            if piece:
                if first is None:
                    first = time.perf_counter()
                text += piece
    except Exception as exc:
        return Outcome(False, None, type(exc).__name__, first is not None)
    if text != ANSWER_TEXT:
        return Outcome(False, None, "incomplete answer", first is not None)
    assert first is not None
    return Outcome(True, (first - started) / scale)


async def _attempt(call: Call, request: int, started: float, scale: float) -> Outcome:
    try:
        stream = await call(request)
    except Exception as exc:
        return Outcome(False, None, type(exc).__name__)
    return await _consume(stream, started, scale)


class Harness:
    def __init__(self, params: Params, tier: Tier, workload: Workload, url: str) -> None:
        self.p = params
        self.tier = tier
        self.workload = workload
        self.url = url
        self.base = url.rsplit("/api/v1", 1)[0]
        self.run_id = 0
        self.closers: list[Any] = []  # anything holding a session on this loop

    async def aclose(self) -> None:
        """Close what holds a session on this loop: none may outlive it."""
        for handler in self.closers:
            await handler.aclose()

    # -- the policies -----------------------------------------------------------------------

    def scaled(self, seconds: float) -> float:
        return seconds * self.p.time_scale

    def _key(self, name: str) -> str:
        self.run_id += 1
        return f"sk-or-bench-{name}-{self.run_id}"

    def freerouter(self, name: str, hedge: float | str, width: int = 3) -> Call:
        import litellm

        key = self._key(name)
        tunables = {
            "race_width": width,
            "hedge_delay": hedge,
            "first_token_timeout": self.scaled(FIRST_TOKEN_TIMEOUT),
            "idle_timeout": self.scaled(IDLE_TIMEOUT),
            "cooldown_rate_limit": self.scaled(COOLDOWN_RATE_LIMIT),
            "cooldown_slow": self.scaled(COOLDOWN_SLOW),
            "cooldown_rejected": self.scaled(COOLDOWN_REJECTED),
            "wait_for_model": self.scaled(WAIT_FOR_MODEL),
            "refresh_interval": 3600.0,
            # The tier does not simulate OpenRouter's account-wide free requests a minute, so
            # pacing to it would only narrow the race here without sparing any refusal.
            "requests_per_minute": 0,
            # Every policy run starts knowing nothing: its own fresh state, never a past run's.
            "state_dir": tempfile.mkdtemp(prefix=f"{name}-", dir=STATE_DIR),
        }

        async def call(request: int) -> Any:
            return await litellm.acompletion(
                model="freerouter/auto",
                messages=messages_for(request),
                stream=True,
                api_base=self.url,
                api_key=key,
                **tunables,
            )

        return call

    def litellm_router(self) -> Call:
        import litellm

        key = self._key("router")
        deployments = [
            {
                "model_name": group,
                "litellm_params": {
                    "model": f"openrouter/{m.id}",
                    "api_base": self.url,
                    "api_key": key,
                },
            }
            for group in ("free", "free-fallback")
            for m in self.tier.models
        ]
        router = litellm.Router(
            model_list=deployments,
            num_retries=3,
            retry_after=0,
            allowed_fails=1,
            cooldown_time=self.scaled(COOLDOWN_RATE_LIMIT),
            timeout=self.scaled(FIRST_TOKEN_TIMEOUT),
            stream_timeout=self.scaled(FIRST_TOKEN_TIMEOUT),
            # The Router does not fall back inside a group once a stream has started (a stall or
            # an error event before the first token): a second group of the same models does.
            fallbacks=[{"free": ["free-fallback"]}],
        )

        async def call(request: int) -> Any:
            return await router.acompletion(
                model="free", messages=messages_for(request), stream=True
            )

        return call

    def direct(self, model_of: Callable[[int], str | None], key: str) -> Call:
        import litellm

        async def call(request: int) -> Any:
            model = model_of(request)
            if model is None:
                raise RuntimeError("no model would have answered")
            return await litellm.acompletion(
                model=f"openrouter/{model}",
                messages=messages_for(request),
                stream=True,
                api_base=self.url,
                api_key=key,
                timeout=self.scaled(FIRST_TOKEN_TIMEOUT),
                num_retries=0,
            )

        return call

    def seed(self) -> Call:
        import litellm
        import seed_policy

        key = self._key("seed")
        self.closers.append(seed_policy.register(self.p.time_scale))

        async def call(request: int) -> Any:
            return await litellm.acompletion(
                model="seedrouter/auto",
                messages=messages_for(request),
                stream=True,
                api_base=self.url,
                api_key=key,
            )

        return call

    # -- running ------------------------------------------------------------------------------

    async def _reset(self, session: aiohttp.ClientSession, quota: int | None) -> None:
        query = f"?quota={quota}" if quota is not None else ""
        async with session.post(f"{self.base}/bench/reset{query}") as response:
            response.raise_for_status()

    async def _log(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"{self.base}/bench/log") as response:
            return dict(await response.json())

    async def run(
        self, call: Call, arrivals: tuple[float, ...], *, retries: int = 0, quota: int | None = None
    ) -> tuple[list[Outcome], dict[str, Any], float]:
        from litellm_freerouter import events

        scale = self.p.time_scale
        resumed = 0

        def count(event: events.Event) -> None:
            nonlocal resumed
            resumed += isinstance(event, events.Resumed)

        unsubscribe = events.subscribe(count)
        try:
            async with aiohttp.ClientSession() as session:
                await self._reset(session, quota)
                t0 = time.perf_counter()

                async def one(request: int, arrival: float) -> Outcome:
                    await asyncio.sleep(max(0.0, t0 + arrival * scale - time.perf_counter()))
                    started = time.perf_counter()

                    async def attempts() -> Outcome:
                        outcome = Outcome(False, error="not tried")
                        for _ in range(retries + 1):
                            outcome = await _attempt(call, request, started, scale)
                            if outcome.ok or outcome.started_content:
                                break
                        return outcome

                    try:
                        return await asyncio.wait_for(attempts(), REQUEST_DEADLINE * scale)
                    except asyncio.TimeoutError:
                        return Outcome(False, None, "deadline")

                outcomes = await asyncio.gather(*(one(i, a) for i, a in enumerate(arrivals)))
                wall = time.perf_counter() - t0
                await asyncio.sleep(0.3)  # let cancelled upstream requests reach the log
                log = await self._log(session)
        finally:
            unsubscribe()
        log["resumed"] = resumed  # freerouter answers carried on after breaking off
        return list(outcomes), log, wall

    @staticmethod
    def _per_request(log: dict[str, Any], count: int) -> tuple[list[int], dict[str, int]]:
        upstream = [0] * count
        decisions: Counter[str] = Counter()
        for entry in log["log"]:
            if 0 <= entry["req"] < count:
                upstream[entry["req"]] += 1
            decisions[entry.get("decision", "other")] += 1
        return upstream, dict(decisions)


# The second session: freerouter hedged with the state an earlier session on the same tier left
# (as a user's state directory keeps it), that session being the same number of requests with
# other draws (request numbers from SECOND_SESSION_OFFSET) on another seed's arrivals.
SECOND_SESSION = ("hedged_warm", "freerouter, hedged, second session (the first one's state)")
SECOND_SESSION_OFFSET = 100_000


POLICIES = (
    ("router", "LiteLLM Router (shuffle, retries, fallbacks, cooldowns)"),
    ("random", "random free model + retries (openrouter/free)"),
    ("seed", "seed: fixed order, batches of 3"),
    ("race", "freerouter, race 3 at once (hedge_delay=0)"),
    ("hedged", "freerouter, hedged (hedge_delay=auto)"),
)


def _policy_call(h: Harness, name: str) -> tuple[Call, int]:
    """A fresh instance of policy ``name``, and its harness-level retries."""
    if name == "router":
        return h.litellm_router(), 0
    if name == "random":
        return h.direct(lambda _request: "openrouter/free", h._key("random")), 3
    if name == "seed":
        return h.seed(), 0
    if name == "race":
        return h.freerouter("race", 0.0), 0
    if name == "hedged":
        return h.freerouter("hedged", "auto"), 0
    if name.startswith("race") and name[4:].isdigit():  # racing wider: race6, race12, ...
        return h.freerouter(name, 0.0, width=int(name[4:])), 0
    raise ValueError(name)


def _scale_freerouter_constants(scale: float) -> Callable[[], None]:
    """Shrink freerouter's fixed times by the tier's time scale; returns the undo.

    health.py assumes 3 s for a never-measured model, charges 2 s per failure in ranking and
    counts a model's per-minute limit over 60 s, and router.py never hedges sooner than 50 ms:
    on a tier running 20x faster those would count as 60 s, 40 s, 20 minutes and 1 s.
    """
    from litellm_freerouter import health, router

    old = health.DEFAULT_TTFT, health.FAILURE_COST, health.RPM_WINDOW, router.HEDGE_FLOOR
    health.DEFAULT_TTFT = old[0] * scale
    health.FAILURE_COST = old[1] * scale
    health.RPM_WINDOW = old[2] * scale
    router.HEDGE_FLOOR = old[3] * scale

    def undo() -> None:
        health.DEFAULT_TTFT, health.FAILURE_COST, health.RPM_WINDOW, router.HEDGE_FLOOR = old

    return undo


@contextlib.contextmanager
def _tier_served(params: Params, tier: Tier) -> Iterator[str]:
    """The tier server for ``tier`` (its URL), with freerouter's constants scaled to its time."""
    tier_file = Path(tempfile.mkstemp(prefix="bench-tier-", suffix=".json")[1])
    tier_file.write_text(json.dumps(tier.to_json()))
    server = Server(
        [
            PYTHON,
            str(BENCH / "tier_server.py"),
            "--tier",
            str(tier_file),
            "--time-scale",
            str(params.time_scale),
        ],
        env=clean_env({"FREEROUTER_DISABLE_AUTOLOAD": "1"}),
    )
    undo = _scale_freerouter_constants(params.time_scale)
    try:
        with warnings.catch_warnings():
            # litellm's Router leaves a cooldown callback coroutine un-awaited; not ours.
            warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
            yield server.url
    finally:
        undo()
        server.stop()
        tier_file.unlink(missing_ok=True)


def _drawn(params: Params) -> tuple[Tier, Workload, list[OracleChoice]]:
    """The tier and workload of ``params.seed``, and the oracle's choice for each request."""
    tier = make_tier(params.seed, params.requests * params.mean_gap)
    workload = Workload.poisson(params.seed, params.requests, params.mean_gap)
    return tier, workload, oracle(tier, workload)


def run(params: Params, progress: Callable[[str], None] = print) -> dict[str, Any]:
    import litellm_freerouter  # noqa: F401  (registers freerouter/auto)

    tier, workload, oracle_choices = _drawn(params)
    with _tier_served(params, tier) as url:
        return asyncio.run(_run_all(params, tier, workload, oracle_choices, url, progress))


def across_seeds(
    params: Params, seeds: list[int], progress: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """The two freerouter policies again on other seeds (other tiers, other workloads), each
    from empty state, and every policy on a 50-a-day account there: how much of one run's
    figures is that tier's luck."""
    import litellm_freerouter  # noqa: F401  (registers freerouter/auto)

    rows = []
    for seed in seeds:
        p = dataclasses.replace(params, seed=seed)
        tier, workload, oracle_choices = _drawn(p)
        with _tier_served(p, tier) as url:
            row = asyncio.run(_run_freerouter(p, tier, workload, oracle_choices, url))
        rows.append(row)
        progress(
            f"  seed {seed}: oracle p95 {row['oracle_p95']:.2f}s; race p95 "
            f"{row['race']['p95'] or 0:.2f}s at {row['race']['per_answer'] or 0:.2f} req/answer;"
            f" hedged p95 {row['hedged']['p95'] or 0:.2f}s at "
            f"{row['hedged']['per_answer'] or 0:.2f} req/answer (second session "
            f"{row['hedged_warm']['per_answer'] or 0:.2f}); 50-a-day answers "
            + ", ".join(f"{name} {n}" for name, n in row["quota_answers"].items())
        )
    return rows


def wider_races(
    params: Params, widths: list[int], progress: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """freerouter racing more models at once on this run's tier, each from empty state: what a
    wider race buys in p95 and what it costs in requests (widths past the tier's size race
    every model)."""
    import litellm_freerouter  # noqa: F401  (registers freerouter/auto)

    tier, workload, oracle_choices = _drawn(params)
    oracle_ok = [c.model is not None for c in oracle_choices]

    async def measure(url: str) -> list[dict[str, Any]]:
        h = Harness(params, tier, workload, url)
        rows = []
        for width in widths:
            result = await _measure(h, f"race{width}", f"race {width} at once", workload.arrivals)
            s = result.summary(oracle_ok)
            rows.append(
                {"width": min(width, len(tier.models)), "requested_width": width}
                | {k: s[k] for k in ("success_when_healthy", "p50", "p95", "p99", "per_answer")}
                | {"decisions": s["decisions"], "errors": s["errors"]}
            )
            progress(
                f"  race {width}: success {s['success_when_healthy']:.1%}  p50 "
                f"{s['p50'] or 0:.2f}s  p95 {s['p95'] or 0:.2f}s  req/answer "
                f"{s['per_answer'] or 0:.2f}  ({result.wall:.0f} s)"
            )
        await h.aclose()
        return rows

    with _tier_served(params, tier) as url:
        return asyncio.run(measure(url))


async def _measure(h: Harness, name: str, label: str, arrivals: tuple[float, ...]) -> PolicyResult:
    """Policy ``name``, afresh, on these arrivals: its outcomes and what they cost upstream."""
    call, retries = _policy_call(h, name)
    return await _measured(h, name, label, call, retries, arrivals)


async def _measured(
    h: Harness, name: str, label: str, call: Call, retries: int, arrivals: tuple[float, ...]
) -> PolicyResult:
    """``call`` on these arrivals: its outcomes and what they cost upstream."""
    outcomes, log, wall = await h.run(call, arrivals, retries=retries)
    result = PolicyResult(name, label, outcomes, wall=wall, resumed=log["resumed"])
    result.upstream, result.decisions = h._per_request(log, len(outcomes))
    return result


async def _measure_second_session(h: Harness, workload: Workload) -> PolicyResult:
    """freerouter hedged, measured on ``workload`` after a first session of as many requests
    on the same tier, with the state that session left."""
    name, label = SECOND_SESSION
    call, retries = _policy_call(h, "hedged")
    first = Workload.poisson(h.p.seed + 1, len(workload.arrivals), h.p.mean_gap)
    await h.run(lambda request: call(request + SECOND_SESSION_OFFSET), first.arrivals)
    return await _measured(h, name, label, call, retries, workload.arrivals)


async def _quota_day(h: Harness, name: str, params: Params) -> tuple[int, int, int]:
    """Policy ``name``, afresh, on an account with a small daily quota (``params.quota``):
    its answers, the requests it was asked, and the upstream requests it spent."""
    arrivals = tuple(
        i * params.quota_gap for i in range(min(params.quota_requests, params.requests))
    )
    call, retries = _policy_call(h, name)
    outcomes, log, _ = await h.run(call, arrivals, retries=retries, quota=params.quota)
    return sum(o.ok for o in outcomes), len(outcomes), int(log["quota_used"])


async def _run_freerouter(
    params: Params, tier: Tier, workload: Workload, oracle_choices: list[OracleChoice], url: str
) -> dict[str, Any]:
    h = Harness(params, tier, workload, url)
    oracle_ok = [c.model is not None for c in oracle_choices]
    row: dict[str, Any] = {"seed": params.seed}
    keep = ("success_when_healthy", "p50", "p95", "per_answer")
    for name in ("race", "hedged"):
        summary = (await _measure(h, name, name, workload.arrivals)).summary(oracle_ok)
        row[name] = {k: summary[k] for k in keep}
    summary = (await _measure_second_session(h, workload)).summary(oracle_ok)
    row[SECOND_SESSION[0]] = {k: summary[k] for k in keep}
    # Every policy, afresh, on a 50-a-day account: how many answers the day's quota buys.
    row["quota_answers"] = {name: (await _quota_day(h, name, params))[0] for name, _ in POLICIES}
    await h.aclose()
    row["oracle_p95"] = percentile([c.ttft for c in oracle_choices if c.ttft is not None], 95)
    for line in _informed_lines(tier, workload):
        row[line["name"]] = {"p95": line["p95"], "per_answer": line["per_answer"]}
    return row


def _informed_lines(tier: Tier, workload: Workload) -> list[dict[str, Any]]:
    """The perfect-knowledge race of 3 and hedged line, computed from the draws."""
    lines = []
    for name, label, hedge in (
        ("informed_race", "perfect knowledge, race of 3 (computed, no client)", None),
        (
            "informed_hedged",
            f"perfect knowledge, hedged at p{HEDGE_QUANTILE * 100:.0f} (computed, no client)",
            HEDGE_QUANTILE,
        ),
    ):
        rows = informed(tier, workload, width=3, hedge_quantile=hedge)
        ttfts = [r.ttft for r in rows if r.ttft is not None]
        upstream = sum(r.requests for r in rows)
        lines.append(
            {
                "name": name,
                "label": label,
                "requests": len(rows),
                "answers": len(ttfts),
                "success": len(ttfts) / len(rows),
                "p50": percentile(ttfts, 50),
                "p95": percentile(ttfts, 95),
                "p99": percentile(ttfts, 99),
                "ttfts": ttfts,
                "upstream": upstream,
                "per_answer": upstream / len(ttfts) if ttfts else None,
                "answers_per_1000": 1000 * len(ttfts) / upstream if upstream else None,
            }
        )
    return lines


async def _run_all(
    params: Params,
    tier: Tier,
    workload: Workload,
    oracle_choices: list[OracleChoice],
    url: str,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    h = Harness(params, tier, workload, url)
    oracle_ok = [c.model is not None for c in oracle_choices]
    results: list[PolicyResult] = []

    for name, label in POLICIES:
        result = await _measure(h, name, label, workload.arrivals)
        # The same policy, afresh, on an account with OpenRouter's 50-a-day free quota.
        result.quota_answers, result.quota_requests, result.quota_upstream = await _quota_day(
            h, name, params
        )
        results.append(result)
        s = result.summary(oracle_ok)
        progress(
            f"  {name:7s} success {s['success']:.1%}  p50 {s['p50'] or 0:.2f}s  "
            f"p95 {s['p95'] or 0:.2f}s  req/answer {s['per_answer'] or 0:.2f}  "
            f"quota-day answers {result.quota_answers}/{result.quota_requests}  "
            f"({result.wall:.0f} s)"
        )

    second = await _measure_second_session(h, workload)
    results.append(second)
    s = second.summary(oracle_ok)
    progress(
        f"  hedged, second session  success {s['success']:.1%}  p50 {s['p50'] or 0:.2f}s  "
        f"p95 {s['p95'] or 0:.2f}s  req/answer {s['per_answer'] or 0:.2f}  ({second.wall:.0f} s)"
    )

    summaries = [r.summary(oracle_ok) for r in results]
    computed = [c.ttft for c in oracle_choices if c.ttft is not None]
    oracle_summary: dict[str, Any] = {
        "name": "oracle",
        "label": "oracle: fastest healthy model per request (computed, no client)",
        "requests": len(oracle_choices),
        "answers": len(computed),
        "success": len(computed) / len(oracle_choices),
        "success_when_healthy": 1.0,
        "p50": percentile(computed, 50),
        "p95": percentile(computed, 95),
        "p99": percentile(computed, 99),
        "ttfts": computed,
        "upstream": len(computed),
        "per_answer": 1.0,
        "answers_per_1000": 1000.0,
        "quota_answers": None,
    }
    known = [c.ttft for c in best_known(tier, workload) if c.ttft is not None]
    known_summary: dict[str, Any] = {
        "name": "best_known",
        "label": "best-known healthy model per request (computed, no client)",
        "requests": len(oracle_choices),
        "answers": len(known),
        "success": len(known) / len(oracle_choices),
        "p50": percentile(known, 50),
        "p95": percentile(known, 95),
        "p99": percentile(known, 99),
        "ttfts": known,
        "per_answer": 1.0,
    }
    informed_summaries = _informed_lines(tier, workload)
    extra = []
    if params.run_oracle:
        models = {c.request: c.model for c in oracle_choices}
        call = h.direct(lambda request: models.get(request), h._key("oracle"))
        outcomes, log, wall = await h.run(call, workload.arrivals)
        result = PolicyResult(
            "oracle_run", "oracle's picks, called directly through litellm", outcomes, wall=wall
        )
        result.upstream, result.decisions = h._per_request(log, len(outcomes))
        s = result.summary(oracle_ok)
        progress(
            f"  oracle (run)  success {s['success']:.1%}  p50 {s['p50'] or 0:.2f}s  "
            f"p95 {s['p95'] or 0:.2f}s"
        )
        extra.append(s)
    await h.aclose()
    return {
        "params": params.__dict__,
        "tier": tier.to_json(),
        "healthy_requests": sum(oracle_ok),
        "policies": summaries,
        "oracle": oracle_summary,
        "best_known": known_summary,
        "informed": informed_summaries,
        "oracle_run": extra[0] if extra else None,
    }
