"""The reliability suite: every fault class, streamed and not, sync and async; then load.

For each fault the caller must get the right outcome (a clean fallback to a healthy model, or a
clear error of the right class), and afterwards no upstream stream may be open and no request
task may be pending, on the engine or on the caller's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import litellm
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_freerouter import engine, events
from litellm_freerouter.catalog import FreeModel
from litellm_freerouter.requirements import requirements_of
from litellm_freerouter.simulator import ModelScript, Simulator, SimulatorThread

from .conftest import (
    KEY,
    Upstream,
    cool,
    cool_once_listed,
    env_router,
    fast,
    in_use_connections,
    nothing_left_open,
    released_on_failure,
    request_tasks,
)


@dataclass(frozen=True)
class Fault:
    name: str
    script: dict[str, Any]
    # None: the healthy fallback answers. Otherwise the litellm error class the caller gets.
    error: type[Exception] | None = None
    says: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # How the router must classify the faulty model's failure (REFERENCE.md's table): kind,
    # scope, and the cooldown it gets (seconds at the default tunables; None: none at all).
    kind: tuple[str, str, float | None] = field(kw_only=True)
    # Met with no healthy model beside it (else one waits, slower, to take over).
    alone: bool = field(default=False, kw_only=True)


# A stall before the first token is only classified when it is met alone: raced beside a
# healthy model, it simply loses.
ALONE = {"race_width": 1}
# call()'s 1 s first-token timeout is there to end the stalls quickly. Where nothing stalls
# before its first token, a longer one keeps a contender a loaded machine runs late from being
# dropped as slow: it only bounds a hang.
NO_STALL = {"first_token_timeout": 10.0}
PER_DAY = {"headers": {"X-RateLimit-Reset": "4102444800000"}}
FAULTS = [
    # Met alone: a contender already in flight beside them was accepted and may still answer
    # (see test_an_account_limit_lets_the_requests_in_flight_finish).
    Fault(
        "daily quota",
        {
            "status": 429,
            "error_message": "Rate limit exceeded: free-models-per-day",
            "error_metadata": PER_DAY,
        },
        litellm.RateLimitError,
        "free daily quota",
        kind=("daily_quota", "account", None),
        alone=True,
    ),
    Fault(
        "minute limit",
        {"status": 429, "error_message": "Rate limit exceeded: free-models-per-min"},
        litellm.RateLimitError,
        "a minute",
        kind=("minute_limit", "account", None),
        alone=True,
    ),
    Fault(
        "upstream rate limit",
        {
            "status": 429,
            "error_message": "Provider returned error",
            "error_metadata": {"raw": "x:free is temporarily rate-limited upstream"},
        },
        kind=("rate_limited", "model", 90.0),
    ),
    Fault(
        "model rpm",
        {"status": 429, "error_message": "limit_rpm/x/y: high demand"},
        kind=("rate_limited", "model", 90.0),
    ),
    Fault(
        "context length",
        {"status": 400, "error_message": "maximum context length is 10 tokens"},
        kind=("context", "request", None),
    ),
    Fault(
        "no tool support",
        {"status": 404, "error_message": "No endpoints found that support tool use"},
        kind=("unsupported", "request", None),
    ),
    Fault(
        "no image support",
        {"status": 404, "error_message": "No endpoints found that support image input"},
        kind=("unsupported", "request", None),
    ),
    Fault(
        "data policy",
        {"status": 404, "error_message": "No endpoints found matching your data policy"},
        litellm.NotFoundError,
        "settings/privacy",
        kind=("privacy", "account", None),
    ),
    Fault(
        "model gone",
        {"status": 404, "error_message": "No endpoints found for x."},
        kind=("gone", "model", 3600.0),
    ),
    Fault(
        "bad key",
        {"status": 401, "error_message": "No auth credentials found"},
        litellm.AuthenticationError,
        "OPENROUTER_API_KEY",
        kind=("auth", "account", None),
    ),
    Fault(
        "no credits",
        {"status": 402, "error_message": "Insufficient credits"},
        litellm.BadRequestError,
        "credits",
        kind=("credits", "account", None),
    ),
    Fault(
        "moderation",
        {"status": 403, "error_message": "flagged"},
        kind=("moderation", "request", None),
    ),
    Fault(
        "moderation, with reasons",
        {
            "status": 403,
            "error_message": "Input was flagged for moderation",
            "error_metadata": {"reasons": ["violence"], "flagged_input": "go", "model_slug": "x"},
        },
        kind=("moderation", "request", None),
    ),
    Fault("request timeout", {"status": 408}, kind=("server", "model", 90.0)),
    Fault("server error", {"status": 500}, kind=("server", "model", 90.0)),
    Fault("bad gateway", {"status": 502}, kind=("server", "model", 90.0)),
    Fault("unavailable", {"status": 503}, kind=("server", "model", 90.0)),
    Fault("rejected", {"status": 422}, kind=("rejected", "model", 90.0)),
    Fault(
        "stall before token",
        {"stall_before_first_token": True},
        kind=("slow", "model", 15.0),
        extra=ALONE,
    ),
    Fault(
        "stall before token, alone",
        {"stall_before_first_token": True},
        litellm.Timeout,
        "no first token within 1 s (first_token_timeout, FREEROUTER_FIRST_TOKEN_TIMEOUT)",
        kind=("slow", "model", 15.0),
        alone=True,
    ),
    Fault(
        "keepalives then stall",
        {"keepalives": 3, "keepalive_interval": 0.01, "stall_before_first_token": True},
        kind=("slow", "model", 15.0),
        extra=ALONE,
    ),
    Fault(
        "error chunk", {"error_chunk_after": 0, "error_code": 502}, kind=("server", "model", 90.0)
    ),
    Fault(
        "error chunk, string code",
        {"error_chunk_after": 0, "error_code": "server_error"},
        kind=("server", "model", 90.0),
    ),
    Fault(
        "malformed then dropped",
        {"malformed_lines": 5, "drop_after_chunks": 0},
        kind=("network", "model", 90.0),
    ),
    Fault("reset before token", {"drop_after_chunks": 0}, kind=("network", "model", 90.0)),
    Fault("empty answer", {"empty": True}, kind=("empty", "model", 15.0)),
    Fault(
        "stall after token",
        {"stall_after_chunks": 1, "chunks": ("one", " two")},
        litellm.Timeout,
        "sent nothing for",
        kind=("stalled", "model", 15.0),
        alone=True,
    ),
    Fault(
        "reset after token",
        {"drop_after_chunks": 1, "chunks": ("one", " two")},
        litellm.ServiceUnavailableError,
        "connection lost",
        kind=("network", "model", 90.0),
        alone=True,
    ),
    Fault(
        "error chunk after token",
        {"error_chunk_after": 1, "chunks": ("one", " two"), "error_message": "provider crashed"},
        litellm.ServiceUnavailableError,
        "provider crashed",
        kind=("server", "model", 90.0),
        alone=True,
    ),
]
MODES = [("sync", True), ("sync", False), ("async", True), ("async", False)]
MODE_IDS = [f"{m}-{'stream' if s else 'whole'}" for m, s in MODES]


async def call(mode: str, stream: bool, **kwargs: Any) -> str:
    request = {
        "model": "freerouter/auto",
        "messages": [{"role": "user", "content": "go"}],
        "stream": stream,
        "first_token_timeout": 1.0,
        "idle_timeout": 0.5,
        **kwargs,
    }
    if mode == "sync":

        def run() -> str:
            response = litellm.completion(**request)
            if not stream:
                return response.choices[0].message.content or ""
            return "".join(c.choices[0].delta.content or "" for c in response)

        return await asyncio.to_thread(run)
    response = await litellm.acompletion(**request)
    if not stream:
        return response.choices[0].message.content or ""
    return "".join([c.choices[0].delta.content or "" async for c in response])


def unwrap(error: BaseException) -> BaseException:
    """litellm >= 1.8x re-raises stream errors as MidStreamFallbackError around the original."""
    return getattr(error, "original_exception", None) or error


async def failure_of(
    mode: str, stream: bool, expected: type[Exception], **kwargs: Any
) -> BaseException:
    """The error the call ends with (unwrapped), which must be an ``expected``."""
    with pytest.raises(Exception) as caught:
        await call(mode, stream, **kwargs)
    error = unwrap(caught.value)
    assert isinstance(error, expected), repr(caught.value)
    return error


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
async def test_fault(
    upstream: Upstream,
    fault: Fault,
    mode: str,
    stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each fault gives a clean fallback or its own clear error, and leaves nothing open.

    An account-wide fault stops the request at once: the other model, which would never
    answer, is hung up on rather than waited for.  Whatever the upstream says echoes the key,
    which must reach neither the error, nor the log, nor the router's events."""
    caplog.set_level(logging.DEBUG, logger="litellm_freerouter")
    script = dict(fault.script)
    if "status" in script or "error_chunk_after" in script:
        script["error_message"] = f"{script.get('error_message') or 'it failed'} (key {KEY})"
    faulty = ModelScript("faulty/a:free", context_length=1000, **script)
    account_wide = fault.kind[1] == "account"
    options = dict(fault.extra)
    if account_wide:
        healthy = ModelScript("healthy/b:free", stall_before_first_token=True, context_length=2000)
    else:
        healthy = fast("healthy/b:free", "fallback answer", context_length=2000)
        # One contender at a time: the faulty model ranks first (neither is measured; the
        # smaller context leads), so its failure is handled before the healthy one starts,
        # however late a loaded machine runs it.
        options.update(ALONE)
    if not fault.script.get("stall_before_first_token"):
        options.update(NO_STALL)
    upstream.sim.set_models([faulty] if fault.alone else [faulty, healthy])
    failures = failures_seen()
    try:
        if fault.error is None:
            assert await call(mode, stream, **options) == "fallback answer"
            assert upstream.sim.calls_for("faulty/a:free") == 1
        else:
            error = await failure_of(mode, stream, fault.error, **options)
            assert fault.says in str(error)
            assert KEY not in str(error)
    finally:
        seen = failures.stop()
    assert seen == [("faulty/a:free", *fault.kind)]
    assert not [reason for reason in failures.reasons if KEY in reason]
    assert KEY not in caplog.text
    await nothing_left_open(upstream)
    if account_wide and not fault.alone:
        # Hung up on (or closed before it even arrived): never answered, never failed.
        others = [r.outcome for r in upstream.sim.requests if r.model == "healthy/b:free"]
        assert others in ([], ["client_closed"]), others


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize("limit", ["daily quota", "minute limit"])
async def test_an_account_limit_lets_the_requests_in_flight_finish(
    upstream: Upstream, limit: str, mode: str, stream: bool
) -> None:
    """A per-day or per-minute 429 for one contender: the one already in flight beside it was
    accepted (and counted), so it still answers; no other is started, and the account is held
    for the next call, which sends nothing."""
    (fault,) = [f for f in FAULTS if f.name == limit]
    failures = failures_seen()
    # Both in flight at once; healthy/b's first token waits until the limit was reported.
    with released_on_failure("faulty/a:free") as gate:
        faulty = ModelScript("faulty/a:free", context_length=1000, **fault.script)
        healthy = fast(
            "healthy/b:free", "fallback answer", context_length=2000, hold_first_token=gate
        )
        spare = fast("spare/c:free", "never asked", context_length=3000)
        upstream.sim.set_models([faulty, healthy, spare])
        try:
            assert await call(mode, stream, race_width=2, **NO_STALL) == "fallback answer"
        finally:
            seen = failures.stop()
    assert seen == [("faulty/a:free", *fault.kind)]
    assert upstream.sim.calls_for("spare/c:free") == 0
    sent = len(upstream.sim.requests)
    await failure_of(mode, stream, litellm.RateLimitError)
    assert len(upstream.sim.requests) == sent
    await nothing_left_open(upstream)


# What aider retries, looking its rule up by the error's exact class.
RETRIED_BY_CLASS = {
    litellm.RateLimitError,
    litellm.ServiceUnavailableError,
    litellm.Timeout,
    litellm.APIConnectionError,
    litellm.InternalServerError,
}


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (FAULTS[0].script, litellm.RateLimitError),  # the day's quota is used up
        ({"status": 503}, litellm.ServiceUnavailableError),  # every model tried failed
        ({"stall_before_first_token": True}, litellm.Timeout),  # every model tried was slow
        # The answer broke off and no other model could carry it on (aider retried these,
        # printing the partial answer again and spending up to 6 requests each time).
        ({"chunks": ("a", "b", "c"), "drop_after_chunks": 1}, litellm.ServiceUnavailableError),
        ({"chunks": ("a", "b", "c"), "stall_after_chunks": 1}, litellm.Timeout),
    ],
    ids=["daily-quota", "all-failed", "all-slow", "broke-off", "went-quiet"],
)
async def test_an_error_a_retry_cannot_help_is_not_retried_by_exact_class(
    upstream: Upstream, mode: str, stream: bool, script: dict[str, Any], expected: type
) -> None:
    """After freerouter has tried the models (or the day is used up), a caller that retries
    by exact class, as aider does, shows the error instead of spending the quota again; every
    isinstance check still sees litellm's class."""
    upstream.sim.set_models([ModelScript("a/a:free", **script)])
    error = await failure_of(mode, stream, expected)
    assert type(error) not in RETRIED_BY_CLASS, type(error)
    await nothing_left_open(upstream)


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
async def test_every_model_cooling_past_the_wait_is_not_retried_by_exact_class(
    upstream: Upstream, mode: str, stream: bool
) -> None:
    """Every model cooling for longer than freerouter waits: nothing is sent, and a caller
    that retries by exact class shows the error (when it names the wait) rather than retrying
    until a model is back and spending the quota on it unasked."""
    upstream.sim.set_models([ModelScript("a/a:free")])
    cool("a/a:free", 600)
    error = await failure_of(mode, stream, litellm.ServiceUnavailableError)
    assert "cooling" in str(error)
    assert type(error) not in RETRIED_BY_CLASS, type(error)
    assert upstream.sim.requests == []


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
async def test_a_prompt_no_context_window_holds_is_a_context_window_error(
    upstream: Upstream, mode: str, stream: bool
) -> None:
    """Too long for every free model: litellm's ContextWindowExceededError (aider then offers
    /drop and /clear; a proxy's context_window_fallbacks act on it), with nothing sent."""
    upstream.sim.set_models([ModelScript("a/a:free", context_length=1000)])
    long = [{"role": "user", "content": "word " * 4000}]
    error = await failure_of(mode, stream, litellm.ContextWindowExceededError, messages=long)
    assert "context window of" in str(error)
    assert upstream.sim.requests == []


class failures_seen:
    """The router's own account of each failed contender: (model, kind, scope, cooldown)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, float | None]] = []
        self.reasons: list[str] = []
        self.stop_listening = events.subscribe(self._on_event)

    def _on_event(self, event: events.Event) -> None:
        if isinstance(event, events.ContenderFailed):
            self.seen.append((event.model, event.kind, event.scope, event.cooldown))
            self.reasons.append(event.reason)

    def stop(self) -> list[tuple[str, str, str, float | None]]:
        self.stop_listening()
        return self.seen


AFTER_TOKEN = [f for f in FAULTS if "after token" in f.name]


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize("fault", AFTER_TOKEN, ids=[f.name for f in AFTER_TOKEN])
async def test_fault_after_token_is_carried_on(
    upstream: Upstream, fault: Fault, mode: str, stream: bool
) -> None:
    """With a healthy model beside it, an answer that breaks off after its first token still
    arrives whole, exactly once, and nothing is left open."""
    failures = failures_seen()
    # The healthy model races too, but its first token waits until the faulty one has won and
    # broken off: however late the faulty one runs, it wins first.
    with released_on_failure("faulty/a:free") as gate:
        faulty = ModelScript("faulty/a:free", context_length=1000, **fault.script)
        healthy = ModelScript(
            "healthy/b:free", chunks=("one", " two"), hold_first_token=gate, context_length=2000
        )
        upstream.sim.set_models([faulty, healthy])
        try:
            assert await call(mode, stream, **NO_STALL) == "one two"
        finally:
            seen = failures.stop()
    assert upstream.sim.calls_for("faulty/a:free") == 1
    assert seen == [("faulty/a:free", *fault.kind)]
    await nothing_left_open(upstream)


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
async def test_models_down_at_start_is_a_clear_error(
    upstream: Upstream, mode: str, stream: bool
) -> None:
    """When /models fails on first use, the call fails saying so, with the status, and no
    model is asked anything."""
    upstream.sim.set_models([fast("a/a:free", "never sent")])
    upstream.sim.models_status = 503
    error = await failure_of(mode, stream, litellm.ServiceUnavailableError)
    assert "could not fetch the free-model list" in str(error), str(error)
    assert "answered 503 (No instances available)" in str(error), str(error)
    assert upstream.sim.requests == []
    await nothing_left_open(upstream)


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
async def test_models_down_at_refresh_keeps_serving(
    upstream: Upstream, mode: str, stream: bool
) -> None:
    """When /models fails at refresh, the last good list keeps serving."""

    upstream.sim.set_models([fast("a/a:free", "still here")])
    assert await call(mode, stream) == "still here"
    upstream.sim.models_status = 503
    router = env_router()
    refreshed = await asyncio.wrap_future(engine.get_engine().submit(router.catalog.refresh()))
    assert refreshed is False
    assert upstream.sim.models_fetches == 2
    assert await call(mode, stream) == "still here"
    await nothing_left_open(upstream)


def refused_base() -> str:
    """An endpoint on this machine where nothing listens: a real connection refusal."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v1"


NO_SUCH_HOST = "no-such-host.invalid"


@pytest.fixture
def no_such_host(monkeypatch: pytest.MonkeyPatch) -> str:
    """A name the resolver fails to resolve, as it would with no such domain: the real
    connector and resolver run, and no query leaves the machine (tests stay off the network)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == NO_SUCH_HOST:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    # aiohttp resolves through the thread pool's socket.getaddrinfo, unless aiodns is there.
    assert aiohttp.resolver.DefaultResolver is aiohttp.resolver.ThreadedResolver
    return NO_SUCH_HOST


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize("where", ["dns", "refused"])
async def test_unreachable_endpoint_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, no_such_host: str, where: str, mode: str, stream: bool
) -> None:
    """A name that does not resolve or a port where nothing listens fails the call with
    'cannot reach', not a hang, and leaves nothing open."""
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-test")
    base = refused_base() if where == "refused" else f"http://{no_such_host}/api/v1"
    error = await failure_of(mode, stream, litellm.ServiceUnavailableError, api_base=base)
    assert f"cannot reach {base}/models" in str(error), str(error)
    if where == "dns":
        assert "Name or service not known" in str(error), str(error)
    assert request_tasks() == [] and in_use_connections() == 0


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
async def test_an_endpoint_gone_after_the_model_list_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, mode: str, stream: bool
) -> None:
    """The model list came, then the endpoint went away (its connections with it): the next
    call fails saying it cannot reach it, naming each model it tried, and leaves nothing
    open."""
    sim = Simulator([fast("a/a:free", "first"), fast("b/b:free", "first", delay=0.05)])
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-test")
    with SimulatorThread(sim) as thread:
        monkeypatch.setenv("OPENROUTER_API_BASE", thread.url)
        assert await call(mode, stream) == "first"
        thread.call(lambda: sim.wait_idle(5))
    error = await failure_of(mode, stream, litellm.ServiceUnavailableError)
    for model in ("a/a:free", "b/b:free"):
        assert f"{model}: network (cannot reach" in str(error), str(error)
    assert request_tasks() == [] and in_use_connections() == 0


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
async def test_garbage_lines_among_the_tokens_are_skipped(
    upstream: Upstream, mode: str, stream: bool
) -> None:
    """Malformed lines before the first token and between every two tokens (bad JSON, empty
    data, unknown events, stray bytes) are passed over: the answer arrives whole and exact
    from that model, and nothing counts as a failure."""
    upstream.sim.set_models(
        [
            ModelScript(
                "noisy/a:free",
                chunks=("one", " two", " three", " four"),
                malformed_lines=4,
                malformed_between=True,
            )
        ]
    )
    failures = failures_seen()
    try:
        assert await call(mode, stream) == "one two three four"
    finally:
        seen = failures.stop()
    assert seen == []
    assert upstream.sim.called_models() == ["noisy/a:free"]
    await nothing_left_open(upstream)


# --- waiting for a model that returns ------------------------------------------------------


class waits_seen:
    """The seconds of each wait the router announced (events.Waiting), and for how many
    models (0: the account's minute); ``then`` runs as each is announced, before the wait."""

    def __init__(self, then: Callable[[], None] | None = None) -> None:
        self.seconds: list[float] = []
        self.cooling: list[int] = []
        self.started = threading.Event()
        self.then = then
        self.stop = events.subscribe(self._on_event)

    def _on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Waiting):
            self.seconds.append(event.seconds)
            self.cooling.append(event.cooling)
            if self.then is not None:
                self.then()
            self.started.set()


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
async def test_a_request_waits_for_a_cooling_model_that_returns_soon(
    upstream: Upstream, mode: str, stream: bool
) -> None:
    """Every model cooling, the first back within FREEROUTER_WAIT_FOR_MODEL: the request says
    it waits, waits, and is answered, instead of failing."""
    upstream.sim.set_models([fast("only/a:free", "worth the wait")])
    cooling = cool_once_listed("only/a:free", 0.4)
    waits = waits_seen()
    try:
        assert await call(mode, stream) == "worth the wait"
    finally:
        waits.stop()
        cooling()
    assert len(waits.seconds) == 1 and 0 < waits.seconds[0] <= 0.4
    assert upstream.sim.calls_for("only/a:free") == 1
    await nothing_left_open(upstream)


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
# 20 s is within the default wait of 30 s, so only wait_for_model=0 makes it fail at once; and
# long enough that the model is still cooling however slowly the call gets to it (a 0.4 s
# cooldown ran out before a call on a loaded machine got there).
@pytest.mark.parametrize(("cooling", "extra"), [(60.0, {}), (20.0, {"wait_for_model": 0})])
async def test_a_request_fails_at_once_when_no_model_returns_in_time(
    upstream: Upstream, mode: str, stream: bool, cooling: float, extra: dict[str, Any]
) -> None:
    """A cooldown longer than the request waits (30 s by default; 0: never waits) fails the
    call at once, without a request upstream, saying when the first model returns and why
    the request did not wait for it."""
    upstream.sim.set_models([fast("only/a:free", "never sent")])
    cool("only/a:free", cooling)
    waits = waits_seen()
    began = time.monotonic()
    try:
        error = await failure_of(mode, stream, litellm.ServiceUnavailableError, **extra)
    finally:
        waits.stop()
    # Not a speed goal: waiting at all would take the whole 30 s wait_for_model.
    assert time.monotonic() - began < 10, "the call waited for a model"
    assert "all 1 free models that can serve this request are cooling down" in str(error)
    assert "later than a request waits (wait_for_model, FREEROUTER_WAIT_FOR_MODEL" in str(error), (
        str(error)
    )
    assert waits.seconds == [] and upstream.sim.requests == []
    await nothing_left_open(upstream)


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
async def test_a_race_whose_models_all_failed_waits_for_one_that_returns(
    upstream: Upstream, mode: str, stream: bool
) -> None:
    """The only ready model fails; another, cooling, returns within the wait: the request waits
    for it and is answered by it. The failed one is not asked again."""
    upstream.sim.set_models(
        [
            ModelScript("broken/a:free", context_length=1000, status=503),
            fast("back/b:free", "answered after the wait", context_length=2000),
        ]
    )
    # Long enough to outlast broken/a's 503 on a loaded machine, too.
    cooling = cool_once_listed("back/b:free", 1.0)
    waits = waits_seen()
    failures = failures_seen()
    try:
        assert await call(mode, stream) == "answered after the wait"
    finally:
        waits.stop()
        seen = failures.stop()
        cooling()
    assert seen == [("broken/a:free", "server", "model", 90.0)]
    assert len(waits.seconds) == 1
    assert upstream.sim.called_models() == ["broken/a:free", "back/b:free"]
    await nothing_left_open(upstream)


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
async def test_a_model_that_failed_a_request_is_never_asked_again_by_it(
    upstream: Upstream, mode: str, stream: bool
) -> None:
    """A model whose cooldown after failing would end within the wait is not waited for: the
    same request never spends quota on a model that has just failed it."""
    upstream.sim.set_models([ModelScript("broken/a:free", status=503)])
    waits = waits_seen()
    try:
        await failure_of(mode, stream, litellm.ServiceUnavailableError, cooldown_rate_limit=0.2)
    finally:
        waits.stop()
    assert waits.seconds == []
    assert upstream.sim.calls_for("broken/a:free") == 1
    await nothing_left_open(upstream)


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
async def test_calls_held_for_the_accounts_minute_wait_when_it_frees_in_time(
    upstream: Upstream, mode: str, stream: bool
) -> None:
    """The account's free requests a minute are used up, and the 429 says they free in 1 s:
    the request waits for the minute (not failing with 'try again in 1 s') and then asks the
    model again, which answers this time."""
    minute = {
        "status": 429,
        "error_message": "Rate limit exceeded: free-models-per-min. ",
        "error_headers": {"Retry-After": "1"},
    }
    upstream.sim.set_models([ModelScript("only/a:free", **minute)])
    # The moment the wait is announced, the minute has freed upstream.
    waits = waits_seen(then=lambda: upstream.sim.set_models([fast("only/a:free", "freed")]))
    failures = failures_seen()
    try:
        assert await call(mode, stream) == "freed"
    finally:
        waits.stop()
        seen = failures.stop()
    assert seen == [("only/a:free", "minute_limit", "account", None)]
    assert waits.cooling == [0] and 0 < waits.seconds[0] <= 1
    assert upstream.sim.calls_for("only/a:free") == 2
    await nothing_left_open(upstream)


async def test_a_request_cancelled_while_it_waits_leaves_nothing_behind(
    upstream: Upstream,
) -> None:
    """A caller that gives up while its request waits for a model: the wait ends with it,
    nothing was sent, no task is left."""
    upstream.sim.set_models([fast("only/a:free", "never sent")])
    cool("only/a:free", 20.0)
    waits = waits_seen()
    try:
        request = asyncio.ensure_future(call("async", True))
        assert await asyncio.to_thread(waits.started.wait, 10)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    finally:
        waits.stop()
    assert upstream.sim.requests == []
    await nothing_left_open(upstream)


# --- property tests of the request-requirement logic --------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=200), min_size=1, max_size=6), st.integers(0, 5000))
def test_bigger_prompts_never_fit_more_models(texts: list[str], extra: int) -> None:
    """Adding text to a prompt never makes a model that could not serve it able to."""
    models = [FreeModel(f"m/{i}:free", context_length=c) for i, c in enumerate([50, 500, 5000])]
    small = {"messages": [{"role": "user", "content": t} for t in texts]}
    big = {"messages": [*small["messages"], {"role": "user", "content": "x" * extra}]}
    fit_small = {m.id for m in models if requirements_of(small).unmet_by(m) is None}
    fit_big = {m.id for m in models if requirements_of(big).unmet_by(m) is None}
    assert fit_big <= fit_small


# --- cancellation under load ---------------------------------------------------------------


# How each of the 1000 requests ends: read to the end, or given up by its caller after some
# chunks (``aclose`` on the stream; the task reading it cancelled, as the proxy does when its
# client hangs up; a sync reader closing it, as aider's path), or before any chunk arrived.
ENDINGS = ["finish", "finish-sync", "aclose", "cancel-task", "close-sync", "timeout"]
ENDING_WEIGHTS = [3, 1, 3, 3, 1, 2]


def stall_when_abandoned(script: ModelScript, body: dict[str, Any]) -> ModelScript:
    """A request its caller will give up stalls after 20 chunks until its client closes the
    connection: only a real close can end it, and a leaked one is still open at the end."""
    if "abandon" in str(body.get("messages")):
        return dataclasses.replace(script, stall_after_chunks=20)
    return script


async def test_thousand_requests_with_random_aborts_leave_nothing_open(upstream: Upstream) -> None:
    """1000 streamed requests, most given up at random points in four ways, leave no upstream
    stream open: every stream of a given-up request was closed by our side."""
    rng = random.Random(1234)
    upstream.sim.set_models(
        [
            ModelScript(
                f"m/{i}:free",
                context_length=1000 + i,
                first_token_delay=0.01 * i,
                chunks=tuple(f" w{j}" for j in range(30)),
                chunk_delay=0.002,
            )
            for i in range(4)
        ]
    )
    upstream.sim.per_request = stall_when_abandoned
    limit = asyncio.Semaphore(100)
    ended: Counter[str] = Counter()

    def sync_read(messages: list[dict[str, str]], stop_after: int | None) -> str:
        response = litellm.completion(model="freerouter/auto", stream=True, messages=messages)
        for seen, _ in enumerate(response, 1):
            if stop_after is not None and seen > stop_after:
                response.completion_stream.close()
                return "close-sync"
        return "finish-sync"

    async def read(response: Any, stop_after: int | None, got: asyncio.Event) -> None:
        seen = 0
        async for _ in response:
            seen += 1
            if stop_after is not None and seen > stop_after:
                got.set()
                await asyncio.Event().wait()  # held mid-stream until cancelled

    async def one(i: int) -> None:
        ending = rng.choices(ENDINGS, ENDING_WEIGHTS)[0]
        stop_after = None if ending.startswith("finish") else rng.choice([0, 1, 5, 15])
        word = "finish" if ending.startswith("finish") else "abandon"
        messages = [{"role": "user", "content": f"r{i} {word}"}]
        async with limit:
            if ending.endswith("-sync"):
                ended[await asyncio.to_thread(sync_read, messages, stop_after)] += 1
                return
            call = litellm.acompletion(model="freerouter/auto", stream=True, messages=messages)
            if ending == "timeout":
                try:
                    response = await asyncio.wait_for(call, rng.choice([0.001, 0.005, 0.02]))
                except asyncio.TimeoutError:
                    ended["timeout"] += 1
                    return
                await response.completion_stream.aclose()  # the response came first
                ended["timeout-too-late"] += 1
                return
            response = await call
            if ending == "cancel-task":
                got = asyncio.Event()
                reader = asyncio.ensure_future(read(response, stop_after, got))
                waiter = asyncio.ensure_future(got.wait())
                await asyncio.wait([reader, waiter], return_when=asyncio.FIRST_COMPLETED)
                assert got.is_set(), "the answer ended before the reader gave up"
                reader.cancel()
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                ended["cancel-task"] += 1
                return
            seen = 0
            async for _ in response:
                seen += 1
                if stop_after is not None and seen > stop_after:
                    await response.completion_stream.aclose()
                    ended["aclose"] += 1
                    return
            ended["finish"] += 1

    await asyncio.gather(*(one(i) for i in range(1000)))
    assert sum(ended.values()) == 1000, ended
    assert all(ended[e] >= 40 for e in ENDINGS), ended  # every way of ending really happened
    await nothing_left_open(upstream, 10)
    abandoned = [r for r in upstream.sim.requests if "abandon" in str(r.body.get("messages"))]
    # Every upstream stream of a given-up request ended because our side closed it: none ran
    # out, none is still stalled.
    assert {r.outcome for r in abandoned} == {"client_closed"}, Counter(
        r.outcome for r in abandoned
    )
    assert len(abandoned) >= ended["aclose"] + ended["cancel-task"] + ended["close-sync"]


def test_many_keys_keep_a_bounded_number_of_routers_and_open_files(upstream: Upstream) -> None:
    """A proxy's clients may each send an api_key of their own: each key's router (its state
    store, its refresh task) is kept only while it is among the recently used, so open files
    stay bounded instead of growing by a store per key until the process runs out."""
    import os

    from litellm_freerouter import provider

    upstream.sim.set_models([fast("k/a:free", "hi")])
    upstream.sim.api_key = None  # any key is welcome
    keys = [f"sk-or-v1-client-{i}" for i in range(provider.MAX_ROUTERS * 2)]

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    def ask_with(key: str) -> None:
        response = litellm.completion(
            model="freerouter/auto", messages=[{"role": "user", "content": "hi"}], api_key=key
        )
        assert response.choices[0].message.content == "hi"

    for key in keys[: provider.MAX_ROUTERS]:
        ask_with(key)
    full = open_files()
    for key in keys[provider.MAX_ROUTERS :]:
        ask_with(key)
    routers = engine.get_engine().state["routers"]
    assert len(routers) == provider.MAX_ROUTERS
    # Another MAX_ROUTERS keys opened as many stores as the first did: now closed as they left.
    assert open_files() <= full + 4
    assert not provider._leases  # every request gave its router back
    ask_with(keys[0])  # an evicted key's router comes back from its store


def test_a_router_in_use_is_never_closed_to_make_room(upstream: Upstream) -> None:
    """Eviction skips a router a request is using (closing its store mid-answer would lose
    what the race learns): the next idle one goes instead."""
    from litellm_freerouter import provider
    from litellm_freerouter.config import load_settings

    busy = load_settings(api_key="sk-or-v1-busy")
    with provider._leased(busy) as router:
        for i in range(provider.MAX_ROUTERS):
            provider._router(load_settings(api_key=f"sk-or-v1-other-{i}"))
        routers = engine.get_engine().state["routers"]
        assert routers[(busy.base, busy.key_id)] is router
        assert len(routers) == provider.MAX_ROUTERS
        assert (busy.base, load_settings(api_key="sk-or-v1-other-0").key_id) not in routers
    assert not provider._leases


def test_a_lease_given_back_while_the_router_lock_is_held_does_not_deadlock(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request's lease is given back in a ``finally``, which the garbage collector runs in
    whatever thread it collects in: a request whose loop was closed under it is finalised
    there. Cyclic collection can start at any allocation, also in a thread that is inside
    ``_router`` opening a store: giving the lease back there must not wait for that very
    thread."""
    from litellm_freerouter import provider, state
    from litellm_freerouter.config import load_settings

    lease = provider._leased(load_settings(api_key="sk-or-v1-collected"))
    lease.__enter__()
    original = state.open_store

    def open_store(settings: Any) -> Any:
        lease.__exit__(None, None, None)  # as a collected request's finally would, here
        return original(settings)

    monkeypatch.setattr(provider.state, "open_store", open_store)
    done = threading.Event()

    def create() -> None:
        provider._router(load_settings(api_key="sk-or-v1-new"))
        done.set()

    thread = threading.Thread(target=create, daemon=True)
    thread.start()
    if not done.wait(5):
        provider._routers_lock.release()  # let the stuck thread go, for the tests after this
        thread.join(5)
        pytest.fail("giving a lease back inside _router deadlocked on _routers_lock")
    assert not provider._leases


def test_a_router_whose_state_lives_only_in_memory_is_never_closed_to_make_room(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the state directory unusable, a router's memory holds the only copy of its key's
    cooldowns: closing it to make room would ask a model known to be refusing again."""
    from litellm_freerouter import provider
    from litellm_freerouter.config import load_settings

    monkeypatch.setenv("FREEROUTER_STATE_DIR", "/dev/null/state")
    monkeypatch.setattr(provider, "MAX_ROUTERS", 2)
    first = provider._router(load_settings(api_key="sk-or-v1-first"))
    first.health.cool("k/a:free", 600, "rate_limited")
    for i in range(3):
        provider._router(load_settings(api_key=f"sk-or-v1-other-{i}"))
    assert provider._router(load_settings(api_key="sk-or-v1-first")) is first
    assert first.health.cooling_for("k/a:free") > 590


def test_a_slow_store_for_one_key_holds_up_no_other_keys_requests(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a key's state can wait seconds (a state file another process holds); it is done
    outside the routers' lock, so a request on another key is not held up meanwhile, and two
    requests racing to make the same key's router end up sharing one."""
    from litellm_freerouter import provider, state
    from litellm_freerouter.config import load_settings

    known = load_settings(api_key="sk-or-v1-known")
    router = provider._router(known)
    opening, release = threading.Event(), threading.Event()
    real_open = state.open_store

    def slow_open(settings: Any) -> Any:
        opening.set()
        assert release.wait(10)
        return real_open(settings)

    monkeypatch.setattr(state, "open_store", slow_open)
    slow = load_settings(api_key="sk-or-v1-slow")
    made: list[Any] = []
    threads = [threading.Thread(target=lambda: made.append(provider._router(slow))) for _ in "ab"]
    for thread in threads:
        thread.start()
    assert opening.wait(10)
    try:
        assert provider._router(known) is router  # while the other key's store is opening
    finally:
        release.set()
        for thread in threads:
            thread.join(10)
    assert len(made) == 2 and made[0] is made[1]
