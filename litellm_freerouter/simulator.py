"""An in-process fake OpenRouter that speaks its real wire format.

The test suite, ``freerouter demo`` (a live race with no network) and the benchmarks all use it.
Each simulated model follows a :class:`ModelScript`. A :class:`Simulator` serves every model under
``/api/v1`` and records what it was asked, so tests can make their assertions from outside.
:class:`SimulatorThread` serves it from a background thread for synchronous callers.

Scripted delays are real sleeps on the server (they *are* the model's behaviour), scaled by
``time_scale``. Stalls wait for the client to go away, which requires aiohttp's handler
cancellation: ``aiohttp_client``'s TestServer and :class:`SimulatorThread` turn it on.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, NoReturn, TypeVar

from aiohttp import web

__all__ = [
    "ModelScript",
    "RecordedRequest",
    "Simulator",
    "SimulatorThread",
    "demo_models",
]

_T = TypeVar("_T")

KEEPALIVE = b": OPENROUTER PROCESSING\n\n"
DONE = b"data: [DONE]\n\n"

# Lines a sloppy upstream really sends; every one must be skipped by a tolerant SSE reader.
_GARBAGE = (
    b"data: {not json\n\n",
    b"data: \n\n",
    b"event: x\n\n",
    b"\xff\xfe\x00 stray bytes\n\n",
)

_DEFAULT_PARAMETERS = (
    "tools",
    "tool_choice",
    "max_tokens",
    "temperature",
    "stop",
    "response_format",
    "structured_outputs",
    "reasoning",
)

_DEFAULT_MESSAGES = {
    400: "Provider returned error",
    401: "No auth credentials found",
    402: "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
    403: "Your chosen model requires moderation and your input was flagged",
    408: "Request timed out",
    429: "Provider returned error",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "No instances available",
}

_CREATED = 1_735_689_600  # a fixed catalogue date keeps /models byte-stable between fetches

_QUOTA_MESSAGE = (
    "Rate limit exceeded: free-models-per-day. "
    "Add 10 credits to unlock 1000 free model requests per day"
)


@dataclass
class ModelScript:
    """How one simulated model behaves; every field but ``id`` has a default."""

    id: str
    context_length: int = 32768
    max_completion_tokens: int | None = None
    supported_parameters: tuple[str, ...] = _DEFAULT_PARAMETERS
    input_modalities: tuple[str, ...] = ("text",)
    free: bool = True
    status: int = 200
    error_message: str = ""
    error_metadata: dict[str, Any] | None = None
    error_headers: dict[str, str] = field(default_factory=dict)
    headers_delay: float = 0.0
    keepalives: int = 0
    keepalive_interval: float = 0.0
    first_token_delay: float = 0.0
    # Hold the first token (after first_token_delay) until the simulator has recorded this
    # many chat requests since the last set_models(), refused ones included: a test can make
    # every contender of a race reach the simulator before any of them wins. The client
    # leaving or the server shutting down ends the wait, as it ends a stall.
    first_token_after_requests: int = 0
    role_chunk: bool = True
    reasoning: tuple[str, ...] = ()
    chunks: tuple[str, ...] = ("Hello", " from", " the", " simulator.")
    chunk_delay: float = 0.0
    tool_calls: tuple[dict[str, Any], ...] = ()
    stall_before_first_token: bool = False
    # Tests only: the first token (after first_token_delay) also waits until this is set, from
    # any thread, so a test can order it after what it sees happen elsewhere (a failure the
    # router reported) rather than after a guessed delay that a loaded machine can overrun.
    hold_first_token: threading.Event | None = None
    stall_after_chunks: int | None = None
    error_chunk_after: int | None = None
    error_code: int | str = 502
    drop_after_chunks: int | None = None
    drop_after_tool_calls: bool = False  # the connection drops once the tool calls are out
    malformed_lines: int = 0  # garbage lines before the first token
    malformed_between: bool = False  # a garbage line between every two pieces, too
    finish_reason: str | None = None
    empty: bool = False
    prompt_tokens: int = 11
    endpoint_latency_ms: float | None = None
    provider_name: str = "SimProvider"


@dataclass
class RecordedRequest:
    """One POST /chat/completions as the simulator saw it (never the API key)."""

    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    authorized: bool
    started: float
    ended: float | None = None
    # "pending" while running, then "ok", "status:<n>", "client_closed", "dropped", "stalled"
    # (ended by server shutdown), "error_chunk" or "server_shutdown".
    outcome: str = "pending"


class _Abort(Exception):
    """Ends a response by cutting the connection, as a crashed upstream would."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


# Set when the app shuts down, so that stalls and long sleeps end at once instead of holding
# the runner's graceful shutdown for its whole timeout.
_CLOSING = web.AppKey("freerouter_simulator_closing", asyncio.Event)


async def _release_waiters(app: web.Application) -> None:
    app[_CLOSING].set()


def _dumps(obj: Any) -> bytes:
    # Compact, like the JSON.stringify output OpenRouter sends.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _error(
    status: int,
    message: str,
    metadata: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message}
    if metadata is not None:
        error["metadata"] = metadata
    body: dict[str, Any] = {"error": error, **(extra or {})}
    return web.Response(
        body=_dumps(body), status=status, headers=headers, content_type="application/json"
    )


def _next_utc_midnight_ms() -> int:
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
    midnight = tomorrow.replace(hour=0, minute=0, second=0, microsecond=0)
    return int(midnight.timestamp() * 1000)


def _pricing(script: ModelScript) -> dict[str, str]:
    if script.free:
        return {"prompt": "0", "completion": "0", "request": "0", "image": "0"}
    return {"prompt": "0.00000015", "completion": "0.0000006", "request": "0", "image": "0"}


def _display_name(script: ModelScript) -> str:
    author, _, slug = script.id.partition("/")
    base = slug.split(":", 1)[0]
    suffix = " (free)" if script.free else ""
    return f"{author.title()}: {base}{suffix}"


def _architecture(script: ModelScript) -> dict[str, Any]:
    return {
        "input_modalities": list(script.input_modalities),
        "output_modalities": ["text"],
        "modality": "+".join(script.input_modalities) + "->text",
        "tokenizer": "Other",
    }


def _catalogue_entry(script: ModelScript) -> dict[str, Any]:
    return {
        "id": script.id,
        "canonical_slug": script.id.split(":", 1)[0],
        "name": _display_name(script),
        "created": _CREATED,
        "description": "A simulated model served by litellm_freerouter.simulator.",
        "context_length": script.context_length,
        "architecture": _architecture(script),
        "pricing": _pricing(script),
        "top_provider": {
            "context_length": script.context_length,
            "max_completion_tokens": script.max_completion_tokens,
            "is_moderated": False,
        },
        "per_request_limits": None,
        "supported_parameters": list(script.supported_parameters),
        "expiration_date": None,
    }


def _endpoint_entry(script: ModelScript) -> dict[str, Any]:
    ms = script.endpoint_latency_ms
    latency = None if ms is None else {"p50": ms, "p75": ms * 1.3, "p90": ms * 1.8, "p99": ms * 3.0}
    return {
        "name": f"{script.provider_name} | {script.id}",
        "model_name": _display_name(script),
        "provider_name": script.provider_name,
        "tag": script.provider_name.lower(),
        "quantization": "unknown",
        "context_length": script.context_length,
        "max_completion_tokens": script.max_completion_tokens,
        "max_prompt_tokens": None,
        "pricing": _pricing(script),
        "status": 0,
        "supported_parameters": list(script.supported_parameters),
        "uptime_last_30m": 99.0,
        "latency_last_30m": latency,
    }


def _split(text: str) -> list[str]:
    """Two or three fragments, as providers cut tool arguments across chunks."""
    if not text:
        return []
    parts = 3 if len(text) >= 6 else 2 if len(text) >= 2 else 1
    step = -(-len(text) // parts)
    return [text[i : i + step] for i in range(0, len(text), step)]


def _tool_call_deltas(index: int, call: dict[str, Any]) -> list[dict[str, Any]]:
    arguments = call.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    head = {
        "index": index,
        "id": call.get("id") or f"call_sim_{index}",
        "type": "function",
        "function": {"name": call["name"], "arguments": ""},
    }
    fragments = [
        {"tool_calls": [{"index": index, "function": {"arguments": part}}]}
        for part in _split(arguments)
    ]
    return [{"tool_calls": [head]}, *fragments]


def _reasoning_delta(text: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": "",
        "reasoning": text,
        "reasoning_details": [
            {"type": "reasoning.text", "text": text, "format": "unknown", "index": 0}
        ],
    }


def _continue_from(script: ModelScript, body: Mapping[str, Any]) -> ModelScript:
    """A final assistant message is a prefill: the model goes on from where it ends (OpenRouter's
    assistant prefill), so the script's answer is cut to what follows it. A prefill that is not
    the start of the script's answer is ignored, as some models do."""
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if not isinstance(last, Mapping) or last.get("role") != "assistant":
        return script
    prefill = last.get("content")
    answer = "".join(script.chunks)
    if not isinstance(prefill, str) or not prefill or not answer.startswith(prefill):
        return script
    rest: list[str] = []
    done = 0
    for chunk in script.chunks:
        if done + len(chunk) > len(prefill):
            rest.append(chunk[max(0, len(prefill) - done) :])
        done += len(chunk)
    return replace(script, chunks=tuple(rest), reasoning=())


def _hits(limit: int | None, sent: int, at_end: bool) -> bool:
    # A limit past the last chunk fires once all content is out, so scripts need not count.
    return limit is not None and (limit == sent or (at_end and limit > sent))


class _Generation:
    """The id, timestamps and envelopes shared by every chunk of one answer."""

    def __init__(self, script: ModelScript) -> None:
        self.script = script
        self.created = int(time.time())
        self.id = f"gen-{self.created}-{secrets.token_hex(10)}"

    @property
    def finish_reason(self) -> str:
        if self.script.finish_reason is not None:
            return self.script.finish_reason
        return "tool_calls" if self.script.tool_calls and not self.script.empty else "stop"

    def envelope(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider": self.script.provider_name,
            "model": self.script.id,
            "object": kind,
            "created": self.created,
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {
            "index": 0,
            "delta": delta,
            "finish_reason": finish_reason,
            "native_finish_reason": finish_reason,
            "logprobs": None,
        }
        return {**self.envelope("chat.completion.chunk"), "choices": [choice]}

    def usage(self, completion_tokens: int) -> dict[str, int]:
        prompt = self.script.prompt_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }

    def error(self) -> dict[str, Any]:
        code = self.script.error_code
        fallback = (
            _DEFAULT_MESSAGES.get(code, "Provider returned error")
            if isinstance(code, int)
            else "Provider returned error"
        )
        return {"code": code, "message": self.script.error_message or fallback}


class _Sink:
    """Where generated pieces go: an SSE stream, or a collector for a non-streaming answer."""

    async def raw(self, data: bytes) -> None:
        raise NotImplementedError

    async def delta(self, delta: dict[str, Any]) -> None:
        raise NotImplementedError


class _StreamSink(_Sink):
    def __init__(self, resp: web.StreamResponse, gen: _Generation) -> None:
        self.resp = resp
        self.gen = gen

    async def raw(self, data: bytes) -> None:
        # StreamResponse.write drains, so each event leaves at once, like a real stream.
        await self.resp.write(data)

    async def event(self, obj: dict[str, Any]) -> None:
        await self.resp.write(b"data: " + _dumps(obj) + b"\n\n")

    async def delta(self, delta: dict[str, Any]) -> None:
        await self.event(self.gen.chunk(delta))


class _Collector(_Sink):
    def __init__(self) -> None:
        self.content = ""
        self.reasoning = ""
        self.tool_calls: dict[int, dict[str, Any]] = {}

    async def raw(self, data: bytes) -> None:
        pass  # keep-alives and garbage only exist on the wire of a stream

    async def delta(self, delta: dict[str, Any]) -> None:
        self.content += delta.get("content") or ""
        self.reasoning += delta.get("reasoning") or ""
        for part in delta.get("tool_calls", ()):
            call = self.tool_calls.setdefault(
                part["index"],
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            call["id"] = part.get("id") or call["id"]
            function = part["function"]
            call["function"]["name"] = function.get("name") or call["function"]["name"]
            call["function"]["arguments"] += function.get("arguments", "")

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.content,
            "refusal": None,
            "reasoning": self.reasoning or None,
        }
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return message


class Simulator:
    """A fake OpenRouter: scripted models, an optional key and daily quota, and a record."""

    def __init__(
        self,
        models: Sequence[ModelScript] = (),
        *,
        daily_quota: int | None = None,
        api_key: str | None = None,
        time_scale: float = 1.0,
    ) -> None:
        self.models: dict[str, ModelScript] = {}
        self.daily_quota = daily_quota
        self.quota_used = 0
        self.api_key = api_key
        self.time_scale = time_scale
        self.models_status = 200
        self.models_delay = 0.0
        self.key_status = 200  # of GET /key
        self.key_delay = 0.0
        # Optional: how a model behaves for one request body (its script and the body in, the
        # script to play out): for tests whose upstream must answer requests differently.
        self.per_request: Callable[[ModelScript, dict[str, Any]], ModelScript] | None = None
        self.requests: list[RecordedRequest] = []
        self._requests_before_models = 0
        self.models_fetches = 0
        self.open_streams = 0
        self.peak_open_streams = 0
        self.closed_by_client = 0
        # asyncio primitives belong to one loop; a simulator may outlive a test's loop.
        self._idle: asyncio.Event | None = None
        self._idle_loop: asyncio.AbstractEventLoop | None = None
        # Set (and replaced) whenever a chat request is recorded; see _arrival_event.
        self._arrival: asyncio.Event | None = None
        self._arrival_loop: asyncio.AbstractEventLoop | None = None
        self.set_models(models)

    def set_models(self, models: Sequence[ModelScript]) -> None:
        self.models = {script.id: script for script in models}
        # ModelScript.first_token_after_requests counts from here.
        self._requests_before_models = len(self.requests)

    def requests_since_models(self) -> int:
        """Chat requests recorded since the last :meth:`set_models` (or since creation)."""
        return len(self.requests) - self._requests_before_models

    def calls_for(self, model_id: str) -> int:
        return sum(1 for rec in self.requests if rec.model == model_id)

    def called_models(self) -> list[str]:
        return [rec.model for rec in self.requests]

    def app(self) -> web.Application:
        """A fresh app on this simulator's state; serve it with handler cancellation on."""
        app = web.Application()
        app[_CLOSING] = asyncio.Event()
        app.on_shutdown.append(_release_waiters)
        app.on_shutdown.append(self._wake_on_shutdown)
        app.add_routes(
            [
                web.get("/api/v1/models", self._models),
                web.get("/api/v1/models/{author}/{slug}/endpoints", self._endpoints),
                web.get("/api/v1/key", self._key),
                web.post("/api/v1/chat/completions", self._chat),
            ]
        )
        return app

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Return once no chat response is in progress; AssertionError after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.open_streams:
            try:
                await asyncio.wait_for(self._idle_event().wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"{self.open_streams} chat stream(s) still open after {timeout} s"
                ) from None

    async def wait_requests(self, count: int, timeout: float = 5.0) -> None:
        """Return once ``count`` chat requests have been recorded in all (``len(requests)``);
        AssertionError after ``timeout``. Call it on the loop that serves the simulator."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.requests) < count:
            try:
                await asyncio.wait_for(self._arrival_event().wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"{len(self.requests)} of {count} chat request(s) recorded after {timeout} s"
                ) from None

    # -- bookkeeping -------------------------------------------------------------------------

    def _arrival_event(self) -> asyncio.Event:
        """An event set by the next recorded chat request (a fresh one after each)."""
        loop = asyncio.get_running_loop()
        if self._arrival is None or self._arrival_loop is not loop:
            self._arrival, self._arrival_loop = asyncio.Event(), loop
        return self._arrival

    def _request_recorded(self, rec: RecordedRequest) -> None:
        self.requests.append(rec)
        self._wake_arrival_waiters()

    async def _wake_on_shutdown(self, app: web.Application) -> None:
        self._wake_arrival_waiters()  # after _release_waiters: they find _CLOSING set

    def _wake_arrival_waiters(self) -> None:
        # Wake everyone waiting to re-check, and let the next request wake the next round.
        arrival = self._arrival_event()
        self._arrival = None
        arrival.set()

    def _idle_event(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._idle is None or self._idle_loop is not loop:
            self._idle, self._idle_loop = asyncio.Event(), loop
            if self.open_streams == 0:
                self._idle.set()
        return self._idle

    def _stream_opened(self) -> None:
        self.open_streams += 1
        self.peak_open_streams = max(self.peak_open_streams, self.open_streams)
        self._idle_event().clear()

    def _stream_closed(self) -> None:
        self.open_streams -= 1
        if self.open_streams == 0:
            self._idle_event().set()

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        return self.api_key is None or token == self.api_key

    async def _pause(self, request: web.Request, seconds: float) -> None:
        delay = seconds * self.time_scale
        if delay <= 0:
            return
        try:
            await asyncio.wait_for(request.app[_CLOSING].wait(), delay)
        except asyncio.TimeoutError:
            return
        raise _Abort("server_shutdown")

    async def _hold_until_requests(self, request: web.Request, count: int) -> None:
        """Wait until ``count`` chat requests have arrived since set_models; the client leaving
        (handler cancelled) or the app shutting down ends the wait as it ends a stall."""
        closing = request.app[_CLOSING]
        while self.requests_since_models() < count:
            if closing.is_set():
                raise _Abort("server_shutdown")
            # on_shutdown sets _CLOSING and then wakes this event too (see app()).
            await self._arrival_event().wait()

    async def _held(self, request: web.Request, gate: threading.Event) -> None:
        # The gate is set from another thread, so it is looked at every 5 ms; the client leaving
        # cancels the wait, and the app shutting down ends it.
        closing = request.app[_CLOSING]
        while not gate.is_set():
            if closing.is_set():
                raise _Abort("server_shutdown")
            await asyncio.sleep(0.005)

    async def _stall(self, request: web.Request, rec: RecordedRequest) -> NoReturn:
        rec.outcome = "stalled"
        # Only the client leaving (handler cancelled) or the app shutting down ends this.
        await request.app[_CLOSING].wait()
        raise _Abort("stalled")

    # -- catalogue routes --------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        self.models_fetches += 1
        try:
            await self._pause(request, self.models_delay)
        except _Abort:
            return _error(503, _DEFAULT_MESSAGES[503])  # the server is shutting down
        if self.models_status != 200:
            message = _DEFAULT_MESSAGES.get(self.models_status, "Service Unavailable")
            return _error(self.models_status, message)
        data = [_catalogue_entry(script) for script in self.models.values()]
        return web.Response(body=_dumps({"data": data}), content_type="application/json")

    async def _endpoints(self, request: web.Request) -> web.Response:
        model_id = f"{request.match_info['author']}/{request.match_info['slug']}"
        script = self.models.get(model_id) or self.models.get(f"{model_id}:free")
        if script is None:
            return _error(404, f"No endpoints found for {model_id}.")
        data = {
            "id": script.id,
            "name": _display_name(script),
            "created": _CREATED,
            "description": "A simulated model served by litellm_freerouter.simulator.",
            "architecture": _architecture(script),
            "endpoints": [_endpoint_entry(script)],
        }
        return web.Response(body=_dumps({"data": data}), content_type="application/json")

    async def _key(self, request: web.Request) -> web.Response:
        try:
            await self._pause(request, self.key_delay)
        except _Abort:
            return _error(503, _DEFAULT_MESSAGES[503])  # the server is shutting down
        if self.api_key is not None and not self._authorized(request):
            return _error(401, _DEFAULT_MESSAGES[401])
        if self.key_status != 200:
            return _error(self.key_status, _DEFAULT_MESSAGES.get(self.key_status, "Error"))
        data: dict[str, Any] = {"label": "sim", "limit": None, "usage": 0, "is_free_tier": True}
        if self.daily_quota is not None:
            data["free_model_daily_requests"] = {
                "limit": self.daily_quota,
                "remaining": max(0, self.daily_quota - self.quota_used),
                "used": self.quota_used,
            }
        return web.Response(body=_dumps({"data": data}), content_type="application/json")

    # -- chat --------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        try:
            parsed = await request.json()
        except ValueError:
            parsed = None
        body: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
        rec = RecordedRequest(
            model=str(body.get("model", "")),
            body=body,
            headers={k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            authorized=self._authorized(request),
            started=started,
        )
        self._request_recorded(rec)
        self._stream_opened()
        resp: web.StreamResponse | None = None
        try:
            rejection = self._reject(rec, valid_body=isinstance(parsed, dict))
            if rejection is not None:
                rec.outcome = f"status:{rejection.status}"
                return rejection
            script = self.models[rec.model]
            if self.per_request is not None:
                script = self.per_request(script, body)
            script = _continue_from(script, body)
            gen = _Generation(script)
            if body.get("stream") is True:
                resp = web.StreamResponse(
                    headers={
                        "Content-Type": "text/event-stream",
                        "Cache-Control": "no-cache",
                        "X-Generation-Id": gen.id,
                    }
                )
                await self._stream(request, resp, gen, rec)
                return resp
            return await self._complete(request, gen, rec)
        except asyncio.CancelledError:
            self._client_went_away(rec)
            raise
        except ConnectionResetError:
            self._client_went_away(rec)
            return resp if resp is not None else web.Response(status=499)
        except _Abort as abort:
            rec.outcome = abort.outcome
            if request.transport is not None:
                request.transport.abort()
            # aiohttp's write_eof on the dead transport raises ConnectionError, which it ignores.
            return resp if resp is not None else web.Response(status=499)
        finally:
            rec.ended = time.monotonic()
            self._stream_closed()

    def _client_went_away(self, rec: RecordedRequest) -> None:
        rec.outcome = "client_closed"
        self.closed_by_client += 1

    def _reject(self, rec: RecordedRequest, *, valid_body: bool) -> web.Response | None:
        """The JSON error OpenRouter answers before any model runs, if any."""
        if self.api_key is not None and not rec.authorized:
            return _error(401, _DEFAULT_MESSAGES[401])
        if not valid_body:
            return _error(400, "Invalid JSON body")
        if self.daily_quota is not None:
            # Every request counts against the daily quota, failed ones included.
            if self.quota_used >= self.daily_quota:
                return self._quota_exhausted()
            self.quota_used += 1
        script = self.models.get(rec.model)
        if script is None:
            return _error(404, f"No endpoints found for {rec.model}.")
        if script.status != 200:
            message = script.error_message or _DEFAULT_MESSAGES.get(
                script.status, "Provider returned error"
            )
            return _error(script.status, message, script.error_metadata, script.error_headers)
        return None

    def _quota_exhausted(self) -> web.Response:
        metadata = {
            "headers": {
                "X-RateLimit-Limit": str(self.daily_quota),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(_next_utc_midnight_ms()),
            },
            "provider_name": None,
        }
        return _error(429, _QUOTA_MESSAGE, metadata, extra={"user_id": "user_sim"})

    async def _generate(
        self, request: web.Request, script: ModelScript, rec: RecordedRequest, sink: _Sink
    ) -> int | None:
        """Play the script's pieces and timing into ``sink``.

        Returns how many pieces were generated (the completion token count), or None when the
        script calls for an error at this point.
        """
        for _ in range(script.keepalives):
            await self._pause(request, script.keepalive_interval)
            await sink.raw(KEEPALIVE)
        for i in range(script.malformed_lines):
            await sink.raw(_GARBAGE[i % len(_GARBAGE)])
        if script.stall_before_first_token:
            await self._stall(request, rec)
        # Keep-alives fill the wait for the first token rather than adding to it.
        waited = script.keepalives * script.keepalive_interval
        await self._pause(request, script.first_token_delay - waited)
        await self._hold_until_requests(request, script.first_token_after_requests)
        if script.hold_first_token is not None:
            await self._held(request, script.hold_first_token)
        if script.empty:
            return 0
        pieces = 0

        async def emit(delta: dict[str, Any]) -> None:
            nonlocal pieces
            if pieces:
                await self._pause(request, script.chunk_delay)
                if script.malformed_between:
                    await sink.raw(_GARBAGE[pieces % len(_GARBAGE)])
            await sink.delta(delta)
            pieces += 1

        for text in script.reasoning:
            await emit(_reasoning_delta(text))
        for sent in range(len(script.chunks) + 1):
            at_end = sent == len(script.chunks)
            if _hits(script.drop_after_chunks, sent, at_end):
                raise _Abort("dropped")
            if _hits(script.stall_after_chunks, sent, at_end):
                await self._stall(request, rec)
            if _hits(script.error_chunk_after, sent, at_end):
                return None
            if not at_end:
                await emit({"role": "assistant", "content": script.chunks[sent]})
        for index, call in enumerate(script.tool_calls):
            for delta in _tool_call_deltas(index, call):
                await emit(delta)
        if script.drop_after_tool_calls:
            raise _Abort("dropped")
        return pieces

    async def _stream(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        gen: _Generation,
        rec: RecordedRequest,
    ) -> None:
        script = gen.script
        await self._pause(request, script.headers_delay)
        await resp.prepare(request)
        sink = _StreamSink(resp, gen)
        if script.role_chunk:
            await sink.delta({"role": "assistant", "content": ""})
        pieces = await self._generate(request, script, rec, sink)
        if pieces is None:
            error_chunk = {
                **gen.envelope("chat.completion.chunk"),
                "error": gen.error(),
                "choices": [{"delta": {}, "finish_reason": "error", "index": 0}],
            }
            await sink.event(error_chunk)
            rec.outcome = "error_chunk"
            # OpenRouter terminates the stream after an error event: no [DONE].
            await resp.write_eof()
            return
        await sink.event(gen.chunk({}, gen.finish_reason))
        await sink.event(
            {**gen.envelope("chat.completion.chunk"), "choices": [], "usage": gen.usage(pieces)}
        )
        await sink.raw(DONE)
        await resp.write_eof()
        rec.outcome = "ok"

    async def _complete(
        self, request: web.Request, gen: _Generation, rec: RecordedRequest
    ) -> web.Response:
        script = gen.script
        await self._pause(request, script.headers_delay)
        collector = _Collector()
        pieces = await self._generate(request, script, rec, collector)
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "message": collector.message()}
        body = gen.envelope("chat.completion")
        if pieces is None:
            # A failure after generation started still arrives as a 200, with the error inside.
            body["error"] = gen.error()
            failed = {**choice, "finish_reason": "error", "native_finish_reason": "error"}
            body["choices"] = [failed]
            rec.outcome = "error_chunk"
        else:
            reason = gen.finish_reason
            body["choices"] = [{**choice, "finish_reason": reason, "native_finish_reason": reason}]
            body["usage"] = gen.usage(pieces)
            rec.outcome = "ok"
        return web.Response(body=_dumps(body), content_type="application/json")


class SimulatorThread:
    """Serves a :class:`Simulator` on 127.0.0.1 from its own thread and event loop."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def start(self) -> SimulatorThread:
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name="freerouter-simulator", daemon=True
        )
        self._thread.start()
        port = self.call(self._serve)
        self.url = f"http://127.0.0.1:{port}/api/v1"
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self.call(self._shutdown)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._loop = self._thread = None

    def call(self, coro_fn: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run ``coro_fn()`` on the simulator's loop and return its result."""
        if self._loop is None:
            raise RuntimeError("SimulatorThread is not running")
        return asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result()

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _serve(self) -> int:
        self._runner = web.AppRunner(
            self.simulator.app(), handler_cancellation=True, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # Nothing may be left pending when the loop closes, or Python warns about it.
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)


def words(text: str) -> tuple[str, ...]:
    """Split prose into word-sized pieces, the way tokens arrive."""
    return tuple(re.findall(r"\s*\S+", text))


def demo_models() -> list[ModelScript]:
    """A varied set of free models for ``freerouter demo``: the fast one should win."""
    return [
        ModelScript(
            id="meta-llama/llama-3.3-8b-instruct:free",
            context_length=131072,
            first_token_delay=0.3,
            chunk_delay=0.04,
            chunks=words(
                "Here is the short version: several free models were asked at once, and this "
                "one produced a real token first, so its answer is what you are reading. The "
                "others were cancelled the moment it won, which frees their rate limits."
            ),
            endpoint_latency_ms=320.0,
            provider_name="Meta",
        ),
        ModelScript(
            id="mistralai/mistral-small-3.2-24b-instruct:free",
            context_length=96000,
            first_token_delay=2.5,
            chunk_delay=0.06,
            chunks=words(
                "Let me consider this carefully before answering, weighing each option in turn "
                "and checking the trade-offs one by one."
            ),
            endpoint_latency_ms=2400.0,
            provider_name="Mistral",
        ),
        ModelScript(
            id="google/gemma-3-27b-it:free",
            context_length=96000,
            status=429,
            error_message="Provider returned error",
            error_metadata={
                "raw": "google/gemma-3-27b-it:free is temporarily rate-limited upstream. Please "
                "retry shortly, or add your own key to accumulate your rate limits: "
                "https://openrouter.ai/settings/integrations",
                "provider_name": "Google AI Studio",
            },
            error_headers={"Retry-After": "30"},
            provider_name="Google AI Studio",
        ),
        ModelScript(
            id="qwen/qwen3-coder:free",
            context_length=262144,
            keepalives=3,
            keepalive_interval=0.5,
            stall_before_first_token=True,
            chunks=words("This answer never arrives."),
            provider_name="Chutes",
        ),
        ModelScript(
            id="moonshotai/kimi-k2:free",
            context_length=32768,
            status=503,
            error_message="No instances available",
            provider_name="Targon",
        ),
        ModelScript(
            id="deepseek/deepseek-r1-0528:free",
            context_length=163840,
            first_token_delay=0.9,
            chunk_delay=0.05,
            reasoning=words(
                "The user wants a direct answer. I should keep it brief and mention why the "
                "result came from a race."
            ),
            chunks=words(
                "After thinking it over: racing free models trades a little extra load for a "
                "much faster first token."
            ),
            endpoint_latency_ms=1500.0,
            provider_name="DeepInfra",
        ),
        ModelScript(
            id="openai/gpt-4o-mini",
            context_length=128000,
            free=False,
            chunks=words("A paid model must never be called by the free router."),
            provider_name="OpenAI",
        ),
        ModelScript(
            id="mistralai/mistral-7b-instruct:free",
            context_length=8192,
            max_completion_tokens=2048,
            first_token_delay=0.7,
            chunk_delay=0.05,
            chunks=words("Small window, short reply: keep prompts compact for this model."),
            endpoint_latency_ms=700.0,
            provider_name="Mistral",
        ),
    ]


def _load_scripts(path: str) -> list[ModelScript]:
    import json

    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    scripts = []
    for entry in raw:
        values = dict(entry)
        for name in (
            "supported_parameters",
            "input_modalities",
            "reasoning",
            "chunks",
            "tool_calls",
        ):
            if name in values and isinstance(values[name], list):
                values[name] = tuple(values[name])
        scripts.append(ModelScript(**values))
    return scripts


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a simulator from its own process: ``python -m litellm_freerouter.simulator``.

    Prints ``READY <api_base>`` on one line once it listens, then serves until killed.  Used by
    the end-to-end tests (aider, the proxy) and the benchmark, which need an upstream in
    another process.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m litellm_freerouter.simulator")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--models", default="demo", help="'demo', or a JSON file: a list of ModelScript fields"
    )
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--daily-quota", type=int, default=None)
    parser.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    scripts = demo_models() if args.models == "demo" else _load_scripts(args.models)
    simulator = Simulator(
        scripts, daily_quota=args.daily_quota, api_key=args.api_key, time_scale=args.time_scale
    )

    asyncio.run(serve_until_signalled(simulator, port=args.port))


async def serve_until_signalled(simulator: Simulator, *, port: int = 0, backlog: int = 128) -> None:
    """Serve on 127.0.0.1, print ``READY <api_base>`` once listening, stop on SIGTERM/SIGINT."""
    import signal

    runner = web.AppRunner(simulator.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=backlog)
    await site.start()
    bound = int(runner.addresses[0][1])
    print(f"READY http://127.0.0.1:{bound}/api/v1", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    main()
