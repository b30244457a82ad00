"""An answer whose model breaks off after its first token is carried on by another model."""

from __future__ import annotations

import logging
from typing import Any

import litellm
import pytest

from litellm_freerouter import events
from litellm_freerouter.router import with_prefill
from litellm_freerouter.simulator import ModelScript

from .conftest import Upstream, cool, cool_once_listed, fast, request_tasks

MESSAGES = [{"role": "user", "content": "Tell me about racing"}]
ANSWER = "Racing free models gives the first token of the quickest one"
WORDS = tuple(w if i == 0 else " " + w for i, w in enumerate(ANSWER.split(" ")))


def breaking(model_id: str, **fault: Any) -> ModelScript:
    """The whole answer, but the model breaks off mid-way (``fault``)."""
    return ModelScript(model_id, chunks=WORDS, **fault)


def stream_text(**kwargs: Any) -> tuple[str, list[Any]]:
    response = litellm.completion(model="freerouter/auto", messages=MESSAGES, stream=True, **kwargs)
    chunks = list(response)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def last_body(upstream: Upstream, model_id: str) -> dict[str, Any]:
    return [r.body for r in upstream.sim.requests if r.model == model_id][-1]


@pytest.mark.parametrize(
    "fault",
    [{"stall_after_chunks": 3}, {"drop_after_chunks": 3}, {"error_chunk_after": 3}],
    ids=["stall", "reset", "error-event"],
)
def test_stream_is_carried_on_from_what_was_delivered(
    upstream: Upstream, fault: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The caller reads one whole answer: the broken model's start, then the next model's
    continuation, which was asked to go on from exactly the delivered text."""
    upstream.sim.set_models(
        [
            breaking("break/a:free", **fault),
            ModelScript("steady/b:free", chunks=WORDS, first_token_delay=0.4),
        ]
    )
    with caplog.at_level(logging.INFO, logger="litellm_freerouter"):
        text, chunks = stream_text(race_width=2, idle_timeout=0.3)
    assert text == ANSWER
    # Each chunk names the model that wrote it.
    by_model = [
        (c.freerouter_model, c.choices[0].delta.content)
        for c in chunks
        if c.choices and c.choices[0].delta.content
    ]
    broken = [piece for model, piece in by_model if model == "break/a:free"]
    # A stall or an error event keeps all three words. A reset can lose the last bytes that
    # reached the socket just before it: aiohttp raises the reset before handing them over.
    if "drop_after_chunks" in fault:
        assert 1 <= len(broken) <= 3
    else:
        assert len(broken) == 3
    assert broken == list(WORDS[: len(broken)])
    assert [m for m, _ in by_model[: len(broken)]] == ["break/a:free"] * len(broken)
    assert {m for m, _ in by_model[len(broken) :]} == {"steady/b:free"}
    # The next model was asked to go on from exactly the text the caller already has.
    delivered = "".join(broken)
    sent = last_body(upstream, "steady/b:free")["messages"]
    assert sent[:-1] == MESSAGES
    assert sent[-1] == {"role": "assistant", "content": delivered}
    assert "break/a:free failed mid-answer" in caplog.text
    assert f"from its {len(delivered)} characters" in caplog.text
    upstream.wait_idle()
    assert request_tasks() == []


def test_whole_answer_starts_afresh_without_the_broken_part(upstream: Upstream) -> None:
    """Nothing reached the caller yet: the next model answers from the start, no prefill."""
    upstream.sim.set_models(
        [
            breaking("break/a:free", drop_after_chunks=2),
            fast("steady/b:free", "A fresh whole answer", delay=0.4),
        ]
    )
    response = litellm.completion(
        model="freerouter/auto", messages=MESSAGES, race_width=2, idle_timeout=0.3
    )
    assert response.choices[0].message.content == "A fresh whole answer"
    assert response.freerouter_model == "steady/b:free"
    assert last_body(upstream, "steady/b:free")["messages"] == MESSAGES
    upstream.wait_idle()
    assert request_tasks() == []


async def test_async_stream_is_carried_on(upstream: Upstream) -> None:
    upstream.sim.set_models(
        [
            # Its first token waits for steady's request, so the loser is always counted.
            breaking("break/a:free", stall_after_chunks=4, first_token_after_requests=2),
            ModelScript("steady/b:free", chunks=WORDS, first_token_delay=0.4),
        ]
    )
    response = await litellm.acompletion(
        model="freerouter/auto", messages=MESSAGES, stream=True, race_width=2, idle_timeout=0.3
    )
    text = ""
    async for chunk in response:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text == ANSWER
    assert upstream.sim.calls_for("steady/b:free") == 2  # the cancelled loser, then the rest
    assert last_body(upstream, "steady/b:free")["messages"][-1]["role"] == "assistant"


def waits_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.levelname for r in caplog.records if "waiting" in r.getMessage()]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_wait_before_anything_reached_the_caller_is_a_warning(
    upstream: Upstream, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    """Waiting for a cooling model while the caller has nothing is a WARNING: aider shows
    those, and without it looks hung for up to wait_for_model seconds."""
    upstream.sim.set_models([fast("only/a:free", "worth the wait")])
    cooling = cool_once_listed("only/a:free", 0.3)
    try:
        with caplog.at_level(logging.INFO, logger="litellm_freerouter"):
            response = litellm.completion(model="freerouter/auto", messages=MESSAGES, stream=stream)
            if stream:
                list(response)
    finally:
        cooling()
    assert waits_logged(caplog) == ["WARNING"]


def test_a_wait_while_an_answer_is_carried_on_is_news_not_a_warning(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """The only model left to carry an answer on is cooling: the wait is an INFO, as a
    WARNING would print inside the answer aider is streaming."""
    upstream.sim.set_models(
        [
            breaking("break/a:free", drop_after_chunks=3),
            ModelScript("steady/b:free", chunks=WORDS, first_token_delay=0.4),
        ]
    )

    def on_event(event: events.Event) -> None:
        if isinstance(event, events.Resumed):
            cool("steady/b:free", 0.3)  # before the race that carries the answer on

    stop = events.subscribe(on_event)
    try:
        with caplog.at_level(logging.INFO, logger="litellm_freerouter"):
            text, _ = stream_text(race_width=2)
    finally:
        stop()
    assert text == ANSWER
    assert waits_logged(caplog) == ["INFO"]


def test_resume_zero_keeps_the_break_as_an_error(upstream: Upstream) -> None:
    upstream.sim.set_models(
        [
            # Its first token waits for steady's request, so the loser is always counted.
            breaking("break/a:free", stall_after_chunks=3, first_token_after_requests=2),
            fast("steady/b:free", delay=0.4),
        ]
    )
    with pytest.raises(litellm.Timeout, match="break/a:free"):
        stream_text(race_width=2, idle_timeout=0.3, resume=0)
    assert upstream.sim.calls_for("steady/b:free") == 1  # only as the race's loser


def test_each_break_costs_one_resume_then_the_error_stands(upstream: Upstream) -> None:
    """Two models that both break: with resume=1 the second break is the caller's error."""
    upstream.sim.set_models(
        [
            breaking("break/a:free", stall_after_chunks=2),
            breaking("break/b:free", stall_after_chunks=4, first_token_delay=0.2),
            fast("steady/c:free", delay=0.4, context_length=10**6),
        ]
    )
    with pytest.raises(litellm.Timeout, match="break/b:free"):
        stream_text(race_width=1, idle_timeout=0.3, resume=1, explore=0)
    assert upstream.sim.calls_for("steady/c:free") == 0


def test_no_model_left_to_carry_on_says_both(upstream: Upstream) -> None:
    """The only model broke: the error is still the break (litellm.Timeout, naming the model),
    and says why it could not be mended."""
    upstream.sim.set_models([breaking("break/a:free", stall_after_chunks=3)])
    with pytest.raises(litellm.Timeout, match="no other model could carry the answer on"):
        stream_text(idle_timeout=0.3)
    upstream.wait_idle()
    assert request_tasks() == []


def answer_of(stream: bool, **kwargs: Any) -> str:
    if stream:
        return stream_text(**kwargs)[0]
    response = litellm.completion(model="freerouter/auto", messages=MESSAGES, **kwargs)
    return str(response.choices[0].message.content)


def contenders_started(call: Any) -> tuple[list[str], Any]:
    """The models ``call()`` started contenders on, in order, and what it returned."""
    started: list[str] = []

    def note(event: object) -> None:
        if isinstance(event, events.ContenderStarted):
            started.append(event.model)

    unsubscribe = events.subscribe(note)
    try:
        result = call()
    finally:
        unsubscribe()
    return started, result


# The winner breaks off at once; two slower models lose the first race.
RACE_OF_THREE = [
    breaking("break/a:free", drop_after_chunks=2),
    ModelScript("steady/b:free", chunks=WORDS, first_token_delay=1.0, context_length=2000),
    ModelScript("steady/c:free", chunks=WORDS, first_token_delay=1.2, context_length=3000),
]


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_max_attempts_bounds_every_race_of_one_request(upstream: Upstream, stream: bool) -> None:
    """FREEROUTER_MAX_ATTEMPTS counts the upstream requests of the whole request, the races
    that carry an answer on included: with 4, the carry-on may start one model."""
    upstream.sim.set_models(RACE_OF_THREE)
    started, text = contenders_started(
        lambda: answer_of(stream, race_width=3, max_attempts=4, explore=0)
    )
    assert text == ANSWER
    assert len(started) == 4 and started[3] in {"steady/b:free", "steady/c:free"}, started
    upstream.wait_idle()
    assert request_tasks() == []


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_an_answer_is_not_carried_on_past_max_attempts(upstream: Upstream, stream: bool) -> None:
    """With FREEROUTER_MAX_ATTEMPTS 3, the first race of three used them all: the break stands,
    saying why it was not carried on, and nothing more is sent."""
    upstream.sim.set_models(RACE_OF_THREE)
    with pytest.raises(litellm.ServiceUnavailableError) as caught:  # a connection reset
        contenders_started(lambda: answer_of(stream, race_width=3, max_attempts=3, explore=0))
    message = str(caught.value)
    assert "break/a:free" in message and "no other model could carry the answer on" in message
    assert (
        "has sent the 3 upstream requests it may send (max_attempts, FREEROUTER_MAX_ATTEMPTS"
        in message
    )
    upstream.wait_idle()
    assert request_tasks() == []


def test_a_model_that_failed_the_request_is_not_asked_again_to_carry_it_on(
    upstream: Upstream,
) -> None:
    """A model that refused this request (a context-length 400: benched for this request
    only, healthy for others) is not asked again by the race that carries the answer on."""
    upstream.sim.set_models(
        [
            # Its first token comes well after the 400 below, well before steady's.
            breaking("break/a:free", drop_after_chunks=2, first_token_delay=0.5),
            ModelScript(
                "tight/c:free",
                context_length=3000,
                status=400,
                error_message="This endpoint's maximum context length is 3000 tokens.",
            ),
            ModelScript("steady/b:free", chunks=WORDS, first_token_delay=2.0, context_length=2000),
        ]
    )
    started, text = contenders_started(lambda: answer_of(True, race_width=3, explore=0))
    assert text == ANSWER
    assert started.count("tight/c:free") == 1, started
    assert started.count("steady/b:free") == 2, started  # lost the first race, carried it on


def test_prefill_extends_a_callers_own_prefill() -> None:
    body = {"model": "x", "messages": [*MESSAGES, {"role": "assistant", "content": "Sure:"}]}
    assert with_prefill(body, " racing")["messages"][-1] == {
        "role": "assistant",
        "content": "Sure: racing",
    }
    assert body["messages"][-1]["content"] == "Sure:"  # the caller's body is not changed
    plain = with_prefill({"messages": MESSAGES}, "Racing")
    assert plain["messages"] == [*MESSAGES, {"role": "assistant", "content": "Racing"}]


def test_a_started_tool_call_is_never_carried_on(upstream: Upstream) -> None:
    """Half a tool call cannot be continued by another model: the break is the error."""
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    upstream.sim.set_models(
        [
            ModelScript(
                "tools/a:free",
                chunks=(),
                tool_calls=(call,),
                drop_after_tool_calls=True,
                first_token_after_requests=2,  # so the loser's request is always counted
            ),
            ModelScript("tools/b:free", chunks=(), tool_calls=(call,), first_token_delay=0.4),
        ]
    )
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    with pytest.raises(litellm.ServiceUnavailableError, match="tools/a:free"):
        list(
            litellm.completion(
                model="freerouter/auto",
                messages=MESSAGES,
                stream=True,
                tools=tools,
                race_width=2,
            )
        )
    assert upstream.sim.calls_for("tools/b:free") == 1  # only as the race's loser
    upstream.wait_idle()
    assert request_tasks() == []
