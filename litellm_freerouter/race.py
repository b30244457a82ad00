"""Starting, judging and cancelling contenders: Happy Eyeballs for free models.

A :class:`Contender` is one streaming POST to one model.  :func:`race` starts contenders, keeps
up to ``width`` of them in flight (replacing each one that fails at once, so a quick failure
never makes the caller wait for the slow ones), and hands out the first that delivers a real
token.  Every other contender is cancelled and its connection closed before ``race`` returns;
the winner's stream is read by the caller afterwards, outside any task set.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from ._aio import wait_for
from .catalog import FreeModel
from .errors import (
    Failure,
    StreamStalled,
    UpstreamError,
    classify,
    classify_error_chunk,
    decode_error_body,
)
from .sse import Delta, SSEDecoder, is_done, parse_data

log = logging.getLogger("litellm_freerouter")

# How long cleanup may take before we stop waiting for it (a cancelled contender only has to
# close a socket).
CLEANUP_TIMEOUT = 2.0
# At most this much of an error body is read, so a hostile upstream cannot exhaust memory.
MAX_ERROR_BODY = 64 * 1024


def _json_default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None) or getattr(value, "dict", None)
    if callable(dump):
        return dump()
    raise TypeError(f"cannot send a {type(value).__name__} to OpenRouter")


def encode_body(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, default=_json_default, ensure_ascii=False, allow_nan=False).encode()


class Contender:
    """One model's attempt at one request."""

    def __init__(
        self,
        model: FreeModel,
        *,
        session: aiohttp.ClientSession,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        started: float,
        idle_timeout: float | None,
    ) -> None:
        if not model.id.endswith(":free"):  # the last guard: never call a paid model
            raise ValueError(f"refusing to call {model.id!r}: it is not a free model")
        self.model = model
        self._session = session
        self._url = url
        self._headers = headers
        # The key, to redact from whatever the upstream says back.
        self._secret = headers.get("Authorization", "").partition("Bearer ")[2].strip() or None
        self._body = body
        self.started = started
        self.first_token_at: float | None = None
        self._idle_timeout = idle_timeout
        self._response: aiohttp.ClientResponse | None = None
        self._decoder = SSEDecoder()
        self._ready: list[Delta] = []  # decoded, not yet handed out
        self._pending: deque[str] = deque()  # event payloads, not yet decoded
        self._eof = False
        self.finished_cleanly = False

    @property
    def id(self) -> str:
        return self.model.id

    def fail(self, kind: str, message: str, scope: str = "model") -> UpstreamError:
        return UpstreamError(Failure(kind, scope, message, self.id))  # type: ignore[arg-type]

    async def until_first_token(self) -> None:
        """Connect and read until a real token arrives; raises UpstreamError on any failure."""
        try:
            await self._connect()
            while True:
                delta = await self._next_delta()
                if delta is None:
                    raise self.fail("empty", "the stream ended without any content")
                self._ready.append(delta)
                if delta.is_token:
                    self.first_token_at = asyncio.get_running_loop().time()
                    return
        except BaseException:
            self.close()
            raise

    async def _connect(self) -> None:
        try:
            response = await self._session.post(self._url, data=self._body, headers=self._headers)
        except asyncio.TimeoutError:
            raise self.fail("network", "timed out connecting to OpenRouter") from None
        except aiohttp.ClientError as exc:
            raise self.fail("network", f"cannot reach OpenRouter: {exc}") from None
        self._response = response
        if response.status != 200:
            body = decode_error_body(await read_error_body(response))
            raise UpstreamError(
                classify(
                    response.status,
                    body,
                    dict(response.headers),
                    model=self.id,
                    secret=self._secret,
                )
            )

    def _decoded(self) -> Delta | None:
        """The next meaningful chunk among the events already read (no waiting); None when
        they are used up, or the stream has ended (``_eof``)."""
        while self._pending:
            raw = self._pending.popleft()
            if is_done(raw):
                self._eof = self.finished_cleanly = True
                self._pending.clear()
                return None
            delta = parse_data(raw)
            if delta is None:
                log.debug("%s: skipped an event that is not a chunk", self.id)
                continue
            if delta.error is not None:
                raise UpstreamError(
                    classify_error_chunk(delta.error, model=self.id, secret=self._secret)
                )
            if delta.is_token or delta.finish_reason or delta.usage:
                return delta
        return None

    async def _next_delta(self) -> Delta | None:
        """The next meaningful chunk; None at the end of the stream."""
        while True:
            delta = self._decoded()
            if delta is not None or self._eof:
                return delta
            response = self._response
            if self._eof or response is None:
                return None
            try:
                data = await response.content.readany()
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise self.fail("network", f"connection lost mid-stream: {exc!r}") from None
            if data:
                self._pending.extend(self._decoder.feed(data))
            else:
                self._eof = True
                self._pending.extend(self._decoder.flush())

    async def deltas(self) -> AsyncGenerator[Delta, None]:
        """The winner's whole answer: what arrived before it won, then the rest as it comes."""
        buffered, self._ready = self._ready, []
        for early in buffered:
            yield early
        loop = asyncio.get_running_loop()
        stalled = False  # the idle timer closed the stream (it may still have handed over data)
        while True:
            ready = self._decoded()  # read already: nothing to wait for, no timer to set
            if ready is not None:
                yield ready
                continue
            if self._eof and not self._pending:
                return
            if stalled:
                # The timer fired in the very turn a read returned: that data was delivered,
                # but the stream is closed, and its end never came.
                raise self._stalled()
            watchdog = _Watchdog(loop, self._idle_timeout, self.close)
            try:
                delta = await self._next_delta()
            except UpstreamError:
                if watchdog.fired:
                    raise self._stalled() from None
                raise
            finally:
                watchdog.cancel()
            stalled = watchdog.fired
            if delta is None:
                if stalled:
                    raise self._stalled()
                return
            yield delta

    def _stalled(self) -> StreamStalled:
        seconds = self._idle_timeout or 0
        return StreamStalled(
            Failure(
                "stalled",
                "model",
                f"{self.id} sent nothing for {seconds:g} s after it had started answering"
                " (idle_timeout, FREEROUTER_IDLE_TIMEOUT)",
                self.id,
            )
        )

    def close(self) -> None:
        """Drop the connection at once (it is never reused mid-stream)."""
        response, self._response = self._response, None
        if response is not None:
            if self.finished_cleanly:
                response.release()
            else:
                response.close()


async def read_error_body(response: aiohttp.ClientResponse) -> bytes:
    """The start of an error response's body (bounded in size and time; empty if it fails)."""
    try:
        return await wait_for(response.content.read(MAX_ERROR_BODY), 10)
    except (asyncio.TimeoutError, aiohttp.ClientError):
        return b""


class _Watchdog:
    """Closes the stream if no chunk arrives in time; a timer, not a task per chunk."""

    __slots__ = ("_handle", "_on_fire", "fired")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, timeout: float | None, on_fire: Callable[[], None]
    ) -> None:
        self.fired = False
        self._on_fire = on_fire
        self._handle = loop.call_later(timeout, self._fire) if timeout else None

    def _fire(self) -> None:
        self.fired = True
        self._on_fire()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


@dataclass(frozen=True, slots=True)
class RaceOutcome:
    winner: Contender
    failures: tuple[Failure, ...]
    started: int
    # (model, seconds) of each contender still silent when the winner's first token came.
    lost: tuple[tuple[str, float], ...] = ()


# Account limits that refuse new requests but not those already accepted.
_LIMITS = ("daily_quota", "minute_limit")


class AccountStop(Exception):
    """Internal: an account-wide failure ends the race at once."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


async def race(
    candidates: Sequence[FreeModel],
    *,
    make: Callable[[FreeModel, float], Contender],
    width: int,
    first_token_timeout: float | None,
    hedge_after: Callable[[FreeModel], float],
    on_start: Callable[[Contender], None],
    on_failure: Callable[[Failure], None],
    budget: int | None = None,
) -> RaceOutcome:
    """Race ``candidates`` in order; returns the first to deliver a token.

    ``hedge_after(model)`` is how long to wait after starting ``model`` before the next one is
    added while it is still in flight (0 starts ``width`` contenders at once).  A failed
    contender is replaced at once, as long as fewer than ``budget`` were started (None: no
    bound).  Raises :class:`AccountStop` for account-wide failures and
    returns failures through ``on_failure`` as they happen; when every candidate failed, raises
    :class:`UpstreamError` chains are summarised by the caller from ``on_failure``.
    """
    loop = asyncio.get_running_loop()
    queue = list(candidates)
    running: dict[asyncio.Task[None], Contender] = {}
    made: list[Contender] = []  # every contender started; all but the winner are closed at the end
    returned: Contender | None = None
    failures: list[Failure] = []
    next_start_at = loop.time()
    started = 0

    def start_next() -> None:
        nonlocal next_start_at, started
        model = queue.pop(0)
        now = loop.time()
        contender = make(model, now)
        made.append(contender)
        task = loop.create_task(contender.until_first_token(), name=f"freerouter:{model.id}")
        running[task] = contender
        started += 1
        next_start_at = now + hedge_after(model)
        on_start(contender)

    def room_to_start() -> bool:
        """Another candidate may start: one is left, under the width and the budget."""
        return bool(queue) and len(running) < width and (budget is None or started < budget)

    held: Failure | None = None  # an account limit met while others were in flight

    def record(failure: Failure) -> None:
        nonlocal held
        failures.append(failure)
        on_failure(failure)
        if failure.scope != "account":
            return
        if failure.kind in _LIMITS and running:
            # The requests already in flight were accepted before the limit was reached (and
            # are counted): let them finish the race, but start no other.
            held = held or failure
            queue.clear()
            return
        raise AccountStop(failure)

    try:
        while True:
            # Keep `width` in flight; a hedged race adds one only when its time has come, or
            # when nothing is in flight at all. The clock is read afresh, so that with no hedge
            # delay every contender starts in this same pass rather than a loop turn apart.
            while room_to_start() and (not running or loop.time() >= next_start_at):
                start_next()
            now = loop.time()
            if not running:
                if held is not None:
                    raise AccountStop(held)
                raise AllFailed(failures)
            deadlines = [
                c.started + first_token_timeout
                for c in running.values()
                if first_token_timeout is not None
            ]
            if room_to_start():
                deadlines.append(next_start_at)
            wait = max(0.0, min(deadlines) - now) if deadlines else None
            done, _ = await asyncio.wait(running, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            winners: list[Contender] = []
            for task in done:
                contender = running.pop(task)
                exc = task.exception()
                if exc is None:
                    winners.append(contender)
                elif isinstance(exc, UpstreamError):
                    record(exc.failure)
                else:
                    record(
                        Failure("network", "model", f"{type(exc).__name__}: {exc}", contender.id)
                    )
            if winners:
                # The earliest first token wins; the others are closed on the way out.
                returned = min(winners, key=lambda c: c.first_token_at or 0.0)
                won_at = returned.first_token_at or loop.time()
                lost = tuple((c.id, won_at - c.started) for c in running.values())
                return RaceOutcome(returned, tuple(failures), started, lost)
            if first_token_timeout is not None:
                now = loop.time()
                for task, contender in list(running.items()):
                    if now >= contender.started + first_token_timeout:
                        running.pop(task)
                        task.cancel()
                        await _settle({task})
                        record(
                            Failure(
                                "slow",
                                "model",
                                f"no first token within {first_token_timeout:g} s"
                                " (first_token_timeout, FREEROUTER_FIRST_TOKEN_TIMEOUT)",
                                contender.id,
                            )
                        )
    finally:
        for task in running:
            task.cancel()
        # Close them here too: a contender can have its first token in the very turn the race
        # is cancelled (or stopped by another contender's account-wide failure), so its task
        # ends cleanly, out of reach of the cancellation, with its response open.
        for contender in made:
            if contender is not returned:
                contender.close()
        try:
            await _settle(set(running))
        except BaseException:  # cancelled while the losers settle: the winner is not handed on
            if returned is not None:
                returned.close()
            raise


class AllFailed(Exception):
    def __init__(self, failures: Sequence[Failure]) -> None:
        super().__init__(f"{len(failures)} failures")
        self.failures = tuple(failures)


async def _settle(tasks: set[asyncio.Task[None]]) -> None:
    """Wait (bounded) for cancelled contenders to close their connections; never swallow our own
    cancellation."""
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=CLEANUP_TIMEOUT)
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
    for task in pending:
        log.warning("contender %s did not stop within %.0f s", task.get_name(), CLEANUP_TIMEOUT)
