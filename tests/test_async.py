"""The async paths and every way a caller can stop: cancellation closes upstream connections."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import litellm
import pytest
from aiohttp.test_utils import TestServer

from litellm_freerouter import _aio, engine, events
from litellm_freerouter.simulator import ModelScript, Simulator

from .conftest import KEY, Upstream, engine_tasks, fast, request_tasks

MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
async def served(
    aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Simulator, TestServer]]:
    """A fake OpenRouter served by pytest-aiohttp on the test's own loop."""
    sim = Simulator([], api_key=KEY)
    server = await aiohttp_server(sim.app())  # TestServer cancels handlers on disconnect
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.setenv("OPENROUTER_API_BASE", str(server.make_url("/api/v1")))
    yield sim, server


async def test_async_stream_and_response(served: tuple[Simulator, TestServer]) -> None:
    """acompletion streams and answers whole, naming the winner, on the caller's loop."""
    sim, _ = served
    sim.set_models([fast("slow/a:free", "late", delay=1.0), fast("fast/b:free", "async hello")])
    stream = await litellm.acompletion(model="freerouter/auto", messages=MESSAGES, stream=True)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "async hello"
    assert {c.freerouter_model for c in chunks} == {"fast/b:free"}
    response = await litellm.acompletion(model="freerouter/auto", messages=MESSAGES)
    assert response.choices[0].message.content == "async hello"
    assert response.freerouter_model == "fast/b:free"
    await sim.wait_idle()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_freerouter_hedged_asks_one_model_while_auto_races(
    served: tuple[Simulator, TestServer], stream: bool
) -> None:
    """freerouter/hedged through acompletion: from empty state the first-ranked model answers
    alone (an unmeasured model is given seconds before a hedge), where freerouter/auto starts
    both (test_routing checks the sync paths)."""
    sim, _ = served
    sim.set_models([fast("one/a:free", "one"), fast("two/b:free", "two")])

    async def winners(model: str) -> set[str]:
        if not stream:
            response = await litellm.acompletion(model=model, messages=MESSAGES)
            return {response.freerouter_model}
        chunks = await litellm.acompletion(model=model, messages=MESSAGES, stream=True)
        return {chunk.freerouter_model async for chunk in chunks}

    assert await winners("freerouter/hedged") == {sim.requests[0].model}
    assert len(sim.requests) == 1
    await sim.wait_idle()
    await winners("freerouter/auto")
    assert len(sim.requests) == 3
    await sim.wait_idle()


async def test_concurrent_async_requests(served: tuple[Simulator, TestServer]) -> None:
    """Many concurrent acompletion streams each get their whole answer."""
    sim, _ = served
    sim.set_models([fast("a/a:free", "one two three four", delay=0.05)])

    async def one(i: int) -> str:
        stream = await litellm.acompletion(
            model="freerouter/auto", messages=[{"role": "user", "content": f"n{i}"}], stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    answers = await asyncio.gather(*(one(i) for i in range(20)))
    assert answers == ["one two three four"] * 20
    await sim.wait_idle()


async def test_breaking_out_of_async_stream_closes_upstream(
    served: tuple[Simulator, TestServer],
) -> None:
    """Closing an async stream after the first chunk disconnects the winner at once."""
    sim, _ = served
    sim.set_models(
        [ModelScript("long/a:free", chunks=tuple(f" w{i}" for i in range(200)), chunk_delay=0.05)]
    )
    stream = await litellm.acompletion(model="freerouter/auto", messages=MESSAGES, stream=True)
    async for _ in stream:
        break
    await stream.aclose() if hasattr(stream, "aclose") else await stream.completion_stream.aclose()
    await sim.wait_idle(3)
    assert sim.closed_by_client == 1
    assert request_tasks() == []


async def test_caller_timeout_cancels_the_race(served: tuple[Simulator, TestServer]) -> None:
    """asyncio.wait_for around acompletion cancels every contender and closes them."""
    sim, _ = served
    sim.set_models(
        [ModelScript(f"stall/{i}:free", stall_before_first_token=True) for i in range(3)]
    )
    call = asyncio.ensure_future(litellm.acompletion(model="freerouter/auto", messages=MESSAGES))
    try:
        # Time out only once all three are in flight, however long the catalogue took.
        await sim.wait_requests(3)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call, 0.1)
        assert call.cancelled()
    finally:
        call.cancel()
    await sim.wait_idle(3)
    assert sim.closed_by_client == 3
    assert request_tasks() == []


async def test_cancelled_stream_consumer_closes_upstream(
    served: tuple[Simulator, TestServer],
) -> None:
    """Cancelling the task that reads a stream (a proxy client leaving) closes the winner."""
    sim, _ = served
    sim.set_models(
        [ModelScript("long/a:free", chunks=tuple(f" x{i}" for i in range(500)), chunk_delay=0.02)]
    )
    got_one = asyncio.Event()

    async def consume() -> None:
        stream = await litellm.acompletion(model="freerouter/auto", messages=MESSAGES, stream=True)
        async for _ in stream:
            got_one.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_one.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sim.wait_idle(3)
    assert sim.closed_by_client == 1
    assert request_tasks() == []


# The caller's own timeout, not first_token_timeout (30 s here), ends these calls. A warm-up
# call fetches the catalogue first, so the timeout need only cover the stalled model's POST.
CALLERS_TIMEOUT = "caller's timeout of 2 s"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_litellm_timeout_argument_bounds_the_wait(
    served: tuple[Simulator, TestServer], stream: bool
) -> None:
    """litellm's timeout= turns a silent race into litellm.Timeout and closes everything."""
    sim, _ = served
    sim.set_models([fast("stall/a:free", "warm")])
    await litellm.acompletion(model="freerouter/auto", messages=MESSAGES)
    sim.set_models([ModelScript("stall/a:free", stall_before_first_token=True)])
    with pytest.raises(litellm.Timeout) as caught:
        response = await litellm.acompletion(
            model="freerouter/auto", messages=MESSAGES, timeout=2, stream=stream
        )
        if stream:
            async for _ in response:
                pass
    assert CALLERS_TIMEOUT in str(caught.value)
    await sim.wait_idle(3)
    assert sim.closed_by_client == 1
    assert request_tasks() == []


def test_breaking_out_of_sync_stream_closes_upstream(upstream: Upstream) -> None:
    """Leaving a sync stream early (aider's Ctrl-C path) disconnects the winner."""
    upstream.sim.set_models(
        [ModelScript("long/a:free", chunks=tuple(f" y{i}" for i in range(300)), chunk_delay=0.02)]
    )
    stream = litellm.completion(model="freerouter/auto", messages=MESSAGES, stream=True)
    for _ in stream:
        break
    stream.completion_stream.close()
    upstream.wait_idle(3)
    assert upstream.sim.closed_by_client == 1
    assert request_tasks() == []


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_sync_timeout_argument(upstream: Upstream, stream: bool) -> None:
    """A sync call with timeout= (aider passes one) raises litellm.Timeout and leaves
    nothing running."""
    upstream.sim.set_models([fast("stall/a:free", "warm")])
    litellm.completion(model="freerouter/auto", messages=MESSAGES)
    upstream.sim.set_models([ModelScript("stall/a:free", stall_before_first_token=True)])
    with pytest.raises(litellm.Timeout) as caught:
        response = litellm.completion(
            model="freerouter/auto", messages=MESSAGES, timeout=2, stream=stream
        )
        if stream:
            for _ in response:
                pass
    assert CALLERS_TIMEOUT in str(caught.value)
    upstream.wait_idle(3)
    assert upstream.sim.closed_by_client == 1
    assert request_tasks() == []


def test_abandoned_sync_stream_is_cancelled_once_the_caller_stops_reading(
    upstream: Upstream,
) -> None:
    """The sync twin of the async test above: a reader that stops without closing (and keeps
    its reference) is detected by flow control within idle_timeout, upstream closed."""
    upstream.sim.set_models(
        [ModelScript("long/a:free", chunks=tuple(f" z{i}" for i in range(2000)), chunk_delay=0.005)]
    )
    stream = litellm.completion(
        model="freerouter/auto", messages=MESSAGES, stream=True, idle_timeout=0.3
    )
    for _ in stream:
        break  # and never read again, never close
    upstream.wait_idle(5)
    assert upstream.sim.closed_by_client == 1
    assert upstream.sim.requests[0].outcome == "client_closed"
    del stream


def test_sync_calls_from_threads_and_in_a_row(upstream: Upstream) -> None:
    """The sync API works from many threads at once and many times in a row."""
    upstream.sim.set_models([fast("t/a:free", "thread safe answer")])
    results: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            r = litellm.completion(model="freerouter/auto", messages=MESSAGES)
            with lock:
                results.append(r.choices[0].message.content)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["thread safe answer"] * 40
    for _ in range(30):
        stream = litellm.completion(model="freerouter/auto", messages=MESSAGES, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "thread safe answer"
    upstream.wait_idle()
    assert request_tasks() == []


async def test_sync_call_inside_a_running_loop(upstream: Upstream) -> None:
    """Calling the sync API from inside a running event loop does not deadlock."""
    upstream.sim.set_models([fast("l/a:free", "no deadlock")])
    r = litellm.completion(model="freerouter/auto", messages=MESSAGES)
    assert r.choices[0].message.content == "no deadlock"
    stream = litellm.completion(model="freerouter/auto", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "no deadlock"


async def test_abandoned_stream_is_cancelled_once_the_caller_stops_reading(
    served: tuple[Simulator, TestServer],
) -> None:
    """A caller that stops reading without closing (litellm 1.81's proxy on a disconnect) is
    detected by flow control within idle_timeout: the race is cancelled, upstream closed."""
    sim, _ = served
    sim.set_models(
        [ModelScript("long/a:free", chunks=tuple(f" z{i}" for i in range(2000)), chunk_delay=0.005)]
    )
    stream = await litellm.acompletion(
        model="freerouter/auto", messages=MESSAGES, stream=True, idle_timeout=0.3
    )
    async for _ in stream:
        break  # and never read again, never close
    await sim.wait_idle(5)
    assert sim.closed_by_client == 1
    assert sim.requests[0].outcome == "client_closed"
    del stream


async def test_async_races_run_on_the_callers_loop(upstream: Upstream) -> None:
    """acompletion races on the caller's own loop (no thread hop per step, which made many
    concurrent streams wait for the interpreter lock); the sync API races on the engine's."""
    upstream.sim.set_models([fast("here/a:free", "where am I")])
    started_on: list[int] = []

    def seen(event: events.Event) -> None:
        if isinstance(event, events.ContenderStarted):
            started_on.append(threading.get_ident())

    unsubscribe = events.subscribe(seen)
    try:
        stream = await litellm.acompletion(model="freerouter/auto", messages=MESSAGES, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "where am I"
        response = await litellm.acompletion(model="freerouter/auto", messages=MESSAGES)
        assert response.choices[0].message.content == "where am I"
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: litellm.completion(model="freerouter/auto", messages=MESSAGES)
        )
    finally:
        unsubscribe()
    engine_thread = engine.get_engine()._thread.ident
    assert started_on == [threading.get_ident()] * 2 + [engine_thread]
    # The catalogue, fetched for the first async request, is refreshed from the engine's loop,
    # and the key's quota is read there (engine_tasks runs after what was handed over before).
    assert any(name.startswith("freerouter-catalog-refresh") for name in engine_tasks())
    (router,) = engine.get_engine().state["routers"].values()
    assert router._quota_task is not None
    assert router._quota_task.get_loop() is engine.get_engine().loop
    assert upstream.sim.models_fetches == 1
    upstream.wait_idle()
    assert request_tasks() == []


# Short-lived loops run in a fresh interpreter: litellm leaves logging coroutines of its own
# behind on every loop that ends, and they would be reported in whichever test comes next.
LOOPS = """
import asyncio, gc, json, sys, weakref
import litellm
from litellm_freerouter import engine

MESSAGES = [{"role": "user", "content": "Say hello"}]
out = {"texts": [], "closed": [], "kept": []}

async def one(stream):
    if stream:
        chunks = await litellm.acompletion(model="freerouter/auto", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in chunks])
    else:
        response = await litellm.acompletion(model="freerouter/auto", messages=MESSAGES)
        text = response.choices[0].message.content
    return text, engine.session()

sessions, loops = [], []
for stream in (True, False, True):
    text, session = asyncio.run(one(stream))
    out["texts"].append(text)
    out["closed"].append(session.closed)
    sessions.append(session)
    loops.append(weakref.ref(session._loop))
out["distinct"] = len({id(s) for s in sessions})
del session, sessions
gc.collect()
# Nothing of freerouter's keeps an ended loop (litellm's logging worker may, for a while).
out["kept"] = [loop() in engine._loop_sessions for loop in loops if loop() is not None]

# A loop closed without shutdown_asyncgens cannot close its session; the next loop drops it.
bare = asyncio.new_event_loop()
out["texts"].append(bare.run_until_complete(one(False))[0])
bare.close()
out["bare_kept_before"] = bare in engine._loop_sessions
out["texts"].append(asyncio.run(one(False))[0])
out["bare_kept_after"] = bare in engine._loop_sessions
print(json.dumps(out))
"""


def run_script(code: str) -> Any:
    """Run ``code`` in a fresh interpreter with the test's environment; its last line, JSON."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_short_lived_loops_close_their_sessions_and_are_let_go(upstream: Upstream) -> None:
    """asyncio.run per call, as scripts do: every run gets an answer, the session of each
    ended loop is closed with it, nothing of freerouter's keeps the loop, and the catalogue is
    fetched once for all of them. A loop closed without shutting down cannot close its session,
    but the next loop to ask for one drops it, so that closed loops do not pile up."""
    upstream.sim.set_models([fast("short/a:free", "short lived")])
    out = run_script(LOOPS)
    assert out["texts"] == ["short lived"] * 5
    assert out["closed"] == [True] * 3
    assert out["distinct"] == 3
    assert out["kept"] == [False] * len(out["kept"])
    assert out["bare_kept_before"] is True
    assert out["bare_kept_after"] is False
    assert upstream.sim.models_fetches == 1
    upstream.wait_idle()


async def test_one_loop_keeps_one_session(served: tuple[Simulator, TestServer]) -> None:
    """Requests on one long-lived loop (the proxy's) share one session and its connections."""
    sim, _ = served
    sim.set_models([fast("keep/a:free", "kept")])
    first = engine.session()
    for _ in range(3):
        response = await litellm.acompletion(model="freerouter/auto", messages=MESSAGES)
        assert response.choices[0].message.content == "kept"
    assert engine.session() is first
    assert not first.closed
    await sim.wait_idle()


THREADS = """
import asyncio, json, threading
import litellm
from litellm_freerouter import engine

results, errors = [], []
start = threading.Barrier(8)

async def one(i):
    stream = await litellm.acompletion(
        model="freerouter/auto", messages=[{"role": "user", "content": f"n{i}"}], stream=True
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream])

async def batch(t):
    return await asyncio.gather(*(one(t * 10 + i) for i in range(5)))

def worker(t):
    start.wait()
    try:
        results.extend(asyncio.run(batch(t)))
    except BaseException as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join(60)
left = len(engine._loop_sessions)
print(json.dumps({"results": results, "errors": errors, "sessions_left": left}))
"""


def test_threads_with_loops_of_their_own_race_at_once_from_a_cold_start(
    upstream: Upstream,
) -> None:
    """Eight threads, each with its own loop and five concurrent streams, start together before
    the catalogue is known: one fetch serves them all, every stream gets its answer, and every
    loop's session is gone with its loop."""
    upstream.sim.set_models(
        [fast("t/a:free", "many loops", delay=0.05), fast("t/b:free", "slower", delay=0.5)]
    )
    upstream.sim.models_delay = 0.3  # all of them arrive while the first fetch is under way
    out = run_script(THREADS)
    assert out["errors"] == []
    assert out["results"] == ["many loops"] * 40
    assert out["sessions_left"] == 0
    assert upstream.sim.models_fetches == 1
    upstream.wait_idle()


async def test_closing_a_local_stream_gives_way_to_a_cancellation() -> None:
    """A stream closed while its reader is cancelled ends the reader cancelled, even while the
    stream's own cleanup still runs: the cancellation is never swallowed."""
    cleaning, release, cleaned = asyncio.Event(), asyncio.Event(), asyncio.Event()
    went_on = asyncio.Event()

    async def items() -> AsyncIterator[int]:
        try:
            yield 1
            await asyncio.Event().wait()
        finally:  # a cleanup that outlasts the first cancellation: it ends only on release
            cleaning.set()
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    pass
            cleaned.set()

    async def reader() -> None:
        stream = engine.stream_local(items)
        assert await stream.__anext__() == 1
        await stream.aclose()  # waits (bounded) for the stubborn cleanup
        went_on.set()

    task = asyncio.create_task(reader())
    await asyncio.wait_for(cleaning.wait(), 5)
    task.cancel()
    await asyncio.wait({task}, timeout=engine.CANCEL_TIMEOUT / 2)
    try:
        assert task.done(), "the reader waited out the stream's cleanup despite its cancellation"
        assert task.cancelled()
        assert not went_on.is_set()
    finally:
        release.set()
        await asyncio.wait_for(cleaned.wait(), 5)


# --- every layer closes the one below it ----------------------------------------------------
# A generator left at a ``yield`` by ``async for`` is not closed by it: the loop finalises it a
# turn or more later, after the caller has gone on (and never, if the loop ends first). Each
# layer closes the one below it itself, so that a closed stream has closed its upstream by the
# time ``aclose()`` returns. The checks below come right after the close, with no await between.


async def _endless(closed: list[int], cleanup: float) -> AsyncGenerator[int, None]:
    """1, 2, 3... without ever awaiting (a read-ahead fills up at once and waits at a yield);
    closed, it sleeps ``cleanup`` seconds, then notes how far it got in ``closed``."""
    n = 0
    try:
        while True:
            n += 1
            yield n
    finally:
        await asyncio.sleep(cleanup)
        closed.append(n)


async def test_a_local_stream_closes_its_generator_before_aclose_returns() -> None:
    """The read-ahead task, stopped while it waits for the reader to catch up (its generator
    left at a yield), closes the generator before the stream's ``aclose()`` returns."""
    closed: list[int] = []
    # A cleanup that takes a turn of the loop, as the layers' do.
    stream = engine.stream_local(lambda: _endless(closed, cleanup=0.0))
    assert await stream.__anext__() == 1  # handed over at once (see the test below)
    assert await stream.__anext__() == 2  # after which the task reads ahead, up to the limit
    await stream.aclose()
    assert closed == [engine.HIGH_WATER + 1]  # the limit past the one item taken by then


async def test_a_local_stream_hands_over_its_first_item_before_reading_ahead() -> None:
    """The first item (the first token the caller is timing) reaches the caller before the
    read-ahead task takes a second one, even when the rest is already there: a burst of
    chunks buffered behind the first token must not delay it."""
    closed: list[int] = []
    stream = engine.stream_local(lambda: _endless(closed, cleanup=0.0))
    taken = []
    async for item in stream:
        taken.append(item)
        break
    await stream.aclose()
    assert taken == [1] and closed == [1]


def test_a_sync_stream_closes_its_generator_before_close_returns() -> None:
    """The same for the sync bridge (aider's path): closing the iterator waits (bounded) for
    the generator's own cleanup, not only for the engine's task to stop."""
    closed: list[int] = []
    # A cleanup that takes a while, as closing a socket can.
    stream = engine.stream_sync(lambda: _endless(closed, cleanup=0.05))
    assert next(stream) == 1
    stream.close()  # type: ignore[attr-defined]
    # Wherever the engine's thread had got to: it hands the first item over, then reads ahead.
    assert len(closed) == 1 and 1 <= closed[0] <= engine.HIGH_WATER + 1


def test_a_sync_stream_collected_on_the_engines_thread_does_not_stall_it() -> None:
    """A sync stream left in a reference cycle is closed by whichever thread the garbage
    collector runs in, the engine's own among them. Closing there must not wait for the
    engine's task to stop: that task can only run on the thread that waits, which would stand
    still for CANCEL_TIMEOUT with every other request of the engine."""
    closed: list[int] = []
    stream = engine.stream_sync(lambda: _endless(closed, cleanup=0))
    assert next(stream) == 1

    async def close_here() -> float:
        started = time.monotonic()
        stream.close()  # type: ignore[attr-defined]
        return time.monotonic() - started

    took = engine.get_engine().submit(close_here()).result(engine.CANCEL_TIMEOUT * 2)
    assert took < 1, f"the engine's thread stood still {took:.1f} s"
    deadline = time.monotonic() + 5
    while not closed and time.monotonic() < deadline:
        time.sleep(0.01)  # polling, with a deadline: the task ends on the engine a turn later
    assert closed, "the stream's generator was never closed"


async def _first_then_close(sim: Simulator, stream: AsyncGenerator[Any, None]) -> Any:
    """Take the first item of ``stream`` (an answer of LONG's), close it, and check that the
    winner was closed by the time ``aclose()`` returned; returns that first item."""
    finished: list[events.Finished] = []

    def on_event(event: events.Event) -> None:
        if isinstance(event, events.Finished):
            finished.append(event)

    unsubscribe = events.subscribe(on_event)
    try:
        first = await stream.__anext__()
        await stream.aclose()
        assert [(f.model, f.ok) for f in finished] == [("long/a:free", False)]
    finally:
        unsubscribe()
    await sim.wait_idle(3)
    assert sim.requests[0].outcome == "client_closed"
    return first


LONG = ModelScript("long/a:free", chunks=tuple(f" u{i}" for i in range(200)), chunk_delay=0.05)


async def test_closing_the_routers_stream_closes_the_winner_before_it_returns(
    served: tuple[Simulator, TestServer],
) -> None:
    """Router.stream, closed at a yield, closes its race's winner before ``aclose()`` returns."""
    from litellm_freerouter.config import load_settings
    from litellm_freerouter.provider import _router

    sim, _ = served
    sim.set_models([LONG])
    settings = load_settings()
    model, _ = await _first_then_close(
        sim, _router(settings).stream({"messages": MESSAGES}, settings)
    )
    assert model == "long/a:free"


async def test_closing_the_providers_chunks_closes_the_winner_before_it_returns(
    served: tuple[Simulator, TestServer],
) -> None:
    """The provider's chunk generator, closed at a yield, closes the router's stream (and so
    the winner) before ``aclose()`` returns."""
    from litellm_freerouter.config import load_settings
    from litellm_freerouter.provider import _generic_chunks

    sim, _ = served
    sim.set_models([LONG])
    first = await _first_then_close(sim, _generic_chunks({"messages": MESSAGES}, load_settings()))
    assert first["text"] == " u0"


# --- a timeout never swallows a cancellation -----------------------------------------------
# asyncio.wait_for on Python 3.10/3.11 returns the result when its caller is cancelled in the
# turn the awaited task finishes (gh-86296). Ours runs the awaitable in the caller's task; both
# of its forms (3.11+ and 3.10's) are checked here on whichever Python runs the suite.

WAIT_FORS = [_aio.wait_for, _aio.wait_for_310]
WAIT_FOR_IDS = ["wait_for", "wait_for_310"]


@pytest.mark.parametrize("wait_for", WAIT_FORS, ids=WAIT_FOR_IDS)
async def test_a_cancellation_as_the_answer_arrives_is_not_lost(wait_for: Any) -> None:
    """The caller is cancelled (a client hanging up) in the turn its answer arrives: it ends
    cancelled, rather than going on as if nothing happened."""
    went_on: list[str] = []
    caller: asyncio.Task[None] | None = None

    async def answer() -> str:
        await asyncio.sleep(0)
        assert caller is not None
        asyncio.get_running_loop().call_soon(caller.cancel)  # lands as the answer is handed over
        return "answer"

    async def ask() -> None:
        went_on.append(await wait_for(answer(), 30))
        await asyncio.sleep(0)
        went_on.append("and on")

    caller = asyncio.ensure_future(ask())
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert went_on in ([], ["answer"])


@pytest.mark.parametrize("wait_for", WAIT_FORS, ids=WAIT_FOR_IDS)
async def test_wait_for_answers_times_out_and_passes_cancellations_on(wait_for: Any) -> None:
    """In time: the result. Too late: asyncio.TimeoutError, the awaitable cancelled and its
    cleanup run. Cancelled from outside: CancelledError, not a timeout."""
    assert await wait_for(asyncio.sleep(0, "in time"), 5) == "in time"
    assert await wait_for(asyncio.sleep(0, "no limit"), None) == "no limit"
    cleaned: list[str] = []

    async def never() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append("cleaned")

    with pytest.raises(asyncio.TimeoutError):
        await wait_for(never(), 0.05)
    assert cleaned == ["cleaned"]
    started = asyncio.Event()

    async def waits() -> None:
        started.set()
        await wait_for(never(), 30)

    task = asyncio.ensure_future(waits())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["cleaned", "cleaned"]


def test_closing_the_engine_closes_its_loop() -> None:
    """A loop left unclosed is closed by its __del__ during interpreter shutdown, which on
    Python 3.13 can run after its sockets were finalised and print a traceback at exit (seen
    on `freerouter models`); the engine closes its loop when it stops."""
    own = engine.Engine()
    own.close()
    assert own.loop.is_closed()
