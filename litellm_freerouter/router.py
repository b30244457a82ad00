"""One request from start to finish: pick the candidates, race them, stream the winner.

A :class:`Router` exists per (endpoint, key): it owns the catalogue and the health record, and
turns each failure into the right consequence (cool the model, skip it for this request, or stop
the request for the whole account).  Requests may run on any thread's loop at once; what
outlives a request (the catalogue's fetch and refresh, the background reads) runs on the
router's ``home`` loop, the engine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from . import engine, events
from .catalog import Catalog, FreeModel, parse_models, seed_order
from .config import APP_TITLE, APP_URL, Settings
from .errors import (
    AllModelsFailed,
    CatalogUnavailable,
    Failure,
    FreeRouterError,
    NoModelAvailable,
    RequestRejected,
    UpstreamError,
    account_message,
    decode_error_body,
    error_message,
)
from .health import RPM_WINDOW, Health
from .race import AccountStop, AllFailed, Contender, encode_body, race, read_error_body
from .requirements import capable, requirements_of
from .sse import Delta

log = logging.getLogger("litellm_freerouter")
T = TypeVar("T")

_request_ids = itertools.count(1)
STICKY_SLACK = 1.5  # a conversation keeps its last winner while it is within 1.5x of the best
STICKY_MAX = 256
# A request identical to one that failed on every model it tried, within this many seconds of
# that failure, goes on from it: what it sent counts against the same FREEROUTER_MAX_ATTEMPTS
# and the models that failed it are not asked again. A caller's fallback or retry (aider asks
# its main model for the commit message its weak model could not write) then cannot spend the
# cap a second time on the same prompt; a person retrying a minute later starts afresh.
REPEAT_WINDOW = 60.0
REPEAT_MAX = 64
# A hedge waits until the first choice is later than this share of its measured first tokens,
# and never less than HEDGE_FLOOR seconds: the 95th percentile, as "The Tail at Scale" advises
# (failures aside, hedges then cost about 5% more requests). Before three measurements the same
# quantile is taken from a typical free model's spread around its expected time (lognormal,
# sigma 0.6: 2.7x).
HEDGE_QUANTILE = 0.95
HEDGE_UNMEASURED = 2.7
HEDGE_FLOOR = 0.05
# With this many free requests or fewer left today (a whole day of an account without
# credits), a lost hedge costs 2% of the day or more: a hedge then waits for the first choice's
# 99th percentile (before three measurements, sigma 0.6 at z = 2.33: 4.0x its expected time).
SCARCE_QUOTA = 50
# The first race of a router waits this long at most for the key's first quota read (started
# with the model list's fetch): a race sized blind could spend more than a low quota has left.
QUOTA_FIRST_WAIT = 1.5
HEDGE_QUANTILE_SCARCE = 0.99
HEDGE_UNMEASURED_SCARCE = 4.0


@dataclass(slots=True)
class Answer:
    """A whole non-streamed answer, assembled from the winner's deltas."""

    model: str
    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: dict[str, int] | None = None


def conversation_key(messages: Sequence[Any]) -> str | None:
    """Identify a conversation by its opening (system and first user message)."""
    opening = [
        m.get("content")
        for m in messages[:3]
        if isinstance(m, Mapping) and m.get("role") in ("system", "user")
    ][:2]
    if not opening:
        return None
    try:
        raw = json.dumps(opening, default=str, sort_keys=True)
    except TypeError:  # keys of mixed types cannot be sorted: the opening as given
        raw = json.dumps(opening, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def request_key(body: Mapping[str, Any]) -> str:
    """Identify a request by everything it asks (messages and parameters): the body as it is
    sent upstream (checked encodable before anything is sent)."""
    return hashlib.sha256(encode_body(body)).hexdigest()


def cooldown_for(failure: Failure, settings: Settings) -> float | None:
    """How long a model-wide failure keeps the model out; None: it stays in."""
    if failure.scope != "model":
        return None
    base = {
        "rate_limited": settings.cooldown_rate_limit,
        "server": settings.cooldown_rate_limit,
        "network": settings.cooldown_rate_limit,
        "rejected": settings.cooldown_rejected,
        "gone": max(settings.cooldown_rejected, settings.refresh_interval),
        "slow": settings.cooldown_slow,
        "empty": settings.cooldown_slow,
        "stalled": settings.cooldown_slow,
    }.get(failure.kind, settings.cooldown_rate_limit)
    return max(base, failure.retry_after or 0.0)


def upstream_headers(api_key: str, extra: Iterable[tuple[str, str]] = ()) -> dict[str, str]:
    """The headers of a chat request: freerouter's attribution, under the caller's own headers
    (a title the caller sets stands for both of OpenRouter's names for it), then the framing
    and key, which only freerouter sets."""
    extra = list(extra)
    titles = [value for name, value in extra if name.lower() in _TITLES]
    headers = {
        "HTTP-Referer": APP_URL,
        "X-OpenRouter-Title": titles[-1] if titles else APP_TITLE,
        "X-Title": titles[-1] if titles else APP_TITLE,
    }
    for name, value in extra:
        for known in [k for k in headers if k.lower() == name.lower()]:
            del headers[known]
        headers[name] = value
    headers.update(
        {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
    )
    return headers


_TITLES = frozenset({"x-title", "x-openrouter-title"})


class Router:
    def __init__(
        self,
        api_base: str,
        *,
        session: Callable[[], aiohttp.ClientSession],
        refresh_interval: float,
        health: Health | None = None,
        rng: random.Random | None = None,
        home: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self._session = session
        self._home = home
        self.health = health or Health()
        self.catalog = Catalog(
            self._fetch_models, refresh_interval=refresh_interval, on_update=self._on_catalog
        )
        self._rng = rng or random.Random()
        self._sticky: OrderedDict[str, str] = OrderedDict()
        self._sticky_lock = threading.Lock()
        # Requests that failed on every model they tried, by request_key, oldest first.
        self._failed: OrderedDict[str, _Spent] = OrderedDict()
        self._failed_lock = threading.Lock()
        self._narrowed_notice = False
        self._scarce_notice = False
        self._paced_notice = False
        self._quota_task: asyncio.Task[Any] | None = None
        self._quota_read_at = 0.0  # time.monotonic() of the last /key read
        self._quota_awaited = False  # a race has waited for the first /key read (or given up)
        self._endpoints_task: asyncio.Task[None] | None = None
        self.api_key: str | None = None  # the key of the latest request, for /endpoints
        # A list preloaded from the state store that this key has no latency figures for:
        # they are read on first use, as after a fetch (see preload_catalog).
        self._endpoints_due = False

    # --- upstream reads ------------------------------------------------------------------------

    async def _fetch_models(self) -> list[FreeModel]:
        url = f"{self.api_base}/models"
        timeout = aiohttp.ClientTimeout(total=30)
        try:
            async with self._session().get(url, timeout=timeout) as response:
                if response.status != 200:
                    said = error_message(decode_error_body(await read_error_body(response)))
                    said = said.splitlines()[0].strip()[:200] if said else ""
                    raise CatalogUnavailable(
                        f"GET {url} answered {response.status}{f' ({said})' if said else ''}"
                    )
                payload = await response.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise CatalogUnavailable(f"cannot reach {url}: {exc}") from None
        except asyncio.TimeoutError:
            raise CatalogUnavailable(f"GET {url} sent nothing for {timeout.total:g} s") from None
        return seed_order(parse_models(payload))

    async def _get_data(self, path: str, api_key: str | None) -> Mapping[str, Any] | None:
        """The ``data`` object of a GET that answered 200; None for any failure (these reads
        only add information, so they never fail a request)."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            async with self._session().get(
                f"{self.api_base}{path}", headers=headers, timeout=aiohttp.ClientTimeout(total=15)
            ) as response:
                if response.status != 200:
                    return None
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None
        data = payload.get("data") if isinstance(payload, Mapping) else None
        return data if isinstance(data, Mapping) else None

    async def read_quota(
        self, api_key: str, asked_at: float | None = None
    ) -> dict[str, Any] | None:
        """The key's limits from /key (``None`` where the endpoint says nothing useful).
        ``asked_at``: when the read was decided on (default: now); requests sent since are
        taken off the count it gives."""
        asked_at = self.health.clock() if asked_at is None else asked_at
        data = await self._get_data("/key", api_key)
        if data is None:
            return None
        daily = data.get("free_model_daily_requests")
        if isinstance(daily, Mapping):
            limit, remaining = daily.get("limit"), daily.get("remaining")
            if isinstance(limit, int) and isinstance(remaining, int):
                self.health.set_quota(limit, remaining, asked_at)
                log.info(
                    "free daily quota: %d of %d requests left",
                    self.health.quota_remaining() or 0,
                    limit,
                )
        return dict(data)

    # --- the home loop ------------------------------------------------------------------------

    def _away(self) -> asyncio.AbstractEventLoop | None:
        """The home loop, when this runs on another loop."""
        home = self._home
        return home if home is not None and asyncio.get_running_loop() is not home else None

    async def _at_home(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` on the home loop, where tasks that outlive a request belong."""
        home = self._away()
        if home is not None:
            return await engine.call_on(home, make)
        return await make()

    def _soon_at_home(self, action: Callable[[], None]) -> None:
        home = self._away()
        if home is not None:
            home.call_soon_threadsafe(action)
        else:
            action()

    def preload_catalog(self, models: Sequence[FreeModel], fetched_at: float) -> None:
        """Start from a list another process saved (the list is kept per endpoint, what is
        learnt per key): a key that has no per-endpoint latency for it reads it on first use
        instead of ranking blind until the list is next fetched."""
        self.catalog.preload(models, fetched_at)
        self._endpoints_due = not any(
            self.health.stats(m.id).prior_ttft is not None for m in models
        )

    async def models(self) -> tuple[FreeModel, ...]:
        """The catalogue's list; fetched (and its refresh started) on the home loop."""
        if self.catalog.needs_loop:
            models = await self._at_home(self.catalog.get)
        else:
            models = await self.catalog.get()
        if self._endpoints_due:
            self._endpoints_due = False
            self._soon_at_home(lambda: self._start_learning(models))
        return models

    def _quota_due(self) -> bool:
        """/key is read at the first request, then again every refresh interval (other
        clients of the account spend from the same count)."""
        task = self._quota_task
        if task is None:
            return True
        return (
            task.done() and time.monotonic() - self._quota_read_at >= self.catalog.refresh_interval
        )

    def _watch_quota(self, api_key: str) -> None:
        # Before the race this read accompanies: its requests are taken off what /key says.
        asked_at = self.health.clock()

        def start() -> None:
            if self._quota_due():
                self._quota_read_at = time.monotonic()
                self._quota_task = asyncio.get_running_loop().create_task(
                    self.read_quota(api_key, asked_at), name="freerouter-quota"
                )

        if self._quota_due():
            self._soon_at_home(start)

    async def _await_first_quota(self, width: int) -> bool:
        """Before the first race, while the quota is unknown: wait for the /key read already
        started, at most ``QUOTA_FIRST_WAIT`` seconds, so the race is sized by what is left (a
        slow or failing read only delays this one race, once). Later races never wait, nor
        does one that can have a single model in flight (``width``: at most), which nothing
        the quota says would narrow. True: it waited."""
        if self._quota_awaited or width <= 1 or self.health.quota_remaining() is not None:
            return False

        async def wait() -> bool:
            task = self._quota_task
            if task is None or task.done():
                return False
            await asyncio.wait({task}, timeout=QUOTA_FIRST_WAIT)  # never cancels the read
            return True

        waited = await self._at_home(wait)
        self._quota_awaited = True
        return waited

    def _on_catalog(self, models: Sequence[FreeModel]) -> None:
        """A new list: learn each model's serving provider and latency in the background."""
        self._save_catalog()
        self._start_learning(models)

    def _start_learning(self, models: Sequence[FreeModel]) -> None:
        if self._endpoints_task is None or self._endpoints_task.done():
            self._endpoints_task = asyncio.get_running_loop().create_task(
                self._learn_endpoints([m.id for m in models]), name="freerouter-catalog-endpoints"
            )

    async def _learn_endpoints(self, ids: Sequence[str]) -> None:
        """Seed scores from OpenRouter's per-endpoint latency (``latency_last_30m``), and the
        serving provider for the seed's provider ordering; anything missing is just skipped."""
        limit = asyncio.Semaphore(4)
        providers: dict[str, str] = {}

        async def one(model_id: str) -> None:
            async with limit:
                info = await self._endpoint_info(model_id)
            if info is None:
                return
            provider, latency = info
            if provider:
                providers[model_id] = provider
            if latency is not None:
                self.health.set_prior(model_id, latency)

        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.create_task(one(m), name=f"freerouter-catalog-endpoints:{m}") for m in ids)
        )
        if providers:
            self.catalog.annotate(providers)
            self._save_catalog()

    def _save_catalog(self) -> None:
        """Keep the list in the state store, for the next process to start with."""
        models = self.catalog.models
        if models is not None:
            self.health.store.save_catalog(
                [m.as_dict() for m in models], self.catalog.fetched_at or time.time()
            )

    async def _endpoint_info(self, model_id: str) -> tuple[str | None, float | None] | None:
        data = await self._get_data(f"/models/{model_id}/endpoints", self.api_key)
        endpoints = data.get("endpoints") if isinstance(data, Mapping) else None
        if not isinstance(endpoints, list) or not endpoints:
            return None
        best: tuple[float, str | None] | None = None
        first_provider: str | None = None
        for endpoint in endpoints:
            if not isinstance(endpoint, Mapping):
                continue
            name = endpoint.get("provider_name")
            provider = name if isinstance(name, str) else None
            first_provider = first_provider or provider
            latency = endpoint.get("latency_last_30m")
            raw = latency.get("p50") if isinstance(latency, Mapping) else latency
            p50 = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else 0
            if p50 > 0 and (best is None or p50 < best[0]):
                best = (p50, provider)
        if best is None:
            return first_provider, None
        return best[1] or first_provider, best[0] / 1000.0

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait (bounded) for the background reads this router started: the per-model
        /endpoints figures its ranking uses and the key's quota."""
        tasks = [
            task
            for task in (self._endpoints_task, self._quota_task)
            if task is not None and not task.done()
        ]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def aclose(self) -> None:
        await self.catalog.aclose()
        for name in ("_quota_task", "_endpoints_task"):
            task = getattr(self, name)
            setattr(self, name, None)
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=2)
        self.health.close()

    # --- ranking -------------------------------------------------------------------------------

    def rank(
        self, models: Sequence[FreeModel], settings: Settings, conversation: str | None, width: int
    ) -> list[FreeModel]:
        """Best expected first-token time first; some exploration; the conversation's winner."""
        position = {m.id: i for i, m in enumerate(models)}
        ordered = sorted(models, key=lambda m: (self.health.stats(m.id).score(), position[m.id]))
        unmeasured = [m for m in ordered[width:] if not self.health.stats(m.id).measured]
        # Explore in the last slot of a real race only: the best models still run beside it.
        if width > 1 and unmeasured and self._rng.random() < settings.explore:
            # The least-tried first, so that every model gets its turn.
            pick = min(unmeasured, key=lambda m: self.health.stats(m.id).attempts)
            ordered.remove(pick)
            ordered.insert(min(width, len(ordered)) - 1, pick)
        if conversation is not None:
            with self._sticky_lock:
                last = self._sticky.get(conversation)
            if last is not None and ordered and ordered[0].id != last:
                best = self.health.stats(ordered[0].id).score()
                for i, model in enumerate(ordered):
                    if model.id == last:
                        if self.health.stats(last).score() <= best * STICKY_SLACK:
                            ordered.insert(0, ordered.pop(i))
                        break
        return ordered

    def _remember(self, conversation: str | None, model: str) -> None:
        if conversation is None:
            return
        with self._sticky_lock:
            self._sticky[conversation] = model
            self._sticky.move_to_end(conversation)
            while len(self._sticky) > STICKY_MAX:
                self._sticky.popitem(last=False)

    def hedge_after(self, model: FreeModel, settings: Settings) -> float:
        if settings.hedge_delay != "auto":
            return float(settings.hedge_delay)
        quantile, unmeasured = self._hedge_quantile()
        stats = self.health.stats(model.id)
        usual = stats.quantile(quantile) if stats.settled else None
        if usual is None:
            usual = stats.expected_ttft() * unmeasured
        ceiling = settings.first_token_timeout or 60.0
        return min(max(usual, HEDGE_FLOOR), ceiling)

    def _hedge_quantile(self) -> tuple[float, float]:
        """The share of a model's first tokens a hedge waits for, and the multiple of its
        expected time that stands in before it is measured: later while the day's free
        requests are scarce."""
        remaining = self.health.quota_remaining()
        if remaining is None or remaining > SCARCE_QUOTA:
            self._scarce_notice = False  # the next time it is scarce is news again
            return HEDGE_QUANTILE, HEDGE_UNMEASURED
        if not self._scarce_notice:
            self._scarce_notice = True
            events.emit(
                events.QuotaNotice(
                    f"{remaining} free requests left today: a hedge waits until the first"
                    f" choice is later than {HEDGE_QUANTILE_SCARCE:.0%} of its first tokens"
                    f" (else {HEDGE_QUANTILE:.0%})"
                )
            )
        return HEDGE_QUANTILE_SCARCE, HEDGE_UNMEASURED_SCARCE

    # --- one request ---------------------------------------------------------------------------

    def _account_stop(self, failure: Failure) -> UpstreamError:
        return UpstreamError(
            Failure(
                failure.kind,
                "account",
                account_message(failure),
                failure.model,
                failure.status,
                failure.retry_after,
                failure.reset_at,
            )
        )

    def _handle_failure(self, failure: Failure, settings: Settings, request_id: str) -> None:
        cooldown = cooldown_for(failure, settings)
        if failure.kind == "rate_limited" and failure.model:
            self.health.refused(failure.model, failure.limit_rpm)
            if cooldown is not None and not failure.retry_after:
                # Its own per-minute limit: out only until its minute frees up (when this
                # process filled it), and never longer than a minute when this 429 says it is
                # that limit (requests this process cannot see filled it). A 429 that does not
                # say so (its provider is busy) cools as long as any other.
                wait = self.health.limit_wait(failure.model)
                if wait > 0:
                    cooldown = min(cooldown, wait)
                elif failure.limit_rpm:
                    cooldown = min(cooldown, RPM_WINDOW)
        if failure.scope == "model":
            self.health.record_failure(failure.model or "")
            if cooldown:
                self.health.cool(failure.model or "", cooldown, failure.kind)
        elif failure.scope == "account":
            if failure.kind == "daily_quota":
                self.health.block_account(failure, failure.reset_at or time.time() + 3600)
                self.health.set_quota(self.health.quota.limit, 0)
            elif failure.kind == "minute_limit":
                self.health.block_account(
                    failure, self.health.clock() + (failure.retry_after or 60.0)
                )
        events.emit(
            events.ContenderFailed(
                request_id,
                failure.model or "?",
                failure.kind,
                failure.scope,
                failure.message[:200],
                cooldown,
            )
        )

    async def _able(self, body: Mapping[str, Any], settings: Settings) -> list[FreeModel]:
        """The free models that can serve ``body``, cooling or not."""
        self.catalog.refresh_interval = settings.refresh_interval
        return capable(await self.models(), requirements_of(body))

    def _all_cooling(self, able: Sequence[FreeModel], waited: float) -> NoModelAvailable:
        wait = self.health.next_ready_in(m.id for m in able)
        at_limit = any(self.health.cooling_for(m.id) <= 0 for m in able)
        why = " or at their per-minute limit" if at_limit else ""
        first = f"; the first returns in {wait:.0f} s" if wait is not None else ""
        if wait is not None:
            first += (
                f", later than a request waits (wait_for_model, FREEROUTER_WAIT_FOR_MODEL:"
                f" {waited:g} s)"
            )
        return NoModelAvailable(
            f"all {len(able)} free models that can serve this request are cooling down"
            f" after recent failures{why}{first}",
            cooling=len(able),
            next_ready_in=wait,
        )

    def _left_out(
        self, body: Mapping[str, Any], tried: set[str], minute_frees_in: float | None = None
    ) -> str:
        """Why the free models this request did not try were left out, for its final error
        ("" when none were): a person reading "all 2 tried failed" should know the other 30
        are cooling down, not that there were only 2. ``minute_frees_in``: the account's
        minute held the ready ones back."""
        needs = requirements_of(body)
        unable: dict[str, int] = {}
        cooling = at_limit = ready = 0
        waits: list[float] = []
        for model in self.catalog.models or ():
            if model.id in tried:
                continue
            reason = needs.unmet_by(model)
            if reason is not None:
                unable[reason] = unable.get(reason, 0) + 1
                continue
            back = self.health.back_in(model.id)
            if back <= 0:
                ready += 1
            elif self.health.cooling_for(model.id) > 0:
                cooling += 1
                waits.append(back)
            else:
                at_limit += 1
                waits.append(back)
        parts = []
        if cooling:
            parts.append(f"{cooling} cooling down")
        if at_limit:
            parts.append(f"{at_limit} at their per-minute limit")
        if waits:
            parts[-1] += f" (the first back in {min(waits):.0f} s)"
        if ready:
            held = (
                f" (the account's free requests a minute are used up; the minute frees in"
                f" {minute_frees_in:.0f} s)"
                if minute_frees_in is not None
                else ""
            )
            parts.append(f"{ready} not tried{held}")
        if unable:
            needed = ", ".join(unable)
            parts.append(f"{sum(unable.values())} unable to serve this request ({needed})")
        others = cooling + at_limit + ready + sum(unable.values())
        return f"the other {others} were left out: {', '.join(parts)}" if parts else ""

    async def _ready_or_wait(
        self,
        body: Mapping[str, Any],
        settings: Settings,
        request_id: str,
        tried: set[str],
        deadline: float,
        shown: bool = False,
    ) -> list[FreeModel]:
        """The models that can serve ``body``, are not in ``tried``, are not cooling down and
        are under their known per-minute limit (``shown``: part of the answer has reached the
        caller, so that a wait is news, not a warning).

        When there are none but one of them returns before ``deadline`` (the loop's clock), the
        request waits for it: a short cooldown, such as a model's own per-minute window, costs
        a few seconds instead of a failed call. Raises :class:`NoModelAvailable` otherwise.
        Calls held for the account's free requests a minute wait the same way; any other
        account-wide stop raises at once.
        """
        loop = asyncio.get_running_loop()
        while True:
            self.health.refresh()  # what other processes learnt since: cooldowns, limits, speed
            blocked = self.health.account_block()
            if blocked is not None:
                held = self.health.account_blocked_for()
                if blocked.kind != "minute_limit" or loop.time() + held > deadline:
                    raise self._account_stop(blocked)
                events.emit(events.Waiting(request_id, held, 0, shown))
                await asyncio.sleep(held)
                continue
            able = await self._able(body, settings)
            untried = [m for m in able if m.id not in tried]
            ready = [m for m in untried if self.health.ready(m.id)]
            if ready:
                return ready
            if not untried:
                raise NoModelAvailable("no other free model is ready to carry this answer on")
            wait = self.health.next_ready_in(m.id for m in untried)
            if wait is None or loop.time() + wait > deadline:
                raise self._all_cooling(untried, settings.wait_for_model)
            events.emit(events.Waiting(request_id, wait, len(untried), shown))
            await asyncio.sleep(wait)

    def _room(self, settings: Settings) -> int | None:
        """How many requests this race may start, failed ones replaced included: what is left
        of the account's free requests a minute (never less than one; None: no pacing)."""
        limit = settings.requests_per_minute
        if not limit:
            return None
        return max(1, limit - self.health.sent_last_minute())

    def _width(self, settings: Settings) -> int:
        width = settings.race_width
        limit = settings.requests_per_minute
        if limit and width > 1:
            room = limit - self.health.sent_last_minute()
            if room < width:
                # More contenders would pass OpenRouter's free requests a minute: each refused
                # one would still count against the day's quota.
                width = max(1, room)
                if not self._paced_notice:
                    self._paced_notice = True
                    events.emit(
                        events.AccountNotice(
                            f"{limit - room} free requests in the last minute (OpenRouter allows"
                            f" {limit}): racing {width} at a time until the minute frees up"
                        )
                    )
            else:
                self._paced_notice = False  # the next time it narrows is news again
        remaining = self.health.quota_remaining()
        if remaining is not None and remaining < settings.quota_reserve and width > 1:
            if not self._narrowed_notice:
                self._narrowed_notice = True
                events.emit(
                    events.AccountNotice(
                        f"only {remaining} free requests left today (reserve"
                        f" {settings.quota_reserve}): racing one model at a time"
                    )
                )
            return 1
        if remaining is not None and 0 < remaining < width:
            # Never more contenders than requests left: the rest would be sure 429s.
            width = remaining
        return width

    async def _attempt(
        self, body: dict[str, Any], settings: Settings, request_id: str, spent: _Spent
    ) -> AsyncGenerator[tuple[str, Delta], None]:
        """One race for ``body`` among the models that have not failed the request, then the
        winner's answer: yields (winning model, delta); a failure after the first token raises
        _MidAnswer. ``spent`` carries what the request spent over to a race that carries its
        answer on."""
        api_key = settings.require_key()
        self.api_key = api_key
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.wait_for_model
        # Every model this request has tried (and the ones it broke off on): a model is asked
        # at most once, so that waiting for a cooldown never spends quota on a known failure.
        tried = set(spent.failed)
        # Of the models that failed this request (or the identical one it goes on from).
        failures: list[Failure] = list(spent.earlier)
        repeat = None
        if spent.failed_at is not None:
            repeat = (self.health.clock() - spent.failed_at, REPEAT_WINDOW)
        refused: list[Failure] = []  # refused outright (400/422) by a model, this request
        conversation = conversation_key(body.get("messages") or [])
        headers = upstream_headers(api_key, settings.extra_headers)
        url = f"{self.api_base}/chat/completions"
        session = self._session()

        def make(model: FreeModel, now: float) -> Contender:
            payload = dict(body, model=model.id, stream=True)
            return Contender(
                model,
                session=session,
                url=url,
                headers=headers,
                body=encode_body(payload),
                started=now,
                idle_timeout=settings.idle_timeout,
            )

        def on_failure(failure: Failure) -> None:
            if failure.scope != "account":
                failures.append(failure)
                if failure.model:
                    spent.failed.add(failure.model)
            self._handle_failure(failure, settings, request_id)
            if failure.kind == "too_large":
                raise RequestRejected([failure])
            if failure.kind == "rejected" and failure.status in (400, 422):
                refused.append(failure)
                if len(refused) >= 2:
                    # Two models refused the same request: it is the request, not them.
                    for each in refused:
                        self.health.uncool(each.model or "", "rejected")
                    raise RequestRejected(refused)

        cap = max(settings.max_attempts, settings.race_width)

        def on_start(contender: Contender) -> None:
            spent.attempts += 1
            tried.add(contender.id)
            self.health.record_attempt(contender.id)
            self.health.spend()
            events.emit(events.ContenderStarted(request_id, contender.id, loop.time() - race_start))

        minute_stop: Failure | None = None  # the account's minute cut a race of this short
        while True:
            left = cap - spent.attempts
            if left <= 0:
                if minute_stop is not None and not failures:
                    # Races the account's minute cut short used them all: that is the error
                    # (a RateLimitError a caller may retry), not the cap.
                    raise self._account_stop(minute_stop)
                # Failed contenders, or earlier races of an answer carried on, used them all.
                raise AllModelsFailed(
                    failures, cap=cap, left_out=self._left_out(body, tried), repeat=repeat
                )
            limit = settings.requests_per_minute
            if failures and limit:
                # Models already failed this request, and the account's minute is full: the
                # next one waits for it to free (each refused request still counts).
                wait = self.health.minute_frees_in(limit)
                if wait > 0:
                    if loop.time() + wait > deadline:
                        left_out = self._left_out(body, tried, wait)
                        raise AllModelsFailed(
                            failures, left_out=left_out, repeat=repeat, cut_short=True
                        )
                    events.emit(events.Waiting(request_id, wait, 0, spent.shown))
                    await asyncio.sleep(wait)
            self._watch_quota(api_key)  # the first read runs beside the model list's fetch
            try:
                ready = await self._ready_or_wait(
                    body, settings, request_id, tried, deadline, spent.shown
                )
            except NoModelAvailable:
                if failures:  # models failed this request, and no other returns in time
                    left_out = self._left_out(body, tried)
                    raise AllModelsFailed(failures, left_out=left_out, repeat=repeat) from None
                raise
            if await self._await_first_quota(min(settings.race_width, len(ready))):
                # Other requests may have cooled a model or met the day's 429 meanwhile.
                continue
            room = self._room(settings)
            budget = max(1, left if room is None else min(room, left))
            width = self._width(settings)
            ordered = self.rank(ready, settings, conversation, width)
            race_start = loop.time()
            events.emit(
                events.RaceStarted(
                    request_id,
                    tuple(m.id for m in ordered[:width]),
                    len(ordered),
                    hedged=settings.hedge_delay != 0 and width > 1,
                )
            )
            try:
                outcome = await race(
                    ordered,
                    make=make,
                    width=width,
                    budget=budget,
                    first_token_timeout=settings.first_token_timeout,
                    hedge_after=lambda m: self.hedge_after(m, settings),
                    on_start=on_start,
                    on_failure=on_failure,
                )
            except AccountStop as stop:
                if stop.failure.kind != "minute_limit":
                    raise self._account_stop(stop.failure) from None
                # The account's minute is used up: the race's other contenders were cancelled,
                # not failed, and may be asked again once the minute frees (if it does in time).
                minute_stop = stop.failure
                tried = set(spent.failed)
                continue
            except AllFailed:
                continue  # every ready model failed; another may still come back in time
            break

        winner = outcome.winner
        first_token = (winner.first_token_at or loop.time()) - winner.started
        learnt = False

        def learn() -> None:
            """What the race taught, written once the first token is on its way to the caller
            (each write can take milliseconds: not on the first token's path)."""
            nonlocal learnt
            if not learnt:
                learnt = True
                self.health.record_first_token(winner.id, first_token)
                for model_id, seconds in outcome.lost:
                    self.health.record_lower_bound(model_id, seconds)

        self._remember(conversation, winner.id)
        events.emit(
            events.Winner(
                request_id,
                winner.id,
                (winner.first_token_at or race_start) - race_start,
                outcome.started,
            )
        )
        ok = False
        error: str | None = None
        try:
            async with contextlib.aclosing(winner.deltas()) as deltas:
                async for delta in deltas:
                    yield winner.id, delta
                    learn()
            ok = True
        except UpstreamError as exc:
            error = str(exc)
            learn()
            self._handle_failure(exc.failure, settings, request_id)
            raise _MidAnswer(exc, winner.id) from None
        finally:
            learn()
            winner.close()
            events.emit(events.Finished(request_id, winner.id, ok, loop.time() - race_start, error))

    def _spent_for(self, body: Mapping[str, Any]) -> _Spent:
        """What a new request has spent: nothing, unless it repeats one that failed on every
        model it tried less than REPEAT_WINDOW seconds ago, whose account it goes on from."""
        with self._failed_lock:
            if not self._failed:
                return _Spent()  # the usual case: no need to fingerprint the request
        key = request_key(body)
        now = self.health.clock()
        with self._failed_lock:
            for stale in [
                k for k, e in self._failed.items() if now - (e.failed_at or 0) >= REPEAT_WINDOW
            ]:
                del self._failed[stale]
            earlier = self._failed.get(key)
        if earlier is None:
            return _Spent()
        return dataclasses.replace(earlier, failed=set(earlier.failed))

    def _remember_failed(
        self, body: Mapping[str, Any], spent: _Spent, error: AllModelsFailed
    ) -> None:
        """Keep what a request that failed on every model it tried spent, for a repeat of it
        to go on from (dated from the first failure of the requests it repeats)."""
        if not error.failures or error.cut_short:
            # The account's minute cut it short, not the models: a retry is a request afresh.
            return
        record = _Spent(
            attempts=spent.attempts,
            failed=set(spent.failed),
            earlier=error.failures,
            failed_at=spent.failed_at if spent.failed_at is not None else self.health.clock(),
        )
        key = request_key(body)
        with self._failed_lock:
            self._failed[key] = record
            self._failed.move_to_end(key)
            while len(self._failed) > REPEAT_MAX:
                self._failed.popitem(last=False)

    async def stream(
        self, body: dict[str, Any], settings: Settings
    ) -> AsyncGenerator[tuple[str, Delta], None]:
        """Race for ``body`` and yield (winning model, delta) until the answer ends.

        When the winner fails after its first token, another race carries the answer on from
        what was delivered (OpenRouter's assistant prefill), up to ``settings.resume`` times;
        an answer that had started a tool call cannot be carried on and fails.

        Every generator it reads is closed as it is left (``aclosing``): closing this one, at
        a yield, closes the winner's response before ``aclose()`` returns, rather than when the
        loop finalises the abandoned generators a turn or more later.
        """
        request_id = f"fr{next(_request_ids)}"
        delivered = ""
        tool_calls = False
        spent = self._spent_for(body)
        first_break: UpstreamError | None = None
        current = body
        while True:
            try:
                attempt = self._attempt(current, settings, request_id, spent)
                async with contextlib.aclosing(attempt) as deltas:
                    async for model, delta in deltas:
                        delivered += delta.content
                        tool_calls = tool_calls or bool(delta.tool_calls)
                        spent.shown = True
                        yield model, delta
                return
            except _MidAnswer as broken:
                if spent.breaks >= settings.resume or tool_calls:
                    broken.error.final = spent.breaks > 0  # carried on already: do not retry
                    raise broken.error from None
                spent.broke(broken.model)
                first_break = first_break or broken.error
                events.emit(
                    events.Resumed(
                        request_id, broken.model, broken.error.failure.kind, len(delivered), False
                    )
                )
                current = with_prefill(body, delivered) if delivered else body
            except (AllModelsFailed, NoModelAvailable) as exc:
                if first_break is None:
                    if isinstance(exc, AllModelsFailed):
                        self._remember_failed(body, spent, exc)
                    raise
                raise _carry_on_failed(first_break, exc) from None

    async def complete(self, body: dict[str, Any], settings: Settings) -> Answer:
        """The whole answer at once (the race still streams, to win on the first token).

        Nothing reaches the caller before the end, so an answer whose model fails after its first
        token simply starts afresh on another model, up to ``settings.resume`` times.
        """
        request_id = f"fr{next(_request_ids)}"
        spent = self._spent_for(body)
        first_break: UpstreamError | None = None
        while True:
            try:
                return await self._complete_once(body, settings, request_id, spent)
            except _MidAnswer as broken:
                if spent.breaks >= settings.resume:
                    broken.error.final = spent.breaks > 0  # started afresh already: no retry
                    raise broken.error from None
                spent.broke(broken.model)
                first_break = first_break or broken.error
                events.emit(
                    events.Resumed(request_id, broken.model, broken.error.failure.kind, 0, True)
                )
            except (AllModelsFailed, NoModelAvailable) as exc:
                if first_break is None:
                    if isinstance(exc, AllModelsFailed):
                        self._remember_failed(body, spent, exc)
                    raise
                raise _carry_on_failed(first_break, exc) from None

    async def _complete_once(
        self, body: dict[str, Any], settings: Settings, request_id: str, spent: _Spent
    ) -> Answer:
        answer: Answer | None = None
        calls: dict[int, dict[str, Any]] = {}
        attempt = self._attempt(body, settings, request_id, spent)
        async with contextlib.aclosing(attempt) as deltas:
            async for model, delta in deltas:
                if answer is None:
                    answer = Answer(model=model)
                answer.content += delta.content
                answer.reasoning += delta.reasoning
                for call in delta.tool_calls:
                    slot = calls.setdefault(
                        call.index,
                        {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                    )
                    if call.id:
                        slot["id"] = call.id
                    if call.name:
                        slot["function"]["name"] += call.name
                    slot["function"]["arguments"] += call.arguments
                if delta.finish_reason:
                    answer.finish_reason = delta.finish_reason
                if delta.usage:
                    answer.usage = delta.usage
        assert answer is not None  # a race only returns a winner that produced a token
        answer.tool_calls = [calls[i] for i in sorted(calls)]
        for i, assembled in enumerate(answer.tool_calls):
            assembled["id"] = assembled["id"] or f"call_{i}"
        if answer.tool_calls and answer.finish_reason == "stop":
            answer.finish_reason = "tool_calls"
        return answer


@dataclass(slots=True)
class _Spent:
    """What one request has spent, over every race of it (an answer carried on is raced
    again): the upstream requests it sent (``FREEROUTER_MAX_ATTEMPTS`` bounds them all), the
    models that failed it or broke off its answer (never asked again for it), and how many
    broke off (``FREEROUTER_RESUME`` bounds those)."""

    attempts: int = 0
    failed: set[str] = field(default_factory=set)
    breaks: int = 0
    # Going on from an identical request that failed (see REPEAT_WINDOW): its failures, and
    # when the first of the requests it repeats failed (health's clock).
    earlier: tuple[Failure, ...] = ()
    failed_at: float | None = None
    shown: bool = False  # part of the answer has reached the caller (streamed)

    def broke(self, model: str) -> None:
        self.breaks += 1
        self.failed.add(model)


class _MidAnswer(Exception):
    """Internal: the winner failed after its first token."""

    def __init__(self, error: UpstreamError, model: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.model = model


def with_prefill(body: Mapping[str, Any], delivered: str) -> dict[str, Any]:
    """``body`` asking the next model to go on from ``delivered``: the text becomes (the end of)
    a final assistant message, which OpenRouter passes on as a prefill to continue."""
    messages = list(body.get("messages") or [])
    last = messages[-1] if messages else None
    if (
        isinstance(last, Mapping)
        and last.get("role") == "assistant"
        and isinstance(last.get("content"), str)
        and not last.get("tool_calls")
    ):
        messages[-1] = dict(last, content=last["content"] + delivered)
    else:
        messages.append({"role": "assistant", "content": delivered})
    return dict(body, messages=messages)


def _carry_on_failed(broken: UpstreamError, exc: FreeRouterError) -> UpstreamError:
    """The answer broke and no other model could carry it on: the first break, as it was (so
    that litellm maps it the same way), saying why it could not be mended."""
    failure = broken.failure
    message = f"{failure.message}; no other model could carry the answer on: {exc}"
    error = type(broken)(dataclasses.replace(failure, message=message))
    error.final = True  # a retry would meet the same models, spending the quota again
    return error
