"""The reliability suite: every fault class, streamed and not, sync and async; then load.

For each fault the caller must get the right outcome (a clean fallback to a healthy model, or a
clear error of the right class), and afterwards no upstream stream may be open and no request
task may be pending, on the engine or on the caller's loop.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
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
from litellm_freerouter.requirements import capable, requirements_of
from litellm_freerouter.simulator import ModelScript

from .conftest import Upstream, env_router, fast, request_tasks


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


# A stall before the first token is only classified when it is met alone: raced beside a
# healthy model, it simply loses.
ALONE = {"race_width": 1}
PER_DAY = {"headers": {"X-RateLimit-Reset": "4102444800000"}}
FAULTS = [
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
    ),
    Fault(
        "minute limit",
        {"status": 429, "error_message": "Rate limit exceeded: free-models-per-min"},
        litellm.RateLimitError,
        "a minute",
        kind=("minute_limit", "account", None),
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
    ),
    Fault(
        "reset after token",
        {"drop_after_chunks": 1, "chunks": ("one", " two")},
        litellm.ServiceUnavailableError,
        "connection lost",
        kind=("network", "model", 90.0),
    ),
    Fault(
        "error chunk after token",
        {"error_chunk_after": 1, "chunks": ("one", " two"), "error_message": "provider crashed"},
        litellm.ServiceUnavailableError,
        "provider crashed",
        kind=("server", "model", 90.0),
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
async def test_fault(upstream: Upstream, fault: Fault, mode: str, stream: bool) -> None:
    """Each fault gives a clean fallback or its own clear error, and leaves nothing open."""
    faulty = ModelScript("faulty/a:free", context_length=1000, **fault.script)
    healthy = fast("healthy/b:free", "fallback answer", delay=0.25, context_length=2000)
    upstream.sim.set_models(
        [faulty, healthy] if fault.error is None or "after" not in fault.name else [faulty]
    )
    failures = failures_seen()
    try:
        if fault.error is None:
            assert await call(mode, stream, **fault.extra) == "fallback answer"
            assert upstream.sim.calls_for("faulty/a:free") == 1
        else:
            error = await failure_of(mode, stream, fault.error, **fault.extra)
            assert fault.says in str(error)
    finally:
        seen = failures.stop()
    assert seen == [("faulty/a:free", *fault.kind)]
    await asyncio.to_thread(upstream.wait_idle, 5)
    assert request_tasks() == []


class failures_seen:
    """The router's own account of each failed contender: (model, kind, scope, cooldown)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, float | None]] = []
        self.stop_listening = events.subscribe(self._on_event)

    def _on_event(self, event: events.Event) -> None:
        if isinstance(event, events.ContenderFailed):
            self.seen.append((event.model, event.kind, event.scope, event.cooldown))

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
    faulty = ModelScript("faulty/a:free", context_length=1000, **fault.script)
    healthy = ModelScript(
        "healthy/b:free", chunks=("one", " two"), first_token_delay=0.25, context_length=2000
    )
    upstream.sim.set_models([faulty, healthy])
    failures = failures_seen()
    try:
        assert await call(mode, stream) == "one two"
    finally:
        seen = failures.stop()
    assert upstream.sim.calls_for("faulty/a:free") == 1
    assert seen == [("faulty/a:free", *fault.kind)]
    await asyncio.to_thread(upstream.wait_idle, 5)
    assert request_tasks() == []


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
    await asyncio.to_thread(upstream.wait_idle, 5)
    assert request_tasks() == []


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
    await asyncio.to_thread(upstream.wait_idle, 5)
    assert request_tasks() == []


def refused_base() -> str:
    """An endpoint on this machine where nothing listens: a real connection refusal."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v1"


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize("where", ["dns", "refused"])
async def test_unreachable_endpoint_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, where: str, mode: str, stream: bool
) -> None:
    """A name that does not resolve (simulated: tests stay off the network) or a port where
    nothing listens (real) fails the call with 'cannot reach', not a hang."""
    from aioresponses import aioresponses

    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-test")
    if where == "refused":
        base = refused_base()
        error = await failure_of(mode, stream, litellm.ServiceUnavailableError, api_base=base)
    else:
        base = "http://no-such-host.invalid/api/v1"
        dns = aiohttp.ClientConnectorError(
            aiohttp.client_reqrep.ConnectionKey(
                "no-such-host.invalid", 80, False, True, None, None, None
            ),
            OSError(-2, "Name or service not known"),
        )
        with aioresponses() as mocked:
            mocked.get(f"{base}/models", exception=dns, repeat=True)
            error = await failure_of(mode, stream, litellm.ServiceUnavailableError, api_base=base)
    assert f"cannot reach {base}/models" in str(error)
    assert request_tasks() == []


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


def cool(model: str, seconds: float) -> None:
    """Bench ``model`` for ``seconds`` in the router's shared state, as an earlier failure of
    another request (or another process) would."""

    env_router().health.cool(model, seconds, "slow")


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
async def test_a_request_waits_for_a_cooling_model_that_returns_soon(
    upstream: Upstream, mode: str, stream: bool
) -> None:
    """Every model cooling, the first back within FREEROUTER_WAIT_FOR_MODEL: the request says
    it waits, waits, and is answered, instead of failing."""
    upstream.sim.set_models([fast("only/a:free", "worth the wait")])
    cool("only/a:free", 0.4)
    waits = waits_seen()
    try:
        assert await call(mode, stream) == "worth the wait"
    finally:
        waits.stop()
    assert len(waits.seconds) == 1 and 0 < waits.seconds[0] <= 0.4
    assert upstream.sim.calls_for("only/a:free") == 1
    await asyncio.to_thread(upstream.wait_idle, 5)
    assert request_tasks() == []


@pytest.mark.parametrize(("mode", "stream"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize(("cooling", "extra"), [(60.0, {}), (0.4, {"wait_for_model": 0})])
async def test_a_request_fails_at_once_when_no_model_returns_in_time(
    upstream: Upstream, mode: str, stream: bool, cooling: float, extra: dict[str, Any]
) -> None:
    """A cooldown longer than the request waits (30 s by default; 0: never waits) fails the
    call at once, without a request upstream, saying when the first model returns and why
    the request did not wait for it."""
    upstream.sim.set_models([fast("only/a:free", "never sent")])
    cool("only/a:free", cooling)
    waits = waits_seen()
    try:
        error = await failure_of(mode, stream, litellm.ServiceUnavailableError, **extra)
    finally:
        waits.stop()
    assert "all 1 free models that can serve this request are cooling down" in str(error)
    assert "later than a request waits (FREEROUTER_WAIT_FOR_MODEL" in str(error), str(error)
    assert waits.seconds == [] and upstream.sim.requests == []
    assert request_tasks() == []


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
    cool("back/b:free", 0.4)
    waits = waits_seen()
    failures = failures_seen()
    try:
        assert await call(mode, stream) == "answered after the wait"
    finally:
        waits.stop()
        seen = failures.stop()
    assert seen == [("broken/a:free", "server", "model", 90.0)]
    assert len(waits.seconds) == 1
    assert upstream.sim.called_models() == ["broken/a:free", "back/b:free"]
    await asyncio.to_thread(upstream.wait_idle, 5)
    assert request_tasks() == []


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
    assert request_tasks() == []


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
    await asyncio.to_thread(upstream.wait_idle, 5)
    assert request_tasks() == []


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
    assert request_tasks() == []


# --- property tests of the request-requirement logic --------------------------------------

PARAMS = st.frozensets(
    st.sampled_from(["tools", "response_format", "structured_outputs", "max_tokens", "temperature"])
)
MODELS = st.lists(
    st.builds(
        FreeModel,
        id=st.from_regex(r"[a-z]{1,5}/[a-z]{1,5}:free", fullmatch=True),
        context_length=st.one_of(st.none(), st.integers(1, 200000)),
        max_completion_tokens=st.one_of(st.none(), st.integers(1, 50000)),
        supported_parameters=PARAMS,
        input_modalities=st.frozensets(st.sampled_from(["text", "image", "audio"])),
    ),
    max_size=8,
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(JSONISH, MODELS)
def test_requirements_never_crash_and_never_admit_an_unfit_model(
    body: Any, models: list[FreeModel]
) -> None:
    """Any body shape is read without crashing; every admitted model meets every need."""
    request = body if isinstance(body, dict) else {"messages": body}
    needs = requirements_of(request)
    try:
        ok = capable(models, needs)
    except Exception as error:  # only the documented "nothing can serve it" error is allowed
        assert type(error).__name__ == "NoCapableModel"
        assert models and all(needs.unmet_by(m) for m in models)
        return
    for model in ok:
        assert needs.unmet_by(model) is None
        if needs.images:
            assert "image" in model.input_modalities
        if needs.tools and model.supported_parameters:
            assert "tools" in model.supported_parameters


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


def in_use_connections() -> int:
    """Connections handed out and not got back (private but telling), by the engine's pool and,
    called from a coroutine, by the pool of the caller's loop, where async requests race."""

    def acquired(session: aiohttp.ClientSession) -> int:
        return len(getattr(session.connector, "_acquired", ()))

    async def count() -> int:
        return acquired(engine.session())

    on_engine = engine.get_engine().submit(count()).result(5)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return on_engine
    return on_engine + acquired(engine.session())


async def test_thousand_requests_with_random_aborts_leave_nothing_open(upstream: Upstream) -> None:
    """1000 streamed requests, many abandoned at random points, leave zero upstream streams."""
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
    limit = asyncio.Semaphore(100)
    finished = aborted = 0

    async def one(i: int) -> None:
        nonlocal finished, aborted
        async with limit:
            stop_after = rng.choice([None, 0, 1, 5, 15])
            try:
                response = await asyncio.wait_for(
                    litellm.acompletion(
                        model="freerouter/auto",
                        stream=True,
                        messages=[{"role": "user", "content": f"r{i}"}],
                    ),
                    timeout=rng.choice([0.001, 30, 30, 30]),
                )
                seen = 0
                async for _ in response:
                    seen += 1
                    if stop_after is not None and seen > stop_after:
                        await response.completion_stream.aclose()
                        aborted += 1
                        return
                finished += 1
            except asyncio.TimeoutError:
                aborted += 1

    await asyncio.gather(*(one(i) for i in range(1000)))
    assert finished + aborted == 1000 and finished > 100 and aborted > 100
    await asyncio.to_thread(upstream.wait_idle, 10)
    assert upstream.sim.open_streams == 0
    assert request_tasks() == []
    assert in_use_connections() == 0
