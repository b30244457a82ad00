"""``freerouter doctor``: everything a user can get wrong, each with how to fix it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from . import engine, state
from ._support import (
    catalog_problem,
    describe,
    free_models,
    network_cause,
    router_for,
    unreachable,
)
from ._ui import Mark, Output, kind_text, ms, one_line, span
from .catalog import FreeModel
from .config import Settings
from .errors import (
    CREDITS_URL,
    KEYS_URL,
    PRIVACY_URL,
    AllModelsFailed,
    CatalogUnavailable,
    Failure,
    MalformedKeyError,
    NoModelAvailable,
    UpstreamError,
    account_message,
)
from .router import SCARCE_QUOTA

PROBE_BODY: dict[str, Any] = {
    "messages": [{"role": "user", "content": "Reply with the single word OK."}],
    "max_tokens": 1,
}


@dataclass(frozen=True, slots=True)
class KeyInfo:
    status: int | None  # None: the request itself failed
    data: Mapping[str, Any] | None = None
    error: str | None = None


async def read_key(settings: Settings, api_key: str) -> KeyInfo:
    """GET /key: unlike the router's quota read, the status matters here (401: rejected)."""
    session = engine.get_engine().session()
    try:
        async with session.get(
            f"{settings.base}/key",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=aiohttp.ClientTimeout(total=15),
        ) as response:
            if response.status != 200:
                return KeyInfo(response.status)
            payload = await response.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        return KeyInfo(None, error=str(exc) or type(exc).__name__)
    data = payload.get("data") if isinstance(payload, Mapping) else None
    return KeyInfo(200, data if isinstance(data, Mapping) else None)


class Doctor:
    def __init__(self, out: Output, settings: Settings, *, key_source: str, probe: bool) -> None:
        self.out = out
        self.settings = settings
        self.key_source = key_source
        self.probe = probe
        self.problems = 0
        self.warnings = 0

    def report(self, kind: Mark, text: str, fix: str | None = None) -> None:
        if kind == "fail":
            self.problems += 1
        elif kind == "warn":
            self.warnings += 1
        self.out.mark(kind, text, fix)

    def run(self) -> int:
        """Run every check that makes sense; the exit status: 0 all good, 1 otherwise."""
        s = self.settings
        self.out.parts([("freerouter doctor", "bold"), (f": checking {s.base}", None)])
        key = self.check_key_present()
        self.check_state()
        models = self.check_endpoint()
        if models is not None and key is not None and self.check_key(key) and models:
            self.check_probe(models)
        elif self.probe and models is not None and key is None:
            self.report("warn", "probe: skipped (no API key)")
        if self.problems:
            plural = "s" if self.problems > 1 else ""
            self.out.line(f"{self.problems} problem{plural} found.", "bold red")
            return 1
        if self.warnings:
            plural = "s" if self.warnings > 1 else ""
            self.out.line(
                f"freerouter/auto is ready to use, with {self.warnings} warning{plural} above.",
                "bold yellow",
            )
            return 0
        self.out.line("All good: freerouter/auto is ready to use.", "bold green")
        return 0

    def check_key_present(self) -> str | None:
        if self.settings.api_key:
            try:
                key = self.settings.require_key()
            except MalformedKeyError:
                self.report(
                    "fail",
                    f"API key: set (from {self.key_source}), but it has a space or control"
                    " character inside, so no request could send it",
                    f"set {self.key_source} again to the key alone (pasted with another line?)",
                )
                return None
            self.report("ok", f"API key: set (from {self.key_source})")
            return key
        self.report(
            "fail",
            "API key: missing",
            f"export OPENROUTER_API_KEY=... (create a key for free at {KEYS_URL}),"
            " or pass --api-key",
        )
        return None

    def check_state(self) -> None:
        """Where cooldowns and timings are kept, and whether it works (no network needed)."""
        try:
            report = state.describe(self.settings)
        except Exception as exc:  # a broken store must not stop the other checks
            self.report("warn", f"shared state: unreadable ({type(exc).__name__}: {exc})")
            return
        if report.problem:
            self.report("warn", f"shared state: {report.problem}")
        else:
            cooling = f", {len(report.cooling)} cooling down" if report.cooling else ""
            self.report(
                "ok",
                f"shared state: {report.backend} at {report.where}"
                f" ({report.measured} measured{cooling})",
            )
        if report.blocked:
            self.report(
                "warn",
                f"every call is held for another {span(report.blocked_for)}:"
                f" {kind_text(report.blocked)}",
            )

    def check_endpoint(self) -> tuple[FreeModel, ...] | None:
        """Reachable, and lists free models; None when unreachable (nothing else can work)."""
        base = self.settings.base
        try:
            models = free_models(self.settings)
        except CatalogUnavailable as exc:
            if unreachable(exc):
                cause = one_line(str(network_cause(exc) or exc), 160)
                self.report(
                    "fail",
                    f"endpoint: cannot reach {base} (unreachable: {cause})",
                    "check the network connection and any proxy; the endpoint comes from"
                    " --api-base or OPENROUTER_API_BASE (default https://openrouter.ai/api/v1)",
                )
                return None
            self.report(
                "fail",
                f"endpoint: {catalog_problem(exc, base)}",
                "OpenRouter may be having trouble: see https://status.openrouter.ai",
            )
            return None
        except NoModelAvailable:
            self.report("ok", f"endpoint: {base} reachable")
            self.report(
                "fail",
                "free models: OpenRouter lists none right now",
                "try again later; free variants come and go",
            )
            return ()
        tools = sum(1 for m in models if m.supports_tools)
        vision = sum(1 for m in models if m.supports_images)
        self.report("ok", f"endpoint: {base} reachable")
        self.report(
            "ok", f"free models: {len(models)} listed ({tools} with tools, {vision} with vision)"
        )
        return models

    def check_key(self, key: str) -> bool:
        """The key is accepted, and today's free quota is not used up; False stops the probe."""
        settings = self.settings
        info = engine.call_sync(lambda: read_key(settings, key), timeout=60)
        if info.status == 401:
            self.report(
                "fail",
                "API key: rejected by OpenRouter (401)",
                f"check {self.key_source} for typos, or create a new key at {KEYS_URL}",
            )
            return False
        if info.status != 200:
            why = f"/key answered {info.status}" if info.status else info.error
            self.report("warn", f"API key: could not be checked ({why})")
            return True
        data = info.data or {}
        tier = " (free tier)" if data.get("is_free_tier") is True else ""
        self.report("ok", f"API key: accepted{tier}")
        return self.check_quota(data)

    def check_quota(self, data: Mapping[str, Any]) -> bool:
        daily = data.get("free_model_daily_requests")
        limit = daily.get("limit") if isinstance(daily, Mapping) else None
        remaining = daily.get("remaining") if isinstance(daily, Mapping) else None
        if not (isinstance(limit, int) and isinstance(remaining, int)):
            self.report(
                "warn",
                "daily free quota: not reported for this key; OpenRouter allows 50 free requests"
                " a day, 1000 once 10 USD of credits were ever bought",
            )
            return True
        router_for(self.settings).health.set_quota(limit, remaining)
        if remaining <= 0:
            failure = Failure("daily_quota", "account", "")
            self.report(
                "fail", f"daily free quota: used up (0 of {limit} left)", account_message(failure)
            )
            return False
        text = f"daily free quota: {remaining} of {limit} requests left today (resets 00:00 UTC)"
        if remaining < self.settings.quota_reserve:
            self.report(
                "warn",
                text,
                f"below the reserve of {self.settings.quota_reserve}:"
                " freerouter races one model at a time; more at " + CREDITS_URL,
            )
        elif (
            limit <= SCARCE_QUOTA
            and self.settings.hedge_delay == 0
            and self.settings.race_width > 1
        ):
            width = self.settings.race_width
            self.report(
                "warn",
                text,
                f"freerouter/auto racing {width} at once spends about {width} of them per"
                " prompt; hedged racing (the model freerouter/hedged, or"
                " FREEROUTER_HEDGE_DELAY=auto) about 1.3, if you do not use it already."
                " Or unlock 1000 a day at " + CREDITS_URL,
            )
        else:
            self.report("ok", text)
        return True

    def check_probe(self, models: tuple[FreeModel, ...]) -> None:
        if not self.probe:
            self.report(
                "warn",
                "probe: skipped (--no-probe); a privacy setting that blocks free models only"
                " shows up on a real request",
            )
            return
        self.out.line(
            "  probing: one minimal completion (max_tokens 1), which spends 1 of today's free"
            " requests (one more for each model that fails)…",
            "dim",
        )
        settings = dataclasses.replace(self.settings, race_width=1, hedge_delay=0.0)
        router = router_for(settings)
        started = time.monotonic()
        try:
            answer = engine.call_sync(
                lambda: router.complete(dict(PROBE_BODY), settings), timeout=180
            )
        except UpstreamError as exc:
            self._probe_failed(exc.failure, str(exc))
            return
        except AllModelsFailed as exc:
            kinds = ", ".join(sorted({kind_text(f.kind) for f in exc.failures}))
            self.report(
                "fail",
                f"probe: every free model tried failed ({kinds})",
                "free models may be overloaded; try again in a minute, and see"
                " `freerouter models` for cooldowns",
            )
            return
        except Exception as exc:
            self.report("fail", f"probe: {describe(exc, self.settings.base)}")
            return
        took = time.monotonic() - started
        self.report("ok", f"probe: answered by {answer.model} in {ms(took)}")

    def _probe_failed(self, failure: Failure, message: str) -> None:
        if failure.kind == "privacy":
            self.report(
                "fail",
                "privacy settings: OpenRouter blocks free models for this account",
                f"enable 'Free model publication' (free endpoints that may publish prompts) at"
                f" {PRIVACY_URL}",
            )
        elif failure.kind == "auth":
            self.report(
                "fail",
                "API key: rejected by OpenRouter (401)",
                f"check OPENROUTER_API_KEY, or create a new key at {KEYS_URL}",
            )
        elif failure.kind == "credits":
            self.report(
                "fail",
                "credits: the account's balance blocks free models (402)",
                f"add credits at {CREDITS_URL}",
            )
        elif failure.kind in ("daily_quota", "minute_limit"):
            self.report("fail", f"probe: {kind_text(failure.kind)}", message)
        else:
            self.report("fail", f"probe: {kind_text(failure.kind)}: {message}")
