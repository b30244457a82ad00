"""The race, judged from outside: which models were called, what the caller got, what closed."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import litellm
import pytest

from litellm_freerouter import events
from litellm_freerouter.catalog import FreeModel
from litellm_freerouter.errors import StreamStalled
from litellm_freerouter.race import Contender, race
from litellm_freerouter.simulator import ModelScript

from .conftest import KEY, Upstream, env_router, fast, released_on_failure, request_tasks

MESSAGES = [{"role": "user", "content": "Say hello"}]


def ask(stream: bool = True, **kwargs: Any) -> tuple[str, list[Any]]:
    """A sync litellm call; returns the text and the chunks (or [response])."""
    response = litellm.completion(
        model="freerouter/auto", messages=kwargs.pop("messages", MESSAGES), stream=stream, **kwargs
    )
    if not stream:
        return response.choices[0].message.content or "", [response]
    chunks = list(response)
    # The usage chunk has no choices on newer litellm (as OpenAI sends it).
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def test_fastest_first_token_wins_and_losers_are_closed(upstream: Upstream) -> None:
    """The first model to send a token wins; the others are cancelled and disconnected."""
    upstream.sim.set_models(
        [
            fast("slow/a:free", "too late", delay=2.0),
            fast("quick/b:free", "Hello from b", delay=0.05),
            fast("slow/c:free", "also late", delay=2.0),
        ]
    )
    text, chunks = ask()
    assert text == "Hello from b"
    assert {c.freerouter_model for c in chunks} == {"quick/b:free"}
    assert sorted(upstream.sim.called_models()) == ["quick/b:free", "slow/a:free", "slow/c:free"]
    upstream.wait_idle()
    assert upstream.sim.closed_by_client == 2
    assert request_tasks() == []


def _maker(
    session: aiohttp.ClientSession,
    upstream: Upstream,
    kind: Callable[[str], type[Contender]],
) -> Callable[[FreeModel, float], Contender]:
    """``race()``'s ``make``: a contender of the class ``kind(model id)`` gives, against the
    fake OpenRouter."""

    def make(model: FreeModel, now: float) -> Contender:
        body = {"model": model.id, "messages": MESSAGES, "stream": True}
        return kind(model.id)(
            model,
            session=session,
            url=f"{upstream.url}/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            body=json.dumps(body).encode(),
            started=now,
            idle_timeout=None,
        )

    return make


def _start_race(
    session: aiohttp.ClientSession,
    upstream: Upstream,
    models: list[str],
    kind: Callable[[str], type[Contender]],
) -> asyncio.Future[Any]:
    """``race()`` run as a task of its own among ``models``, all started at once, each a
    contender of the class ``kind(model id)`` gives, against the fake OpenRouter."""
    return asyncio.ensure_future(
        race(
            [FreeModel(m) for m in models],
            make=_maker(session, upstream, kind),
            width=len(models),
            first_token_timeout=None,
            hedge_after=lambda model: 0.0,
            on_start=lambda contender: None,
            on_failure=lambda failure: None,
        )
    )


async def test_a_first_token_in_the_turn_the_race_is_cancelled_still_closes(
    upstream: Upstream,
) -> None:
    """A contender can get its first token in the very turn its race is cancelled (a client
    hanging up as the answer starts): its task then ends cleanly, out of reach of the
    cancellation. The race must still close its response; the upstream stalls until then."""
    upstream.sim.set_models(
        [ModelScript("stall/a:free", chunks=("one", " two"), stall_after_chunks=1)]
    )
    race_task: asyncio.Future[Any] | None = None

    class CancelsItsRace(Contender):
        async def until_first_token(self) -> None:
            await super().until_first_token()
            assert race_task is not None
            race_task.cancel()  # lands in the same turn as the first token

    async with aiohttp.ClientSession() as session:
        race_task = _start_race(session, upstream, ["stall/a:free"], lambda model: CancelsItsRace)
        with pytest.raises(asyncio.CancelledError):
            await race_task
        await asyncio.to_thread(upstream.wait_idle, 5)
    assert [r.outcome for r in upstream.sim.requests] == ["client_closed"]


def _unsent_contender(model_id: str, idle_timeout: float | None = None) -> Contender:
    """A contender that never sends: no session, so a test sets its response, or it is
    refused before it would be used."""
    return Contender(
        FreeModel(model_id),
        session=None,  # type: ignore[arg-type]
        url="",
        headers={},
        body=b"",
        started=0.0,
        idle_timeout=idle_timeout,
    )


@pytest.mark.parametrize("model_id", ["openai/gpt-4o", "x/y:free ", "x/y:free:extended"])
def test_a_contender_for_a_paid_model_cannot_be_made(model_id: str) -> None:
    """The last guard, right before each request: whatever the catalogue or a caller says, a
    contender is only ever made for an id that ends in ':free'."""
    with pytest.raises(ValueError, match="it is not a free model"):
        _unsent_contender(model_id)


async def test_a_dropped_contender_is_closed_before_its_replacement_starts(
    upstream: Upstream,
) -> None:
    """A contender with no first token in time is hung up on at once, not when the race
    ends: its connection is already closed when the model replacing it is started."""
    upstream.sim.set_models(
        [
            ModelScript("stuck/a:free", stall_before_first_token=True),
            fast("next/b:free", "next", delay=0.05),
        ]
    )
    connected: dict[str, aiohttp.ClientResponse] = {}
    closed_when_replaced: list[bool] = []

    class Watched(Contender):
        async def _connect(self) -> None:
            await super()._connect()
            assert self._response is not None
            connected[self.id] = self._response

    def on_start(contender: Contender) -> None:
        if contender.id == "next/b:free":
            closed_when_replaced.append(connected["stuck/a:free"].closed)

    failures: list[str] = []
    async with aiohttp.ClientSession() as session:
        outcome = await race(
            [FreeModel("stuck/a:free"), FreeModel("next/b:free")],
            make=_maker(session, upstream, lambda model: Watched),
            width=1,
            first_token_timeout=0.5,
            hedge_after=lambda model: 0.0,
            on_start=on_start,
            on_failure=lambda failure: failures.append(f"{failure.model} {failure.kind}"),
        )
        outcome.winner.close()
    assert outcome.winner.id == "next/b:free"
    assert failures == ["stuck/a:free slow"]
    assert closed_when_replaced == [True]
    await asyncio.to_thread(upstream.wait_idle, 5)
    assert upstream.sim.requests[0].outcome == "client_closed"


class _ScriptedContent:
    """A response body that hands over ``plan``'s (delay, bytes) reads in turn."""

    def __init__(self, plan: list[tuple[float, bytes]]) -> None:
        self.plan = plan

    async def readany(self) -> bytes:
        delay, data = self.plan.pop(0)
        await asyncio.sleep(delay)
        return data


class _ScriptedResponse:
    def __init__(self, plan: list[tuple[float, bytes]]) -> None:
        self.content = _ScriptedContent(plan)

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass


def _event(text: str) -> bytes:
    return b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\n' % text.encode()


async def test_a_read_that_lands_after_the_idle_timer_fired_still_ends_in_a_stall() -> None:
    """The idle timer closes the stream while a read is under way, and the read returns data
    anyway: that chunk is delivered, but the answer has not ended, so it is a stall (which
    another model carries on), never an answer cut short that looks whole."""
    idle = 0.2
    contender = _unsent_contender("m/a:free", idle_timeout=idle)  # its response is set below
    # The second read is still under way when the idle timer runs out and closes the stream,
    # and returns its data after all (as a read already in flight can).
    contender._response = _ScriptedResponse(  # type: ignore[assignment]
        [
            (0, _event("one")),
            (idle * 1.5, _event("two")),
            (0, _event("three") + b"data: [DONE]\n\n"),
        ]
    )
    first = await contender._next_delta()  # the first token, as until_first_token reads it
    assert first is not None
    contender._ready.append(first)
    got = []
    with pytest.raises(StreamStalled, match=r"sent nothing for 0\.2 s"):
        async for delta in contender.deltas():
            got.append(delta.content)
    assert got == ["one", "two"]


async def test_a_race_cancelled_while_its_losers_settle_closes_its_winner(
    upstream: Upstream,
) -> None:
    """The race has its winner and waits for the cancelled losers to close; if the race itself
    is cancelled meanwhile (a client hanging up just then), the winner never reaches the caller
    and must be closed by the race. Both upstreams stall until closed."""
    upstream.sim.set_models(
        [
            ModelScript("win/a:free", chunks=("one", " two"), stall_after_chunks=1),
            ModelScript("lose/b:free", stall_before_first_token=True),
        ]
    )
    race_task: asyncio.Future[Any] | None = None

    class CancelsTheRaceAsItLoses(Contender):
        async def until_first_token(self) -> None:
            try:
                await super().until_first_token()
            except asyncio.CancelledError:
                assert race_task is not None
                race_task.cancel()  # lands while the race settles its losers
                raise

    async with aiohttp.ClientSession() as session:
        race_task = _start_race(
            session,
            upstream,
            ["win/a:free", "lose/b:free"],
            lambda model: CancelsTheRaceAsItLoses if model.startswith("lose") else Contender,
        )
        with pytest.raises(asyncio.CancelledError):
            await race_task
        await asyncio.to_thread(upstream.wait_idle, 5)
    assert sorted((r.model, r.outcome) for r in upstream.sim.requests) == [
        ("lose/b:free", "client_closed"),
        ("win/a:free", "client_closed"),
    ]


def test_keepalives_and_role_chunks_are_not_tokens(upstream: Upstream) -> None:
    """Keep-alive comments and an empty role delta do not win; the first real text does."""
    upstream.sim.set_models(
        [
            ModelScript(
                "chatty/a:free",
                keepalives=5,
                keepalive_interval=0.01,
                first_token_delay=1.0,
                chunks=("late",),
            ),
            fast("real/b:free", "real answer", delay=0.2),
        ]
    )
    text, _ = ask()
    assert text == "real answer"


def test_tool_call_delta_is_a_token_and_streams_with_index(upstream: Upstream) -> None:
    """A tool call wins like text, and reaches the caller as indexed tool-call deltas."""
    upstream.sim.set_models(
        [
            ModelScript(
                "tools/a:free",
                chunks=(),
                tool_calls=(
                    {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
                ),
            )
        ]
    )
    response = litellm.completion(
        model="freerouter/auto",
        messages=MESSAGES,
        stream=True,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in response:
        if not chunk.choices:
            continue
        for call in chunk.choices[0].delta.tool_calls or []:
            slot = calls.setdefault(call.index, {"name": "", "arguments": ""})
            slot["name"] += call.function.name or ""
            slot["arguments"] += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert calls == {0: {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    assert finish == "tool_calls"
    body = upstream.sim.requests[0].body
    assert body["tools"][0]["function"]["name"] == "get_weather"


def test_non_streamed_tool_calls_are_assembled(upstream: Upstream) -> None:
    """A non-streamed answer carries complete tool calls and finish_reason tool_calls."""
    upstream.sim.set_models(
        [
            ModelScript(
                "tools/a:free",
                chunks=(),
                tool_calls=({"id": "call_9", "name": "lookup", "arguments": '{"q": "x y z"}'},),
            )
        ]
    )
    response = litellm.completion(
        model="freerouter/auto",
        messages=MESSAGES,
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    )
    call = response.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_9",
        "lookup",
        '{"q": "x y z"}',
    )
    assert response.choices[0].finish_reason == "tool_calls"
    assert response.freerouter_model == "tools/a:free"


def test_failed_batch_moves_on_and_each_model_is_tried_once(upstream: Upstream) -> None:
    """Failures are replaced by the next candidates; no model is called twice per request."""
    upstream.sim.set_models(
        [ModelScript(f"bad/m{i}:free", status=500) for i in range(4)]
        + [fast("good/z:free", "finally")]
    )
    text, _chunks = ask(race_width=2)
    assert text == "finally"
    called = upstream.sim.called_models()
    assert sorted(called) == sorted([f"bad/m{i}:free" for i in range(4)] + ["good/z:free"])
    assert len(set(called)) == len(called)


def test_no_token_in_time_cools_the_model_slow(upstream: Upstream) -> None:
    """A contender without a token within first_token_timeout is dropped and cooled."""
    upstream.sim.set_models(
        [
            ModelScript("stuck/a:free", context_length=1000, stall_before_first_token=True),
            fast("fine/b:free", "made it", context_length=2000),
        ]
    )
    text, _ = ask(race_width=1, first_token_timeout=0.3, cooldown_slow=60)
    assert text == "made it"
    assert upstream.sim.called_models() == ["stuck/a:free", "fine/b:free"]
    upstream.wait_idle()
    # The cooled model is not called by the next request.
    ask(race_width=1, first_token_timeout=0.3)
    assert upstream.sim.called_models()[-1] == "fine/b:free"
    assert upstream.sim.calls_for("stuck/a:free") == 1


def test_idle_after_first_token_raises_timeout_naming_model(upstream: Upstream) -> None:
    """A winner that goes quiet is aborted and the caller gets litellm.Timeout with its id."""
    upstream.sim.set_models(
        [ModelScript("stall/a:free", chunks=("one", " two", " three"), stall_after_chunks=2)]
    )
    with pytest.raises(litellm.Timeout, match="stall/a:free"):
        ask(idle_timeout=0.3)
    upstream.wait_idle()
    assert upstream.sim.closed_by_client == 1
    assert request_tasks() == []


@pytest.mark.parametrize(
    ("status", "message", "setting"),
    [
        (429, "Provider returned error", "cooldown_rate_limit"),
        (503, "Service unavailable", "cooldown_rate_limit"),
        (400, "Invalid request", "cooldown_rejected"),
        (422, "Unprocessable", "cooldown_rejected"),
    ],
)
def test_failures_cool_the_model_for_their_setting(
    upstream: Upstream, status: int, message: str, setting: str
) -> None:
    """Each failure class keeps the model out for its own cooldown; the others are untouched."""
    upstream.sim.set_models(
        [
            ModelScript("bad/a:free", context_length=1000, status=status, error_message=message),
            fast("good/b:free", "ok", context_length=2000),
        ]
    )
    cooldowns = {"cooldown_rate_limit": 1000, "cooldown_rejected": 1000}
    cooldowns[setting] = 600
    # One contender at a time: bad/a ranks first (neither is measured; the smaller context
    # leads), so its failure is handled before good/b starts, however late it is run.
    ask(race_width=1, **cooldowns)
    ask(race_width=1, **cooldowns)
    assert upstream.sim.calls_for("bad/a:free") == 1
    assert upstream.sim.calls_for("good/b:free") == 2

    health = env_router().health
    assert 590 < health.cooling_for("bad/a:free") <= 600


def test_error_chunk_inside_200_counts_by_its_code(upstream: Upstream) -> None:
    """An error event before the first token fails that contender like the same HTTP status."""
    upstream.sim.set_models(
        [
            ModelScript(
                "oops/a:free",
                context_length=1000,
                chunks=("x",),
                error_chunk_after=0,
                error_code=429,
                error_message="Rate limit exceeded upstream",
            ),
            fast("good/b:free", "fine", context_length=2000),
        ]
    )
    kinds: list[str] = []
    stop = events.subscribe(
        lambda e: kinds.append(e.kind) if isinstance(e, events.ContenderFailed) else None
    )
    try:
        # One at a time, oops/a first (the smaller context): its failure is always met.
        text, _ = ask(race_width=1)
    finally:
        stop()
    assert text == "fine"
    assert kinds == ["rate_limited"]  # a 429, not the 502 an error event without a code is
    ask(race_width=1)
    assert upstream.sim.calls_for("oops/a:free") == 1


def test_error_chunk_after_winning_reaches_the_caller(upstream: Upstream) -> None:
    """A mid-answer error is raised to the caller as a litellm error, not swallowed."""
    upstream.sim.set_models(
        [
            ModelScript(
                "mid/a:free",
                chunks=("part", " two", " three"),
                error_chunk_after=1,
                error_code=502,
                error_message="provider crashed",
            )
        ]
    )
    with pytest.raises(litellm.ServiceUnavailableError, match="provider crashed"):
        ask()


@pytest.mark.parametrize(
    ("status", "message", "error", "says"),
    [
        (401, "No auth credentials found", litellm.AuthenticationError, "OPENROUTER_API_KEY"),
        (402, "Insufficient credits", litellm.BadRequestError, "credits"),
    ],
)
def test_account_errors_stop_the_request_at_once(
    upstream: Upstream, status: int, message: str, error: type[Exception], says: str
) -> None:
    """401 and 402 end the request immediately, say what to fix, and cancel the others."""
    upstream.sim.set_models(
        [
            ModelScript("acct/a:free", context_length=1000, status=status, error_message=message),
            ModelScript("slow/b:free", context_length=2000, first_token_delay=30),
        ]
    )
    with pytest.raises(error, match=says):
        ask()
    upstream.wait_idle()
    assert upstream.sim.open_streams == 0
    assert request_tasks() == []


def test_all_models_cooling_fails_fast_without_upstream_calls(upstream: Upstream) -> None:
    """With every model cooling, the next call fails at once, naming counts and the wait."""
    upstream.sim.set_models([ModelScript(f"rl/m{i}:free", status=429) for i in range(3)])
    with pytest.raises(litellm.RateLimitError):
        ask(stream=False, cooldown_rate_limit=120)
    held = [{"role": "user", "content": "held back"}]
    with pytest.raises(
        litellm.ServiceUnavailableError, match=r"all 3 free models .* cooling.*returns in 1[12]\d s"
    ):
        ask(messages=held)
    assert [q for q in upstream.sim.requests if q.body["messages"] == held] == []


def test_paid_models_are_never_called(upstream: Upstream) -> None:
    """A model with a ':free' id but a price, or a paid model, never receives a request."""
    upstream.sim.set_models(
        [
            ModelScript("cheap/a:free", context_length=10, free=False),
            ModelScript("paid/b", context_length=20, free=False),
            fast("free/c:free", "free answer", delay=0.1, context_length=30),
        ]
    )
    text, _ = ask()
    assert text == "free answer"
    assert upstream.sim.called_models() == ["free/c:free"]


def test_malformed_lines_are_skipped(upstream: Upstream) -> None:
    """Garbage SSE lines before the first token neither crash nor count as tokens."""
    upstream.sim.set_models(
        [ModelScript("messy/a:free", malformed_lines=4, chunks=("clean", " text"))]
    )
    text, _ = ask()
    assert text == "clean text"


def test_dropped_connection_before_token_moves_on(upstream: Upstream) -> None:
    """A connection cut before any token is a failure of that model; the race goes on."""
    upstream.sim.set_models(
        [
            ModelScript("drop/a:free", context_length=1000, drop_after_chunks=0),
            fast("good/b:free", "survived", context_length=2000, delay=0.2),
        ]
    )
    text, _ = ask()
    assert text == "survived"


def test_dropped_connection_after_token_is_an_error(upstream: Upstream) -> None:
    """A connection cut mid-answer raises to the caller (never a silently short answer)."""
    upstream.sim.set_models(
        [ModelScript("drop/a:free", chunks=("a", " b", " c"), drop_after_chunks=1)]
    )
    with pytest.raises(litellm.ServiceUnavailableError, match="drop/a:free"):
        ask()


def test_empty_answer_loses(upstream: Upstream) -> None:
    """A stream that ends with no content and no tool call is not a win."""
    upstream.sim.set_models(
        [
            ModelScript("empty/a:free", context_length=1000, empty=True),
            fast("good/b:free", "something", context_length=2000, delay=0.3),
        ]
    )
    text, _ = ask()
    assert text == "something"


def test_reasoning_counts_as_first_token_and_stays_separate(upstream: Upstream) -> None:
    """A reasoning delta wins the race; reasoning never appears in the answer text."""
    # think/a's reasoning starts 1.45 s before plain/b answers, and its answer text comes
    # 1.5 s after plain/b's: it wins only if reasoning counts, by seconds either way.
    upstream.sim.set_models(
        [
            ModelScript(
                "think/a:free",
                context_length=1000,
                reasoning=("Let me", " think"),
                first_token_delay=0.05,
                chunks=("Answer", " here"),
                chunk_delay=1.5,
            ),
            fast("plain/b:free", "plain", context_length=2000, delay=1.5),
        ]
    )
    text, chunks = ask()
    assert text == "Answer here"
    reasoning = "".join(getattr(c, "reasoning_content", None) or "" for c in chunks)
    assert reasoning == "Let me think"
    response = litellm.completion(model="freerouter/auto", messages=MESSAGES)
    assert response.choices[0].message.content == "Answer here"


def test_usage_and_winner_on_streams_and_responses(upstream: Upstream) -> None:
    """Usage arrives on the last chunk; every chunk and the response name the winner."""
    upstream.sim.set_models([fast("w/a:free", "counted words here", prompt_tokens=7)])
    _, chunks = ask(stream_options={"include_usage": True})
    assert all(c.freerouter_model == "w/a:free" for c in chunks)
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 3)
    _, [response] = ask(stream=False)
    assert response.usage.prompt_tokens == 7
    assert response.freerouter_model == "w/a:free"
    assert response.choices[0].finish_reason == "stop"
    assert response.model == "freerouter/auto"  # what was asked for; the winner is above


def test_missing_key_is_an_error_at_request_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a key the call fails, naming OPENROUTER_API_KEY; nothing is sent."""
    monkeypatch.setenv("OPENROUTER_API_BASE", "http://127.0.0.1:9/api/v1")
    with pytest.raises(litellm.AuthenticationError, match="OPENROUTER_API_KEY"):
        ask()
    with pytest.raises(litellm.AuthenticationError, match="OPENROUTER_API_KEY"):
        ask(stream=False)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_proxy_without_a_key_is_a_server_error_not_the_clients(
    monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """Served by a LiteLLM proxy (which passes the client's body as proxy_server_request), a
    missing OpenRouter key is the operator's to fix: a 500 naming OPENROUTER_API_KEY, not a
    401 that tells the client its own virtual key is wrong."""
    monkeypatch.setenv("OPENROUTER_API_BASE", "http://127.0.0.1:9/api/v1")
    with pytest.raises(Exception) as caught:
        response = ask(stream=stream, proxy_server_request={"body": {"model": "freerouter/auto"}})
        for _ in response if stream else ():
            pass
    # A streamed 5xx reaches the caller inside newer litellm's MidStreamFallbackError (503).
    error = getattr(caught.value, "original_exception", None) or caught.value
    assert not isinstance(error, litellm.AuthenticationError)
    assert isinstance(error, litellm.APIError) and error.status_code == 500
    assert "its operator must set OPENROUTER_API_KEY" in str(error)


def test_blanks_around_the_key_are_dropped_and_a_key_with_blanks_inside_is_refused(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key read from a secret file ends in a newline: it is the same key. A key with a blank
    or control character inside cannot go into a header: a clear error naming
    OPENROUTER_API_KEY, not every model cooled as unreachable; nothing is sent."""
    upstream.sim.set_models([fast("k/a:free", "keyed"), fast("k/b:free", "also keyed")])
    monkeypatch.setenv("OPENROUTER_API_KEY", f"  {KEY}\n")
    monkeypatch.setenv("OPENROUTER_API_BASE", f"{upstream.url}\n")
    # One contender: a loser's request could reach the simulator after it is counted.
    assert ask(race_width=1)[0] in ("keyed", "also keyed")
    assert upstream.sim.requests[-1].authorized
    sent = len(upstream.sim.requests)
    for broken in (f"{KEY}\nsk-or-other", f"{KEY[:8]} {KEY[8:]}"):
        monkeypatch.setenv("OPENROUTER_API_KEY", broken)
        for stream in (True, False):
            with pytest.raises(litellm.AuthenticationError, match="OPENROUTER_API_KEY") as info:
                ask(stream=stream)
            assert KEY[8:] not in str(info.value)
        health = env_router().health  # the broken key's own state
        assert [m for m in ("k/a:free", "k/b:free") if health.cooling_for(m) > 0] == []
    assert len(upstream.sim.requests) == sent


def test_arguments_beat_the_environment(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """api_key and api_base arguments override OPENROUTER_API_KEY / OPENROUTER_API_BASE."""
    upstream.sim.set_models([fast("k/a:free", "keyed")])
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-wrong")
    monkeypatch.setenv("OPENROUTER_API_BASE", "http://127.0.0.1:9/api/v1")
    text, _ = ask(api_key=KEY, api_base=upstream.url)
    assert text == "keyed"
    assert upstream.sim.requests[0].authorized


def test_logs_tell_the_story_and_never_the_key(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """The log has the race, the winner with its time, each cooldown; never the key."""
    caplog.set_level(logging.DEBUG, logger="litellm_freerouter")
    # Both race; ok/b's first token waits until rl/a's failure is reported, however late.
    with released_on_failure("rl/a:free") as gate:
        upstream.sim.set_models(
            [
                ModelScript(
                    "rl/a:free",
                    context_length=1000,
                    status=429,
                    error_message="Provider returned error",
                ),
                fast("ok/b:free", "fine", context_length=2000, hold_first_token=gate),
            ]
        )
        ask()
    text = caplog.text
    assert "racing rl/a:free, ok/b:free" in text
    assert "winner ok/b:free: first token in" in text
    assert "dropped rl/a:free: rate_limited" in text and "cooling 90 s" in text
    assert "free-model list refreshed: 2 models" in text
    assert KEY not in text
