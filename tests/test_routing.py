"""Routing that beats the seed: capable models only, errors by scope, quota, learned speed."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import litellm
import pytest

from litellm_freerouter import engine, events
from litellm_freerouter import router as router_module
from litellm_freerouter.catalog import FreeModel
from litellm_freerouter.config import Settings
from litellm_freerouter.errors import Failure
from litellm_freerouter.health import Health
from litellm_freerouter.router import HEDGE_FLOOR, Router, conversation_key
from litellm_freerouter.simulator import ModelScript

from .conftest import Upstream, cool_once_listed, env_router, fast

MESSAGES = [{"role": "user", "content": "Say hello"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
TEXT_ONLY = ("max_tokens", "temperature")


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def ask(**kwargs: Any) -> Any:
    return litellm.completion(
        model="freerouter/auto", messages=kwargs.pop("messages", MESSAGES), **kwargs
    )


def test_tools_go_only_to_models_that_support_them(upstream: Upstream) -> None:
    """A request with tools races only models listing 'tools' in supported_parameters."""
    upstream.sim.set_models(
        [
            fast("plain/a:free", "no tools", context_length=1000, supported_parameters=TEXT_ONLY),
            fast("tools/b:free", "with tools", context_length=2000, delay=0.2),
        ]
    )
    assert ask(tools=TOOLS).choices[0].message.content == "with tools"
    assert upstream.sim.called_models() == ["tools/b:free"]


def test_images_go_only_to_vision_models(upstream: Upstream) -> None:
    """An image in the prompt races only models with image input."""
    upstream.sim.set_models(
        [
            fast("text/a:free", "blind", context_length=1000),
            fast(
                "eyes/b:free",
                "I see",
                context_length=2000,
                delay=0.2,
                input_modalities=("text", "image"),
            ),
        ]
    )
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    ]
    assert ask(messages=image).choices[0].message.content == "I see"
    assert upstream.sim.called_models() == ["eyes/b:free"]


def test_a_pdf_goes_only_to_models_that_read_files_themselves(upstream: Upstream) -> None:
    """For a model that cannot read a file, OpenRouter parses it, maybe with its billed OCR
    engine: a file part races only models with file input, and none is a clear error."""
    upstream.sim.set_models(
        [
            fast("text/a:free", "blind", context_length=1000),
            fast("docs/b:free", "read it", delay=0.2, input_modalities=("text", "file")),
        ]
    )
    pdf = {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}
    document = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "sum up"}, {"type": "file", "file": pdf}],
        }
    ]
    assert ask(messages=document).choices[0].message.content == "read it"
    assert upstream.sim.called_models() == ["docs/b:free"]


def test_a_pdf_no_model_reads_itself_is_refused_unsent(upstream: Upstream) -> None:
    upstream.sim.set_models([fast("text/a:free", "blind")])
    document = [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f-1"}}]}]
    with pytest.raises(litellm.BadRequestError, match="it needs file input"):
        ask(messages=document)
    assert upstream.sim.requests == []


@pytest.mark.parametrize(
    ("status", "says"), [(413, "Payload Too Large"), (431, "Request Header Fields Too Large")]
)
def test_a_request_too_large_for_openrouter_asks_no_other_model(
    upstream: Upstream, status: int, says: str
) -> None:
    """A 413 (the body) or 431 (the headers) says the request is too large for OpenRouter, so
    for every model: it ends at once as a BadRequestError, spends one request, and cools
    nobody."""
    upstream.sim.set_models(
        [
            ModelScript("big/a:free", context_length=1000, status=status, error_message=says),
            fast("next/b:free", "x", context_length=2000),
            fast("third/c:free", "x", context_length=3000),
        ]
    )
    with pytest.raises(litellm.BadRequestError, match=r"too large for OpenRouter.*no other"):
        ask(race_width=1)
    assert upstream.sim.called_models() == ["big/a:free"]
    assert env_router().health.cooling_for("big/a:free") == 0


@pytest.mark.parametrize(
    "script",
    [
        # A provider's context window, said with a 413: this model's limit, not OpenRouter's.
        {"status": 413, "error_message": "This endpoint's maximum context length is 8192 tokens"},
        # A provider's own 413 relayed by OpenRouter with its words (tokens a minute, say).
        {
            "status": 413,
            "error_message": "Provider returned error",
            "error_metadata": {"raw": "Request too large for model: TPM limit 6000"},
        },
        # A 413 inside a 200 stream: OpenRouter took the request; the provider refused it.
        {"error_chunk_after": 0, "error_code": 413, "error_message": "Request too large"},
    ],
    ids=["context-413", "provider-413", "in-stream-413"],
)
def test_a_providers_own_413_leaves_the_request_to_other_models(
    upstream: Upstream, script: dict[str, Any]
) -> None:
    """Only OpenRouter's own 413 (or 431) is as large for every model; one a model's provider
    answers is that model's limit, and the next model serves the request."""
    upstream.sim.set_models(
        [
            ModelScript("small/a:free", context_length=1000, **script),  # type: ignore[arg-type]
            fast("next/b:free", "answered", context_length=2000),
        ]
    )
    assert ask(race_width=1).choices[0].message.content == "answered"
    assert upstream.sim.called_models() == ["small/a:free", "next/b:free"]


def test_long_prompt_skips_small_context_windows(upstream: Upstream) -> None:
    """A prompt larger than a model's context window is never sent to it."""
    upstream.sim.set_models(
        [
            fast("small/a:free", "small", context_length=1000),
            fast("big/b:free", "big", context_length=100000, delay=0.2),
        ]
    )
    long = [{"role": "user", "content": "word " * 4000}]
    assert ask(messages=long).choices[0].message.content == "big"
    assert upstream.sim.called_models() == ["big/b:free"]


def test_nothing_capable_fails_at_once_naming_the_need(upstream: Upstream) -> None:
    """If no model can serve the request, the error says which requirement and nothing is sent."""
    upstream.sim.set_models([fast("plain/a:free", "x", supported_parameters=TEXT_ONLY)])
    with pytest.raises(litellm.BadRequestError, match="tool use"):
        ask(tools=TOOLS)
    assert upstream.sim.requests == []


def test_structured_output_needs_support(upstream: Upstream) -> None:
    """A JSON-schema response_format races only models that support structured output."""
    upstream.sim.set_models(
        [
            fast("plain/a:free", "x", context_length=1000, supported_parameters=TEXT_ONLY),
            fast("json/b:free", '{"a": 1}', context_length=2000, delay=0.2),
        ]
    )
    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
    ask(response_format=schema)
    assert upstream.sim.called_models() == ["json/b:free"]


def test_context_error_benches_a_model_for_this_request_only(upstream: Upstream) -> None:
    """A context-length 400 skips the model for this request; it stays healthy for others."""
    upstream.sim.set_models(
        [
            ModelScript(
                "tight/a:free",
                context_length=1000,
                status=400,
                error_message="This endpoint's maximum context length is 1000 tokens.",
            ),
            fast("roomy/b:free", "fits", context_length=2000),
        ]
    )
    failed: list[tuple[str, str, str, float | None]] = []
    stop = events.subscribe(
        lambda e: (
            failed.append((e.model, e.kind, e.scope, e.cooldown))
            if isinstance(e, events.ContenderFailed)
            else None
        )
    )
    try:
        # One contender at a time, tight/a first (the smaller context): its 400 is always met.
        assert ask(race_width=1).choices[0].message.content == "fits"
    finally:
        stop()
    assert failed == [("tight/a:free", "context", "request", None)]
    assert upstream.sim.calls_for("tight/a:free") == 1
    assert env_router().health.cooling_for("tight/a:free") == 0
    upstream.sim.set_models(
        [
            fast("tight/a:free", "short ok", context_length=1000),
            # Seconds behind: tight/a wins if it is raced at all, however late it runs.
            fast("roomy/b:free", "fits", context_length=2000, delay=3.0),
        ]
    )
    assert ask().choices[0].message.content == "short ok"


def test_retry_after_longer_than_default_holds_the_model_out(upstream: Upstream) -> None:
    """A Retry-After longer than the cooldown is honoured."""
    upstream.sim.set_models(
        [
            ModelScript(
                "busy/a:free",
                context_length=1000,
                status=429,
                error_message="Provider returned error",
                error_headers={"Retry-After": "600"},
            ),
            fast("ok/b:free", "ok", context_length=2000),
        ]
    )
    ask(race_width=1)  # one at a time, busy/a first (the smaller context): its 429 is met
    assert 590 < env_router().health.cooling_for("busy/a:free") <= 600


def test_minute_limit_stops_without_cooling_models(upstream: Upstream) -> None:
    """The account's per-minute 429 holds calls, but cools no model; the contender already in
    flight was accepted and still answers."""
    upstream.sim.set_models(
        [
            ModelScript(
                "a/a:free",
                context_length=1000,
                status=429,
                error_message="Rate limit exceeded: free-models-per-min. ",
            ),
            fast("b/b:free", "late", context_length=2000, delay=2.0),
        ]
    )
    assert ask().choices[0].message.content == "late"
    held = [{"role": "user", "content": "held back"}]
    with pytest.raises(litellm.RateLimitError, match="20 requests a minute"):
        ask(messages=held)
    assert [q for q in upstream.sim.requests if q.body["messages"] == held] == []
    assert env_router().health.cooling_for("a/a:free") == 0
    assert env_router().health.cooling_for("b/b:free") == 0


def test_daily_quota_is_spent_and_then_held(upstream: Upstream) -> None:
    """Once the day's quota is gone, calls fail at once with the reset time; nothing is sent."""
    upstream.sim.daily_quota = 3
    upstream.sim.set_models(
        [
            # No first token before all three requests arrived: none is cancelled unsent.
            fast(
                f"m/{i}:free",
                f"answer {i}",
                delay=0.05 * i,
                context_length=1000 + i,
                first_token_after_requests=3,
            )
            for i in range(3)
        ]
    )
    ask(race_width=3, quota_reserve=0)  # spends 3 (no reserve: 3 left, 3 raced)
    assert upstream.sim.quota_used == 3
    with pytest.raises(litellm.RateLimitError, match=r"free daily quota used; resets at 00:00 UTC"):
        ask(race_width=3, quota_reserve=0)
    held = [{"role": "user", "content": "held back"}]
    for _ in range(3):
        with pytest.raises(litellm.RateLimitError, match="10 USD"):
            ask(messages=held)
    assert [q for q in upstream.sim.requests if q.body["messages"] == held] == []


def test_a_daily_quota_429_holds_calls_until_its_stated_reset(upstream: Upstream) -> None:
    """The block lasts until X-RateLimit-Reset (epoch ms), here 5 hours away: not a fixed
    guess, and not the next midnight."""
    reset = time.time() + 5 * 3600
    upstream.sim.set_models(
        [
            ModelScript(
                "m/a:free",
                status=429,
                error_message="Rate limit exceeded: free-models-per-day",
                error_metadata={"headers": {"X-RateLimit-Reset": f"{reset * 1000:.0f}"}},
            )
        ]
    )
    with pytest.raises(litellm.RateLimitError, match="free daily quota used"):
        ask(race_width=1)
    held = env_router().health.account_blocked_for()
    assert reset - time.time() - 60 < held <= reset - time.time() + 1, held
    with pytest.raises(litellm.RateLimitError, match="free daily quota used"):
        ask(race_width=1)
    assert len(upstream.sim.requests) == 1


def test_hedged_racing_spends_about_one_request_per_answer(upstream: Upstream) -> None:
    """With hedge_delay=auto, a warmed-up router mostly sends one request per answer."""
    upstream.sim.set_models(
        [
            fast("slow/a:free", "slow", delay=1.0, context_length=1000),
            fast("fast/b:free", "fast", delay=0.1, context_length=2000),
            fast("mid/c:free", "mid", delay=0.6, context_length=3000),
        ]
    )
    assert ask().choices[0].message.content == "fast"  # races all three, learns who is fast
    before = len(upstream.sim.requests)
    for _ in range(10):
        assert ask(hedge_delay="auto").choices[0].message.content == "fast"
    spent = len(upstream.sim.requests) - before
    assert spent < 20, spent  # racing all at once would have cost 30


def _call(model: str, stream: bool) -> set[str]:
    """The winners named by one sync call of ``model``."""
    if stream:
        chunks = litellm.completion(model=model, messages=MESSAGES, stream=True)
        return {chunk.freerouter_model for chunk in chunks}
    return {litellm.completion(model=model, messages=MESSAGES).freerouter_model}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_freerouter_hedged_asks_one_model_while_auto_races(
    upstream: Upstream, stream: bool
) -> None:
    """freerouter/hedged is freerouter/auto with hedge_delay "auto" (test_async checks the
    async paths): from empty state the first-ranked model answers alone (an unmeasured model
    is given seconds before a hedge), where freerouter/auto starts both."""
    upstream.sim.set_models(
        [
            fast("one/a:free", "one", delay=0.05, context_length=1000),
            fast("two/b:free", "two", delay=0.05, context_length=2000),
        ]
    )
    winners = _call("freerouter/hedged", stream)
    assert len(upstream.sim.requests) == 1
    assert winners == {upstream.sim.requests[0].model}
    upstream.wait_idle()
    _call("freerouter/auto", stream)
    assert len(upstream.sim.requests) == 3


def test_a_litellm_router_deployment_takes_its_tunables_from_litellm_params(
    upstream: Upstream,
) -> None:
    """As the README shows: in a litellm.Router, freerouter/auto with race_width 2 in its
    litellm_params races two of three models, and freerouter/hedged asks one."""
    # A second before each first token: the hedged call's model, measured at about 1 s by the
    # first call, is given over 2 s before a hedge.
    upstream.sim.set_models(
        [
            fast("one/a:free", "one", delay=1.0, context_length=1000),
            fast("two/b:free", "two", delay=1.0, context_length=2000),
            fast("three/c:free", "three", delay=1.0, context_length=3000),
        ]
    )
    router = litellm.Router(
        model_list=[
            {"model_name": "free", "litellm_params": {"model": "freerouter/auto", "race_width": 2}},
            {"model_name": "hedged", "litellm_params": {"model": "freerouter/hedged"}},
        ]
    )
    started: list[str] = []
    unsubscribe = events.subscribe(
        lambda e: started.append(e.model) if isinstance(e, events.ContenderStarted) else None
    )
    try:
        router.completion(model="free", messages=MESSAGES)
        assert len(started) == 2
        upstream.wait_idle()
        router.completion(model="hedged", messages=MESSAGES)
        assert len(started) == 3
    finally:
        unsubscribe()


def test_hedged_race_adds_a_contender_when_the_leader_is_late(upstream: Upstream) -> None:
    """A hedged race starts the next model once the leader is past its usual first-token time."""
    upstream.sim.set_models(
        [
            fast("lead/a:free", "lead", delay=0.05, context_length=1000),
            fast("backup/b:free", "backup", delay=0.05, context_length=2000),
        ]
    )
    ask(race_width=1)  # the leader is measured at ~50 ms
    upstream.sim.set_models(
        [
            fast("lead/a:free", "lead now slow", delay=3.0, context_length=1000),
            fast("backup/b:free", "backup", delay=0.05, context_length=2000),
        ]
    )
    assert ask(hedge_delay="auto").choices[0].message.content == "backup"
    # The leader lost without a token for longer than its usual time: it is now known as
    # slower, and the backup leads the next race.
    models = list(env_router().catalog.models or ())
    assert env_router().rank(models, Settings(explore=0), None, 1)[0].id == "backup/b:free"


def test_quota_reserve_narrows_the_race_and_says_so_once(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """Below the reserve of daily requests, the race narrows to one model, logged once."""
    caplog.set_level(logging.INFO, logger="litellm_freerouter")
    upstream.sim.daily_quota = 30
    upstream.sim.set_models(
        [fast(f"m/{i}:free", "hi", delay=0.05 * i, context_length=1000 + i) for i in range(3)]
    )
    ask()
    r = env_router()

    async def quota_known() -> None:
        if r._quota_task is not None:
            await r._quota_task

    engine.get_engine().submit(quota_known()).result(5)
    assert r.health.quota_remaining() is not None
    narrow = [{"role": "user", "content": "narrowed"}]
    ask(messages=narrow, quota_reserve=100)
    ask(messages=narrow, quota_reserve=100)
    sent = [q for q in upstream.sim.requests if q.body["messages"] == narrow]
    assert len(sent) == 2
    assert caplog.text.count("racing one model at a time") == 1


def _settled() -> None:
    """The router's background reads (/key, /endpoints) have finished."""
    r = env_router()
    engine.get_engine().submit(r.settle(5)).result(10)


def test_requests_sent_before_the_quota_was_known_are_counted(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first race that stopped waiting for a slow /key read starts beside it: its requests
    are taken off the count that read gives, which may be low by a race but never high."""
    monkeypatch.setattr(router_module, "QUOTA_FIRST_WAIT", 0.05)
    upstream.sim.key_delay = 0.5
    upstream.sim.daily_quota = 50
    upstream.sim.set_models(
        [fast(f"m/{i}:free", "hi", delay=0.2, context_length=1000 + i) for i in range(3)]
    )
    ask(race_width=3)
    _settled()
    truth = upstream.sim.daily_quota - upstream.sim.quota_used
    assert truth == 47
    remaining = env_router().health.quota_remaining()
    assert remaining is not None and truth - 3 <= remaining <= truth


def test_the_first_race_is_sized_by_the_quota_it_waited_for(upstream: Upstream) -> None:
    """With 2 free requests left, the first request of a fresh state waits for the /key read
    and races one model (below the reserve), rather than three of which one would be the
    day's 429 that holds every call until midnight."""
    upstream.sim.daily_quota = 2
    upstream.sim.set_models(
        [fast(f"m/{i}:free", "hi", delay=0.2, context_length=1000 + i) for i in range(3)]
    )
    assert ask(race_width=3).choices[0].message.content == "hi"
    assert len(upstream.sim.requests) == 1
    assert env_router().health.account_block() is None


@pytest.mark.parametrize(("delay", "status"), [(30.0, 200), (0.0, 500)])
def test_a_slow_or_failing_quota_read_holds_the_first_request_up_briefly_at_most(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, delay: float, status: int
) -> None:
    """/key answering late, or with an error, delays the first race by QUOTA_FIRST_WAIT at
    most and fails nothing; the next request does not wait for it again."""
    monkeypatch.setattr(router_module, "QUOTA_FIRST_WAIT", 0.1)
    upstream.sim.key_delay = delay
    upstream.sim.key_status = status
    upstream.sim.daily_quota = 50
    # Two models: a race of one would not wait at all.
    upstream.sim.set_models([fast(f"m/{i}:free", "hi", context_length=1000 + i) for i in range(2)])
    started = time.monotonic()
    assert ask().choices[0].message.content == "hi"
    # A second wait would now last until the slow read gives up, 15 s after it started.
    monkeypatch.setattr(router_module, "QUOTA_FIRST_WAIT", 60.0)
    assert ask().choices[0].message.content == "hi"
    assert time.monotonic() - started < 10  # not the 30 s a slow /key takes
    assert env_router().health.quota_remaining() is None


@pytest.mark.parametrize(("models", "width"), [(2, 1), (1, 3)], ids=["width-1", "one-model"])
def test_a_race_of_one_does_not_wait_for_the_quota_read(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, models: int, width: int
) -> None:
    """A race that can have one model in flight (race_width 1, or one ready model) is narrowed
    by nothing the quota says: its first request does not wait for a slow /key read at all."""
    monkeypatch.setattr(router_module, "QUOTA_FIRST_WAIT", 60.0)
    upstream.sim.key_delay = 30.0
    upstream.sim.daily_quota = 50
    upstream.sim.set_models(
        [fast(f"m/{i}:free", "hi", context_length=1000 + i) for i in range(models)]
    )
    started = time.monotonic()
    assert ask(race_width=width).choices[0].message.content == "hi"
    assert time.monotonic() - started < 10  # not the 15 s the read runs before it gives up


def test_the_first_race_looks_again_after_waiting_for_the_quota_read(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the first race waits for /key, another request may meet the day's 429: the race
    looks again after the wait and sends nothing, rather than racing the models it picked."""
    monkeypatch.setattr(router_module, "QUOTA_FIRST_WAIT", 0.1)
    upstream.sim.key_delay = 30.0
    upstream.sim.daily_quota = 50
    upstream.sim.set_models([fast(f"m/{i}:free", "hi", context_length=1000 + i) for i in range(3)])

    def on_event(event: events.Event) -> None:
        if isinstance(event, events.CatalogRefreshed) and event.ok:  # account checked, no race yet
            spent = Failure("daily_quota", "account", "used", reset_at=time.time() + 3600)
            env_router().health.block_account(spent, time.time() + 3600)

    stop = events.subscribe(on_event)
    try:
        with pytest.raises(litellm.RateLimitError, match="free daily quota used"):
            ask()
    finally:
        stop()
    assert upstream.sim.requests == []


def test_the_quota_is_read_again_every_refresh_interval(upstream: Upstream) -> None:
    """Other clients of the account spend from the same count: /key is read again once the
    refresh interval has passed, not only when the process starts."""
    upstream.sim.daily_quota = 50
    upstream.sim.set_models([fast("m/a:free", "hi", context_length=1000)])
    ask(refresh_interval=0.5)
    _settled()
    upstream.sim.quota_used += 30  # spent elsewhere
    time.sleep(0.6)  # the interval passes (a wait for time itself, not for an event)
    ask(refresh_interval=0.5)
    _settled()
    truth = upstream.sim.daily_quota - upstream.sim.quota_used
    remaining = env_router().health.quota_remaining()
    assert remaining is not None and truth - 1 <= remaining <= truth, (remaining, truth)


def test_a_scarce_quota_makes_hedges_wait_longer_and_says_so_once(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """With 50 or fewer free requests left today, hedged racing hedges later: logged once."""
    caplog.set_level(logging.INFO, logger="litellm_freerouter")
    upstream.sim.daily_quota = 50
    upstream.sim.set_models(
        [fast(f"m/{i}:free", "hi", delay=0.05 * i, context_length=1000 + i) for i in range(3)]
    )
    ask(hedge_delay="auto")
    r = env_router()

    async def quota_known() -> None:
        if r._quota_task is not None:
            await r._quota_task

    engine.get_engine().submit(quota_known()).result(5)
    remaining = r.health.quota_remaining()
    assert remaining is not None and remaining <= 50
    ask(hedge_delay="auto")
    ask(hedge_delay="auto")
    notice = "free requests left today: a hedge waits until the first choice is later than 99%"
    assert caplog.text.count(notice) == 1
    assert [rec.levelname for rec in caplog.records if notice in rec.getMessage()] == ["INFO"]


def test_fastest_model_leads_after_a_few_requests(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the catalogue order, the measured-fastest model ends up first in the batch."""
    caplog.set_level(logging.INFO, logger="litellm_freerouter")
    upstream.sim.set_models(
        [
            fast(f"m/{i}:free", f"from {i}", delay=d, context_length=1000 + i)
            for i, d in enumerate([0.5, 0.4, 0.3, 0.02])
        ]
    )
    for _ in range(3):
        ask(race_width=2, explore=1.0)
    caplog.clear()
    ask(race_width=2)
    assert "racing m/3:free" in caplog.text


def test_endpoint_latency_seeds_the_order(upstream: Upstream) -> None:
    """OpenRouter's per-endpoint latency ranks never-measured models."""
    upstream.sim.set_models(
        [
            fast("slowprior/a:free", "a", context_length=1000, endpoint_latency_ms=5000),
            fast("fastprior/b:free", "b", context_length=2000, endpoint_latency_ms=200),
        ]
    )
    r = env_router()

    async def learned() -> None:
        await r.catalog.get()
        if r._endpoints_task is not None:
            await r._endpoints_task

    engine.get_engine().submit(learned()).result(5)
    models = list(r.catalog.models or ())
    settings = Settings(explore=0)
    ranked = r.rank(models, settings, None, 1)
    assert ranked[0].id == "fastprior/b:free"
    assert {m.provider for m in models} == {"SimProvider"}


# --- ranking as a unit -----------------------------------------------------------------------


def make_router(clock: list[float]) -> Router:
    return Router(
        "http://x",
        session=lambda: None,  # type: ignore[arg-type,return-value]
        refresh_interval=3600,
        health=Health(clock=lambda: clock[0]),
        rng=random.Random(7),
    )


MODELS = [FreeModel(f"m/{i}:free", context_length=1000 * (i + 1)) for i in range(5)]


def test_failures_push_a_fast_model_down() -> None:
    """Success rate counts: a fast model that keeps failing loses its lead."""
    r = make_router([0.0])
    r.health.record_first_token("m/0:free", 0.1)
    r.health.record_first_token("m/1:free", 0.4)
    assert r.rank(MODELS, Settings(explore=0), None, 3)[0].id == "m/0:free"
    for _ in range(6):
        r.health.record_failure("m/0:free")
    assert r.rank(MODELS, Settings(explore=0), None, 3)[0].id == "m/1:free"


def test_a_hedge_never_starts_sooner_than_the_floor() -> None:
    """However quick a model measures, the next contender waits at least HEDGE_FLOOR (50 ms):
    a hedge fired at the first scheduling delay would be a race of two."""
    r = make_router([0.0])
    for _ in range(5):
        r.health.record_first_token("m/0:free", 0.001)
    assert r.hedge_after(MODELS[0], Settings(hedge_delay="auto")) == HEDGE_FLOOR == 0.05


def test_recent_results_weigh_more() -> None:
    """A model that became slow is overtaken after a few slow results."""
    r = make_router([0.0])
    for _ in range(5):
        r.health.record_first_token("m/0:free", 0.1)
    r.health.record_first_token("m/1:free", 0.5)
    for _ in range(3):
        r.health.record_first_token("m/0:free", 2.0)
    assert r.rank(MODELS, Settings(explore=0), None, 3)[0].id == "m/1:free"


def test_exploration_puts_an_unmeasured_model_in_the_last_slot() -> None:
    """Exploration gives never-measured models the last seat in turn, least-tried first."""
    r = make_router([0.0])
    for i in range(3):
        r.health.record_first_token(f"m/{i}:free", 0.1 * (i + 1))
    seats = []
    for _ in range(4):
        seat = r.rank(MODELS, Settings(explore=1.0), None, 3)[2].id
        r.health.record_attempt(seat)
        seats.append(seat)
    assert seats == ["m/3:free", "m/4:free", "m/3:free", "m/4:free"]
    assert r.rank(MODELS, Settings(explore=1.0), None, 3)[0].id == "m/0:free"


def test_conversation_keeps_its_winner_while_it_is_fast() -> None:
    """A conversation's last winner leads while within 1.5x of the best, and not beyond."""
    r = make_router([0.0])
    r.health.record_first_token("m/0:free", 0.10)
    r.health.record_first_token("m/1:free", 0.14)
    key = conversation_key([{"role": "user", "content": "start"}])
    r._remember(key, "m/1:free")
    assert r.rank(MODELS, Settings(explore=0), key, 2)[0].id == "m/1:free"
    r.health.record_first_token("m/1:free", 2.0)
    assert r.rank(MODELS, Settings(explore=0), key, 2)[0].id == "m/0:free"


def test_a_model_at_its_stated_limit_rests_only_until_its_minute_frees(
    upstream: Upstream,
) -> None:
    """A 429 stating the model's per-minute limit, reached by this process, cools the model
    only until its oldest request leaves the minute (not the 90 s of an unexplained 429), and
    until then the model is ranked last."""
    limited = "Rate limit exceeded: limit_rpm/lim/a:free/x. limited to 1 requests per minute."
    upstream.sim.set_models(
        [fast("lim/a:free", "first", context_length=1000), fast("ok/b:free", delay=0.3)]
    )
    assert ask(race_width=1).choices[0].message.content == "first"
    upstream.sim.set_models(
        [
            ModelScript("lim/a:free", context_length=1000, status=429, error_message=limited),
            fast("ok/b:free", "second", context_length=2000),
        ]
    )
    assert ask(race_width=1).choices[0].message.content == "second"
    health = env_router().health
    assert health.stats("lim/a:free").limit_rpm == 1
    assert 50 < health.cooling_for("lim/a:free") <= 60


def test_a_model_stating_a_limit_others_filled_rests_a_minute_at_most(upstream: Upstream) -> None:
    """A model's first answer is a 429 stating its per-minute limit (other processes or keys
    filled it): it is out for a minute at most, not the 90 s of an unexplained 429."""
    limited = "Rate limit exceeded: limit_rpm/lim/a:free/x. limited to 8 requests per minute."
    upstream.sim.set_models(
        [
            ModelScript("lim/a:free", context_length=1000, status=429, error_message=limited),
            fast("ok/b:free", "second", context_length=2000),
        ]
    )
    assert ask(race_width=1).choices[0].message.content == "second"
    health = env_router().health
    assert health.stats("lim/a:free").limit_rpm == 8
    assert 55 < health.cooling_for("lim/a:free") <= 60


def test_a_429_that_states_no_limit_cools_fully_though_the_model_once_stated_one(
    upstream: Upstream,
) -> None:
    """Only a 429 saying it is the model's per-minute limit rests it a minute at most; a later
    one that does not (its provider busy) cools it cooldown_rate_limit, as for any model."""
    limited = "Rate limit exceeded: limit_rpm/lim/a:free/x. limited to 8 requests per minute."
    upstream.sim.set_models(
        [
            ModelScript("lim/a:free", context_length=1000, status=429, error_message=limited),
            fast("ok/b:free", "second", context_length=2000),
        ]
    )
    assert ask(race_width=1, cooldown_rate_limit=600).choices[0].message.content == "second"
    health = env_router().health
    assert health.stats("lim/a:free").limit_rpm == 8
    health.uncool("lim/a:free", "rate_limited")
    upstream.sim.set_models(
        [
            ModelScript(
                "lim/a:free",
                context_length=1000,
                status=429,
                error_message="Provider returned error",
                error_metadata={"raw": "upstream is temporarily rate-limited"},
            ),
            fast("ok/b:free", "second", delay=0.5, context_length=2000),
        ]
    )
    # Both start (the measured ok/b would otherwise be the only one asked); lim/a fails first.
    assert ask(race_width=2, cooldown_rate_limit=600).choices[0].message.content == "second"
    assert "lim/a:free" in upstream.sim.called_models()
    assert health.cooling_for("lim/a:free") > 500


def test_a_model_at_its_known_limit_is_not_asked_until_its_minute_frees(
    upstream: Upstream,
) -> None:
    """A model this account has already sent its stated per-minute limit is left out of the
    race, however wide: asking it would only meet a 429 that still counts against the day.
    When it is all that is left and its minute frees later than a request waits, the call
    fails at once, sending nothing."""
    upstream.sim.set_models(
        [
            fast("lim/a:free", "limited", context_length=1000),
            fast("ok/b:free", "other", context_length=2000, delay=0.2),
        ]
    )
    health = env_router().health
    health.record_attempt("lim/a:free")
    health.record_attempt("lim/a:free")
    health.refused("lim/a:free", 1)  # its limit is 1 a minute, and 1 was sent just now
    assert health.cooling_for("lim/a:free") == 0 and 59 < health.back_in("lim/a:free") <= 60
    assert ask(race_width=3).choices[0].message.content == "other"
    assert upstream.sim.called_models() == ["ok/b:free"]
    health.cool("ok/b:free", 600, "rate_limited")
    with pytest.raises(litellm.ServiceUnavailableError, match="or at their per-minute limit"):
        ask(race_width=3)
    assert upstream.sim.called_models() == ["ok/b:free"]


def test_the_race_narrows_to_stay_under_the_accounts_minute_limit(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenRouter allows so many free requests a minute per account, and a refused one still
    counts against the day: the race starts only as many contenders as fit in the minute (never
    fewer than one), and says so once."""
    # No first token before three requests arrived since set_models: a loser cancelled while
    # still connecting would never be recorded.
    models = [
        fast(m, m[0], context_length=1000 * (i + 1), first_token_after_requests=3)
        for i, m in enumerate(["a/a:free", "b/b:free", "c/c:free"])
    ]
    upstream.sim.set_models(models)
    with caplog.at_level(logging.INFO, logger="litellm_freerouter"):
        started = []
        for _ in range(3):
            before = len(upstream.sim.requests)
            ask(requests_per_minute=4, race_width=3, explore=0)
            started.append(len(upstream.sim.requests) - before)
    assert started == [3, 1, 1]
    assert caplog.text.count("free requests in the last minute (OpenRouter allows 4)") == 1
    upstream.sim.set_models(models)  # three requests to wait for again
    before = len(upstream.sim.requests)
    ask(requests_per_minute=0, race_width=3)  # 0: no pacing
    assert len(upstream.sim.requests) - before == 3


def test_hedges_wait_for_a_later_quantile_while_the_quota_is_scarce() -> None:
    """Plenty left: a hedge waits for the first choice's 95th percentile (2.7x its expected
    time before it is measured). 50 or fewer left: its 99th (4x)."""
    r = make_router([0.0])
    for seconds in random.Random(3).sample([i / 10 for i in range(1, 21)], 20):
        r.health.record_first_token("m/0:free", seconds)
    stats = r.health.stats("m/0:free")
    p95, p99 = stats.quantile(0.95), stats.quantile(0.99)
    assert p95 == 1.9 and p99 is not None and p99 > 2.0  # 20 times cannot show the 99th
    auto = Settings(hedge_delay="auto")
    measured, unmeasured = MODELS[0], MODELS[1]
    plenty = (r.hedge_after(measured, auto), r.hedge_after(unmeasured, auto))
    assert plenty == (p95, pytest.approx(3.0 * 2.7))
    r.health.set_quota(1000, 51)
    assert (r.hedge_after(measured, auto), r.hedge_after(unmeasured, auto)) == plenty
    r.health.set_quota(1000, 50)
    assert r.hedge_after(measured, auto) == p99
    assert r.hedge_after(unmeasured, auto) == pytest.approx(3.0 * 4.0)
    # Never past the first-token timeout, and a fixed delay stays fixed.
    assert r.hedge_after(unmeasured, Settings(hedge_delay="auto", first_token_timeout=5)) == 5
    assert r.hedge_after(measured, Settings(hedge_delay=0.25)) == 0.25


def test_the_race_is_never_wider_than_the_requests_left() -> None:
    """Above the reserve too: with 5 requests left a race of 6 starts 5 (the sixth would be
    a sure per-day 429); below the reserve, one."""
    r = make_router([1000.0])
    settings = Settings(race_width=6, quota_reserve=5, requests_per_minute=0)
    r.health.set_quota(50, 5)
    assert r._width(settings) == 5
    r.health.set_quota(50, 40)
    assert r._width(settings) == 6
    r.health.set_quota(50, 4)
    assert r._width(settings) == 1


def test_a_request_two_models_refuse_fails_without_asking_the_rest(upstream: Upstream) -> None:
    """A request every model would refuse (here a reasoning effort they do not know) is not walked
    through the whole catalogue, one day's request each, benching every model for everyone:
    after two refusals it fails with the provider's own words, and no model stays cooled."""
    upstream.sim.set_models(
        [
            ModelScript(
                f"m/{i}:free",
                context_length=1000 + i,
                status=400,
                error_message="Provider returned error",
                error_metadata={"raw": "reasoning.effort must be low, medium or high"},
            )
            for i in range(4)
        ]
    )
    with pytest.raises(litellm.BadRequestError, match="2 free models refused this request") as info:
        ask(race_width=1, reasoning={"effort": "extreme"})
    assert "reasoning.effort must be low, medium or high" in str(info.value)
    assert len(upstream.sim.requests) == 2
    health = env_router().health
    assert [health.cooling_for(f"m/{i}:free") for i in range(4)] == [0, 0, 0, 0]


def test_failed_contenders_are_replaced_only_as_far_as_the_minute_allows(
    upstream: Upstream,
) -> None:
    """Six models answering 503 and room for 3 requests this minute: the request sends 3, not
    6 (each refused request would still count against the day), and fails naming them."""
    upstream.sim.set_models(
        [ModelScript(f"down/{i}:free", context_length=1000 + i, status=503) for i in range(6)]
    )
    with pytest.raises(litellm.ServiceUnavailableError, match="all 3 free models tried"):
        ask(requests_per_minute=3, wait_for_model=0)
    assert len(upstream.sim.requests) == 3


def test_the_minute_frees_when_its_oldest_requests_leave_it() -> None:
    clock = [1000.0]
    r = make_router(clock)
    for offset in (0.0, 10.0, 20.0):
        clock[0] = 1000.0 + offset
        r.health.record_attempt(f"m/{int(offset)}:free")
    clock[0] = 1030.0
    assert r.health.minute_frees_in(3) == pytest.approx(30.0)  # the one sent at 1000 leaves
    assert r.health.minute_frees_in(2) == pytest.approx(40.0)  # two must leave: 1000 and 1010
    assert r.health.minute_frees_in(4) == 0.0


def test_a_request_sends_at_most_max_attempts_requests(upstream: Upstream) -> None:
    """Fourteen models failing: one request stops after max_attempts (6 by default) upstream
    requests rather than spending a day's quota on the whole catalogue, and says why."""
    upstream.sim.set_models(
        [ModelScript(f"down/{i}:free", context_length=1000 + i, status=503) for i in range(14)]
    )
    says = r"no more are tried for one request: it may send {}, FREEROUTER_MAX_ATTEMPTS"
    with pytest.raises(litellm.ServiceUnavailableError, match=says.format(6)):
        ask(requests_per_minute=0)
    assert len(upstream.sim.requests) == 6
    # Other requests: a repeat of the first would go on from it (REPEAT_WINDOW).
    with pytest.raises(litellm.ServiceUnavailableError, match=says.format(2)):
        ask(requests_per_minute=0, max_attempts=2, race_width=1, messages=[user("second")])
    assert len(upstream.sim.requests) == 8
    # The race width raises the cap: the message gives the cap that held.
    with pytest.raises(litellm.ServiceUnavailableError, match=says.format(3)):
        ask(requests_per_minute=0, max_attempts=1, race_width=3, messages=[user("third")])
    assert len(upstream.sim.requests) == 11


def test_races_the_accounts_minute_cuts_short_end_in_its_rate_limit_error(
    upstream: Upstream,
) -> None:
    """Every model answers the account's per-minute 429 (each race is cut short, none fails):
    at max_attempts the caller gets that RateLimitError, which it may retry once the minute
    frees, not a final 'all models failed'."""
    upstream.sim.set_models(
        [
            ModelScript(
                f"m/{i}:free",
                context_length=1000 + i,
                status=429,
                error_message="Rate limit exceeded: free-models-per-min. ",
                error_headers={"Retry-After": "0.3"},
            )
            for i in range(3)
        ]
    )
    with pytest.raises(litellm.RateLimitError, match="rate limited for this account") as caught:
        ask(wait_for_model=5)
    assert not isinstance(caught.value, litellm.ServiceUnavailableError)
    assert len(upstream.sim.requests) == 6


def test_all_failed_says_why_the_other_models_were_left_out(upstream: Upstream) -> None:
    """An error saying "all 2 tried failed" reads as if there were only 2: it also counts the
    others and why none was tried (cooling down, and till when; unable to serve the request)."""
    upstream.sim.set_models(
        [
            *(ModelScript(f"down/{i}:free", context_length=1000 + i, status=503) for i in range(2)),
            *(fast(f"resting/{i}:free", "late", context_length=2000 + i) for i in range(2)),
            fast("plain/a:free", "no tools", context_length=3000, supported_parameters=TEXT_ONLY),
        ]
    )
    stops = [cool_once_listed(f"resting/{i}:free", 40) for i in range(2)]
    try:
        with pytest.raises(litellm.ServiceUnavailableError) as info:
            ask(tools=TOOLS, wait_for_model=0)
    finally:
        for stop in stops:
            stop()
    message = str(info.value)
    assert "all 2 free models tried for this request failed" in message
    left_out = "the other 3 were left out: 2 cooling down (the first back in 40 s)"
    assert f"{left_out}, 1 unable to serve this request (tool use)" in message, message
    assert sorted(upstream.sim.called_models()) == ["down/0:free", "down/1:free"]


def test_a_repeat_of_a_request_every_model_failed_goes_on_from_it(upstream: Upstream) -> None:
    """aider asks its main model for the commit message its hedged weak model could not get:
    the identical request, a moment later, counts against the same max_attempts (here used
    up: nothing more is sent) instead of spending 6 more; a different request is not held."""
    upstream.sim.set_models(
        [ModelScript(f"down/{i}:free", context_length=1000 + i, status=503) for i in range(14)]
    )
    with pytest.raises(litellm.ServiceUnavailableError, match="all 6 free models tried"):
        ask(hedge_delay="auto")
    assert len(upstream.sim.requests) == 6
    again = r"all 6 free models tried for this request and an identical one \d+ s ago failed"
    with pytest.raises(litellm.ServiceUnavailableError, match=again):
        ask()
    assert len(upstream.sim.requests) == 6
    other = [{"role": "user", "content": "Something else"}]
    with pytest.raises(litellm.ServiceUnavailableError, match="all 6 free models tried for this"):
        ask(messages=other)
    assert len(upstream.sim.requests) == 12


def test_a_request_the_accounts_minute_cut_short_is_retried_afresh(upstream: Upstream) -> None:
    """A request that failed one model and then found the account's free requests a minute
    used up did not fail on every model: the caller's retry of it (litellm's proxy retries a
    503) is a request of its own, not one that goes on from the first and fails at once."""
    upstream.sim.set_models(
        [ModelScript("down/a:free", status=503), fast("good/b:free", "answered after all")]
    )
    tight = {"requests_per_minute": 1, "race_width": 1, "wait_for_model": 0}
    with pytest.raises(litellm.ServiceUnavailableError, match="the minute frees in"):
        ask(**tight)
    assert [r.model for r in upstream.sim.requests] == ["down/a:free"]  # the premise
    response = ask(**tight)
    assert response.choices[0].message.content == "answered after all"
    assert [r.model for r in upstream.sim.requests] == ["down/a:free", "good/b:free"]


def test_a_repeat_does_not_ask_again_the_models_that_refused_it_for_its_size(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A context-length 400 cools no model (another request may fit): a repeat within
    REPEAT_WINDOW does not send the same prompt to them again; after it, it may."""
    upstream.sim.set_models(
        [
            ModelScript(
                f"tight/{i}:free",
                context_length=1000 + i,
                status=400,
                error_message="This endpoint's maximum context length is 1000 tokens.",
            )
            for i in range(2)
        ]
    )
    for _ in range(2):
        with pytest.raises(litellm.ContextWindowExceededError):
            ask()
    assert len(upstream.sim.requests) == 2
    monkeypatch.setattr(router_module, "REPEAT_WINDOW", 0.0)
    with pytest.raises(litellm.ContextWindowExceededError):
        ask()
    assert len(upstream.sim.requests) == 4
