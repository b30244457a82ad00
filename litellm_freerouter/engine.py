"""Where races run: on the caller's own event loop when it has one, else on the engine's.

Sync callers (aider) have no loop to race on: their races run on one persistent event loop in a
background thread, the engine, and chunks cross back through the bridges below, which also carry
cancellation the other way (when a caller stops reading, its race is cancelled and its
connections are closed before the bridge returns).

Async callers (``acompletion``, the proxy) race on their own loop, with an aiohttp session of
that loop's own (:func:`session`): a hop to another thread for every step of a race waits for the
interpreter lock, which a loop busy with many streams holds most of the time (at 50 concurrent
streams that tripled the time to the first token).  What is shared between loops, the
catalogue with its refresh task and the background reads, stays on the engine's loop.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import os
import queue
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp

from ._aio import wait_for

T = TypeVar("T")

# Cleanup after a cancelled request is bounded by this many seconds.
CANCEL_TIMEOUT = 5.0
# How often a blocked sync caller wakes up, so that Ctrl-C is never held up.
POLL = 0.25

_ITEM, _END, _ERROR = 0, 1, 2
# A caller may fall this many chunks behind before the producer waits for it...
HIGH_WATER = 64
# ...and by default, one that takes nothing for this long while chunks wait has gone away
# (litellm 1.81's proxy drops a disconnected client's stream without closing it).
CONSUMER_TIMEOUT = 30.0


class ConsumerGone(Exception):
    """The caller stopped reading without closing the stream."""


class _Credit:
    """Flow control between a producer on ``loop`` and its caller, in another thread unless
    ``local``."""

    __slots__ = ("_local", "_loop", "_space", "_timeout", "consumed", "produced")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, timeout: float | None, *, local: bool = False
    ) -> None:
        self._loop = loop
        self._local = local
        self._timeout = timeout
        self._space: asyncio.Event | None = None
        self.produced = 0
        self.consumed = 0

    async def sent(self) -> None:
        """On the producer's loop: one more item is waiting; wait while the caller is far
        behind."""
        self.produced += 1
        if self.produced - self.consumed < HIGH_WATER:
            return
        if self._space is None:
            self._space = asyncio.Event()
        self._space.clear()
        if self.produced - self.consumed < HIGH_WATER:  # the caller caught up meanwhile
            return
        try:
            await wait_for(self._space.wait(), self._timeout)
        except asyncio.TimeoutError:
            raise ConsumerGone(f"the caller took nothing for {self._timeout:g} s") from None

    def taken(self) -> None:
        """In the caller's thread: one item was taken."""
        self.consumed += 1
        space = self._space
        caught_up = self.produced - self.consumed <= HIGH_WATER // 2
        if space is not None and caught_up and not space.is_set():
            if self._local:
                space.set()
                return
            try:
                self._loop.call_soon_threadsafe(space.set)
            except RuntimeError:  # the engine is shutting down
                pass


class Engine:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.state: dict[str, Any] = {}  # owned by the loop: routers and the like
        self._thread = threading.Thread(target=self._run, name="freerouter-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def in_engine_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        if self.in_engine_thread():
            raise RuntimeError(
                "freerouter's sync API was called from its own event-loop thread; use the async API"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def session(self) -> aiohttp.ClientSession:
        """The engine loop's session; only to be used on the engine's loop."""
        if self._session is None or self._session.closed:
            self._session = _new_session()
        return self._session

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        self._closers.append(closer)

    def forget_closer(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Undo :meth:`on_close` for ``closer`` (closed already, or by someone else)."""
        with contextlib.suppress(ValueError):
            self._closers.remove(closer)

    async def _aclose(self) -> None:
        for closer in reversed(self._closers):
            try:
                await wait_for(closer(), 2)
            except Exception:  # closing is best effort; never block interpreter exit
                pass
        if self._session is not None:
            await self._session.close()

    def close(self, timeout: float = 3.0) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._aclose(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            # Closed now, not by the loop's __del__ during interpreter shutdown, which can run
            # after its self-pipe sockets were finalised ("Invalid file descriptor: -1").
            with contextlib.suppress(Exception):
                self.loop.close()


def _new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=15),
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        auto_decompress=True,
    )


# One session per caller's loop, with the generator that closes it when the loop shuts down.
_loop_sessions: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncGenerator[None, None]]
] = weakref.WeakKeyDictionary()
_loop_sessions_lock = threading.Lock()


async def _closing(
    loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession
) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        with _loop_sessions_lock:  # the entry holds the loop (sessions do): let it go
            entry = _loop_sessions.get(loop)
            if entry is not None and entry[0] is session:
                del _loop_sessions[loop]
        await session.close()


def session() -> aiohttp.ClientSession:
    """The session for the running loop: the engine's own, or one per caller's loop.

    A caller's loop may end at any time (``asyncio.run`` per call), and nothing tells a library
    when.  But every loop that ends through ``asyncio.run`` (or ``shutdown_asyncgens``) first
    closes the async generators started on it: the session is tied to one such generator,
    started here, whose ``finally`` closes it.
    """
    loop = asyncio.get_running_loop()
    engine = get_engine()
    if loop is engine.loop:
        return engine.session()
    with _loop_sessions_lock:
        entry = _loop_sessions.get(loop)
        if entry is not None and not entry[0].closed:
            return entry[0]
        for ended in [other for other in _loop_sessions if other.is_closed()]:
            del _loop_sessions[ended]  # closed without shutting down: let the loop go at least
        fresh = _new_session()
        closer = _closing(loop, fresh)
        try:  # runs to its ``yield``; starting it registers it with the loop's shutdown
            closer.__anext__().send(None)
        except StopIteration:
            pass
        _loop_sessions[loop] = (fresh, closer)
        return fresh


_engine: Engine | None = None
_engine_lock = threading.Lock()


def get_engine() -> Engine:
    """The process's engine, started on first use (and again in a forked child)."""
    global _engine
    with _engine_lock:
        if _engine is None or _engine.pid != os.getpid():
            _engine = Engine()
        return _engine


def shutdown() -> None:
    global _engine
    with _engine_lock:
        engine, _engine = _engine, None
    if engine is not None and engine.pid == os.getpid():
        engine.close()


atexit.register(shutdown)


# --- bridges ----------------------------------------------------------------------------------


class _Handoff:
    """A coroutine handed to the engine so that Ctrl-C at any moment, even while it is being
    handed over, still cancels it and waits (bounded) for its cleanup."""

    def __init__(self, engine: Engine, coro: Coroutine[Any, Any, T], finished: threading.Event):
        self._engine = engine
        self._coro = coro
        self._finished = finished
        self.future: concurrent.futures.Future[Any] | None = None

    def start(self) -> concurrent.futures.Future[Any]:
        self.future = self._engine.submit(self._coro)
        return self.future

    def stop(self) -> None:
        if self._finished.is_set():
            return
        if self.future is not None:
            self.future.cancel()
        else:  # interrupted while handing over: the task may or may not exist yet
            self._engine.loop.call_soon_threadsafe(_cancel_task_of, self._coro, self._finished)
        if self._engine.in_engine_thread():
            # Closed on the engine's own thread (the garbage collector collects in any thread):
            # the task can only end once this returns, so waiting would stall the engine.
            return
        self._finished.wait(CANCEL_TIMEOUT)


def _cancel_task_of(coro: Coroutine[Any, Any, Any], finished: threading.Event) -> None:
    """On the engine: cancel the task running ``coro``, or close it if it never started."""
    for task in asyncio.all_tasks():
        if task.get_coro() is coro:
            task.cancel()
            return
    coro.close()
    finished.set()


async def _pump(
    make: Callable[[], AsyncGenerator[T, None]],
    put: Callable[[tuple[int, Any]], None],
    credit: _Credit,
) -> None:
    """Run the generator, handing each item, its end or its error to ``put``.

    The generator is closed here, before its end, error or cancellation is handed on: left at
    a ``yield`` by ``async for``, it would be closed only when the loop finalised it, a turn or
    more later (and its connections with it)."""
    try:
        async with contextlib.aclosing(make()) as items:
            async for item in items:
                put((_ITEM, item))
                if credit.produced == 0:
                    # The first token is what the caller is waiting for: let it have it now.
                    # Otherwise, with a burst already buffered, this task would first read
                    # ahead up to HIGH_WATER items without giving the caller a turn.
                    await _hand_over()
                await credit.sent()
        put((_END, None))
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        put((_ERROR, exc))


async def _hand_over() -> None:
    """Give the loop a turn (an async caller on it takes the item just put) and the GIL a
    chance (a sync caller in another thread takes it)."""
    await asyncio.sleep(0)
    time.sleep(0)  # noqa: ASYNC251  (zero: gives up the GIL, never blocks the loop)


def stream_sync(
    make: Callable[[], AsyncGenerator[T, None]],
    *,
    first_item_timeout: float | None = None,
    consumer_timeout: float | None = CONSUMER_TIMEOUT,
) -> Iterator[T]:
    """Iterate an async generator, run on the engine, from plain blocking code."""
    engine = get_engine()
    items: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
    finished = threading.Event()
    credit = _Credit(engine.loop, consumer_timeout)

    async def pump() -> None:
        try:
            await _pump(make, items.put, credit)
        finally:
            finished.set()

    handoff = _Handoff(engine, pump(), finished)
    try:
        handoff.start()
        waited = 0.0
        got_first = False
        while True:
            try:
                kind, value = items.get(timeout=POLL)
            except queue.Empty:
                waited += POLL
                if (
                    not got_first
                    and first_item_timeout is not None
                    and waited >= first_item_timeout
                ):
                    raise TimeoutError(
                        f"no answer within the caller's timeout of {first_item_timeout:g} s"
                    ) from None
                continue
            got_first = True
            if kind == _ITEM:
                credit.taken()
                yield value
            elif kind == _END:
                return
            else:
                raise value
    finally:
        handoff.stop()


async def stream_local(
    make: Callable[[], AsyncGenerator[T, None]],
    *,
    consumer_timeout: float | None = CONSUMER_TIMEOUT,
) -> AsyncGenerator[T, None]:
    """Iterate an async generator run as a task of its own on the caller's loop.

    The task reads ahead (up to ``HIGH_WATER`` items), so a caller that stops reading without
    closing the stream, as litellm 1.81's proxy does when its client leaves, still ends the
    race after ``consumer_timeout`` and closes its connections, as on the engine.
    """
    loop = asyncio.get_running_loop()
    items: collections.deque[tuple[int, Any]] = collections.deque()
    wake = asyncio.Event()
    credit = _Credit(loop, consumer_timeout, local=True)

    def put(entry: tuple[int, Any]) -> None:
        items.append(entry)
        wake.set()

    task = loop.create_task(_pump(make, put, credit), name="freerouter-stream")
    try:
        while True:
            while not items:
                wake.clear()
                await wake.wait()
            kind, value = items.popleft()
            if kind == _ITEM:
                credit.taken()
                yield value
            elif kind == _END:
                return
            else:
                raise value
    finally:
        if not task.done():
            task.cancel()
            # Bounded, and given up at once if the reader is cancelled meanwhile (the task,
            # already cancelled, still closes its connections): never swallow that.
            await asyncio.wait({task}, timeout=CANCEL_TIMEOUT)


async def _signalling(make: Callable[[], Awaitable[T]], done: Callable[[], None]) -> T:
    try:
        result: T = await make()
        return result
    finally:
        done()


def call_sync(make: Callable[[], Awaitable[T]], *, timeout: float | None = None) -> T:
    """Run a coroutine on the engine and wait for it, staying responsive to Ctrl-C."""
    finished = threading.Event()
    handoff = _Handoff(get_engine(), _signalling(make, finished.set), finished)
    waited = 0.0
    try:
        future = handoff.start()
        while True:
            try:
                result: T = future.result(timeout=POLL)
                return result
            except concurrent.futures.TimeoutError:
                waited += POLL
                if timeout is not None and waited >= timeout:
                    raise TimeoutError(
                        f"no answer within the caller's timeout of {timeout:g} s"
                    ) from None
    finally:
        handoff.stop()


async def call_on(home: asyncio.AbstractEventLoop, make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on another thread's loop (the engine's) from this one; cancelling the
    caller cancels it and waits (bounded) until its connections are closed."""
    here = asyncio.get_running_loop()
    finished = asyncio.Event()

    def done() -> None:
        with contextlib.suppress(RuntimeError):
            here.call_soon_threadsafe(finished.set)

    future = asyncio.run_coroutine_threadsafe(_signalling(make, done), home)
    try:
        return await asyncio.wrap_future(future)
    finally:
        if not finished.is_set() and not future.done():
            future.cancel()
        if not finished.is_set():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(finished.wait(), CANCEL_TIMEOUT)
