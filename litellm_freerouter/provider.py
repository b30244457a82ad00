"""The thin LiteLLM glue: four hooks, chunk conversion, registration."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, ModelResponse

from . import checks, engine, state
from ._aio import wait_for
from .catalog import cached_models
from .config import TUNABLES, Settings, load_settings
from .errors import FreeRouterError, to_litellm
from .health import Health
from .router import Answer, Router
from .sse import Delta

PROVIDER = "freerouter"
MODEL = "auto"
MODEL_NAME = f"{PROVIDER}/{MODEL}"
# freerouter/auto with hedge_delay "auto" unless a positive delay is set: one model at a time,
# the next only when the one before runs late. aider's weak model (commit messages, summaries).
HEDGED = "hedged"
HEDGED_MODEL_NAME = f"{PROVIDER}/{HEDGED}"
MODEL_NAMES = (MODEL_NAME, HEDGED_MODEL_NAME)

# What aider and the proxy are told about freerouter/auto.  The router itself checks each
# request against each model's real context window.
MAX_INPUT_TOKENS = 131072
MAX_OUTPUT_TOKENS = 32768
MODEL_INFO: dict[str, Any] = {
    "max_tokens": MAX_OUTPUT_TOKENS,
    "max_input_tokens": MAX_INPUT_TOKENS,
    "max_output_tokens": MAX_OUTPUT_TOKENS,
    "input_cost_per_token": 0.0,
    "output_cost_per_token": 0.0,
    "cache_creation_input_token_cost": 0.0,
    "cache_read_input_token_cost": 0.0,
    "litellm_provider": PROVIDER,
    "mode": "chat",
    "supports_function_calling": True,
    "supports_tool_choice": True,
    "supports_vision": True,
    "supports_response_schema": True,
    "supports_reasoning": True,
    # An answer cut short by a free model's output limit can be continued: a final assistant
    # message is a prefill OpenRouter passes on (freerouter carries broken answers on the same
    # way). aider then goes on where the answer stopped ("infinite output").
    "supports_assistant_prefill": True,
}

# Parameters litellm hands us that are not for the upstream body.
_NOT_UPSTREAM = frozenset(
    {
        "stream",
        "stream_options",
        "max_retries",
        "api_key",
        "api_base",
        "timeout",
        "extra_body",
        "extra_headers",
        "custom_llm_provider",
        "drop_params",
        "mock_response",
        "metadata",
    }
) | frozenset(TUNABLES)


def client_body(litellm_params: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The JSON body a LiteLLM proxy's client sent, when a proxy is serving this call."""
    request = (litellm_params or {}).get("proxy_server_request")
    body = request.get("body") if isinstance(request, Mapping) else None
    return body if isinstance(body, Mapping) else None


def client_tunables(body: Mapping[str, Any] | None) -> list[str]:
    """The tunables a LiteLLM proxy client put in its request ``body`` (see client_body).

    The proxy merges a request's extra fields over the config's ``litellm_params``, so anyone
    holding a virtual key could otherwise widen races (spending the account's daily quota) or
    stretch cooldowns that every other caller shares.
    """
    return [] if body is None else [name for name in TUNABLES if name in body]


def prepare(
    messages: Any,
    optional_params: Mapping[str, Any] | None,
    litellm_params: Mapping[str, Any] | None,
    *,
    api_key: str | None,
    api_base: str | None,
    model: str = MODEL,
    headers: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Settings]:
    """The upstream body and this request's settings (``model``: what follows freerouter/;
    ``headers``: the caller's ``extra_headers``, as litellm hands them over)."""
    if model not in (MODEL, HEDGED):
        from .errors import ConfigurationError

        raise ConfigurationError(
            f"unknown model {PROVIDER}/{model}: freerouter offers {MODEL_NAME} (races the free"
            f" models) and {HEDGED_MODEL_NAME} (one at a time, the next only when it runs late)"
        )
    optional_params = optional_params or {}
    proxied = client_body(litellm_params)  # None unless a LiteLLM proxy serves the call
    sent = client_tunables(proxied)
    if sent:
        from .errors import ConfigurationError

        raise ConfigurationError(
            f"{', '.join(sent)} can only be set in the proxy's config (litellm_params),"
            " not in a request"
        )
    overrides: dict[str, Any] = {}
    for source in (litellm_params or {}, optional_params):
        for name in TUNABLES:
            if source.get(name) is not None:
                overrides[name] = source[name]
    settings = load_settings(overrides, api_key=api_key, api_base=api_base)
    if model == HEDGED and settings.hedge_delay == 0:
        settings = dataclasses.replace(settings, hedge_delay="auto")
    if not settings.api_key and proxied is not None:
        from .errors import ServerKeyMissing

        raise ServerKeyMissing(
            "this LiteLLM proxy has no OpenRouter API key for freerouter: its operator must set"
            " OPENROUTER_API_KEY in the proxy's environment (or api_key in the model's"
            " litellm_params)"
        )
    caller_headers = checks.caller_headers(headers)
    if caller_headers:
        settings = dataclasses.replace(settings, extra_headers=caller_headers)
    if not isinstance(messages, list) or not messages:
        from .errors import ConfigurationError

        raise ConfigurationError("messages must be a non-empty list")
    body: dict[str, Any] = {"messages": messages}
    for name, value in optional_params.items():
        if name not in _NOT_UPSTREAM and value is not None:
            body[name] = value
    extra = optional_params.get("extra_body")
    where = checks.extra_body_problem(extra)
    if where is None and isinstance(extra, Mapping):
        body.update({k: v for k, v in extra.items() if k not in ("model", "stream")})
    for name in ("tools", "functions"):
        if body.get(name) == []:  # what litellm makes of some tools it cannot read
            del body[name]
    if body.get("tool_choice") in ("auto", "none") and not body.get("tools"):
        del body["tool_choice"]
    where = where or checks.body_problem(body)
    if where is not None:
        from .errors import ConfigurationError

        # Sent, every model would answer 400 and cool down for it (or, through OpenRouter's
        # fallbacks, presets and server tools, a paid model could answer).
        raise ConfigurationError(where)
    return body, settings


# Reentrant: a lease is given back in a ``finally`` that the garbage collector may run (a request
# finalised with the loop it ran on) in a thread that is inside _router already, holding it.
_routers_lock = threading.RLock()
# Routers (one per endpoint and key, each with its state store and refresh task) kept at once:
# beyond this many, the least recently used idle one is closed (its state is in the store). A
# proxy's clients may each send a key of their own.
MAX_ROUTERS = 32
_leases: dict[int, int] = {}  # id(router): requests using it now


def _lease(router: Router) -> None:
    """Count one more request using ``router``. Call with the lock held."""
    _leases[id(router)] = _leases.get(id(router), 0) + 1


@contextlib.contextmanager
def _leased(settings: Settings) -> Iterator[Router]:
    """The router for ``settings``, not closed while this request uses it."""
    router = _router(settings, lease=True)
    try:
        yield router
    finally:
        with _routers_lock:
            left = _leases.pop(id(router), 1) - 1
            if left:
                _leases[id(router)] = left


def _router(settings: Settings, *, lease: bool = False) -> Router:
    """The router for this endpoint and key, shared by every thread and loop of the process;
    its home, where its catalogue is fetched and refreshed, is the engine's loop."""
    eng = engine.get_engine()
    key = (settings.base, settings.key_id)
    with _routers_lock:
        routers: dict[tuple[str, str], Router] = eng.state.setdefault("routers", {})
        found = _take(routers, key, lease)
    if found is not None:
        return found
    # Made outside the lock: opening a store can wait seconds (a state file another process
    # holds), and every other key's requests would wait with it.
    made = _new_router(settings, eng)
    with _routers_lock:
        found = _take(routers, key, lease)
        if found is None:
            _evict(eng, routers)
            routers[key] = made
            eng.on_close(made.aclose)
            if lease:
                _lease(made)
            return made
    # Another thread made this key's router meanwhile: this one goes.
    asyncio.run_coroutine_threadsafe(made.aclose(), eng.loop)
    return found


def _take(
    routers: dict[tuple[str, str], Router], key: tuple[str, str], lease: bool
) -> Router | None:
    """The router kept for ``key``, now the most recently used (and leased), if there is one.
    Call with the lock held."""
    router = routers.pop(key, None)
    if router is not None:
        routers[key] = router  # the most recently used, last
        if lease:
            _lease(router)
    return router


def _new_router(settings: Settings, eng: engine.Engine) -> Router:
    store = state.open_store(settings)
    router = Router(
        settings.base,
        session=engine.session,
        refresh_interval=settings.refresh_interval,
        health=Health(store=store),
        home=eng.loop,
    )
    cached = store.load_catalog()
    if cached is not None and cached.models:  # answer at once; refreshed when stale
        models = cached_models(cached.models)
        if models:
            router.preload_catalog(models, cached.fetched_at)
    return router


def _keeps_state(router: Router) -> bool:
    """Whether what ``router`` learnt outlives it: its store is shared (a file, Redis) and up.
    A router on memory alone (an unusable state directory, a store that is away) holds the
    only copy of its key's cooldowns and quota stop, so it is never closed to make room."""
    store = router.health.store
    return store.shared and getattr(store, "problem", None) is None


def _evict(eng: engine.Engine, routers: dict[tuple[str, str], Router]) -> None:
    """Make room for one more router: close the least recently used idle ones beyond
    MAX_ROUTERS - 1 (a router in use stays). Call with the lock held."""
    for key in list(routers):
        if len(routers) < MAX_ROUTERS:
            return
        old = routers[key]
        if _leases.get(id(old)) or not _keeps_state(old):
            continue
        del routers[key]
        eng.forget_closer(old.aclose)
        asyncio.run_coroutine_threadsafe(old.aclose(), eng.loop)


async def _complete(body: dict[str, Any], settings: Settings) -> Answer:
    with _leased(settings) as router:
        return await router.complete(body, settings)


def _usage_block(usage: Mapping[str, int] | None) -> dict[str, int] | None:
    if not usage:
        return None
    return {
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
    }


def _chunk(text: str, fields: dict[str, Any], tool_use: Any = None) -> GenericStreamingChunk:
    return {
        "text": text,
        "tool_use": tool_use,
        "is_finished": False,
        "finish_reason": "",
        "usage": None,
        "index": 0,
        "provider_specific_fields": fields,
    }


async def _generic_chunks(
    body: dict[str, Any], settings: Settings
) -> AsyncGenerator[GenericStreamingChunk, None]:
    """The winner's deltas as litellm's generic chunks, usage last."""
    finish: str | None = None
    usage: Mapping[str, int] | None = None
    winner = ""
    saw_tool_call = False
    # Closed as it is left, so that closing these chunks closes the winner at once.
    with _leased(settings) as router:
        async with contextlib.aclosing(router.stream(body, settings)) as deltas:
            async for model, delta in deltas:
                winner = model
                finish = delta.finish_reason or finish
                usage = delta.usage or usage
                for chunk in delta_chunks(model, delta):
                    saw_tool_call = saw_tool_call or chunk["tool_use"] is not None
                    yield chunk
    if finish in (None, "stop") and saw_tool_call:
        finish = "tool_calls"
    yield {
        "text": "",
        "tool_use": None,
        "is_finished": True,
        "finish_reason": finish or "stop",
        "usage": _usage_block(usage),  # type: ignore[typeddict-item]
        "index": 0,
        "provider_specific_fields": {"freerouter_model": winner},
    }


def delta_chunks(model: str, delta: Delta) -> Iterator[GenericStreamingChunk]:
    if not delta.is_token:
        return
    fields: dict[str, Any] = {"freerouter_model": model}
    if delta.reasoning:
        fields["reasoning_content"] = delta.reasoning
    if not delta.tool_calls:
        yield _chunk(delta.content, fields)
        return
    text = delta.content
    for call in delta.tool_calls:
        tool_use = {
            "index": call.index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        yield _chunk(text, fields, tool_use)
        text = ""


def fill_response(
    model_response: ModelResponse, answer: Answer, model: str = MODEL
) -> ModelResponse:
    """Write a whole answer into litellm's response object (``model``: what follows
    freerouter/, the model the caller asked for; the winner is ``freerouter_model``)."""
    from litellm.types.utils import ChatCompletionMessageToolCall, Function, Message, Usage

    tool_calls = [
        ChatCompletionMessageToolCall(
            id=call["id"],
            type="function",
            function=Function(
                name=call["function"]["name"], arguments=call["function"]["arguments"]
            ),
        )
        for call in answer.tool_calls
    ] or None
    fields: dict[str, Any] = {"freerouter_model": answer.model}
    message = Message(
        content=answer.content if (answer.content or not tool_calls) else None,
        role="assistant",
        tool_calls=tool_calls,
        reasoning_content=answer.reasoning or None,
        provider_specific_fields=fields,
    )
    # litellm's own annotations differ between versions; these objects are set as it sets them.
    response: Any = model_response
    choice: Any = response.choices[0]
    choice.message = message
    choice.finish_reason = answer.finish_reason
    response.created = int(time.time())
    response.model = response.model or f"{PROVIDER}/{model}"
    usage = _usage_block(answer.usage)
    if usage is not None:
        make_usage: Any = Usage
        response.usage = make_usage(**usage)
    # The winner's id goes in a field of its own: as ``model`` litellm would price it.
    response.freerouter_model = answer.model
    hidden = getattr(model_response, "_hidden_params", None)
    if isinstance(hidden, dict):
        hidden["freerouter_model"] = answer.model
    return model_response


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, FreeRouterError):
        return to_litellm(exc)
    if isinstance(exc, TimeoutError):
        from litellm import exceptions

        return exceptions.Timeout(message=str(exc), model=MODEL, llm_provider=PROVIDER)
    return exc


class FreeRouterLLM(CustomLLM):
    """``freerouter/auto`` for LiteLLM."""

    def completion(
        self,
        model: str,
        messages: list[Any],
        api_base: str | None,
        custom_prompt_dict: dict[str, Any],
        model_response: ModelResponse,
        print_verbose: Any,
        encoding: Any,
        api_key: str | None,
        logging_obj: Any,
        optional_params: dict[str, Any],
        acompletion: Any = None,
        litellm_params: dict[str, Any] | None = None,
        logger_fn: Any = None,
        headers: dict[str, Any] | None = None,
        timeout: Any = None,
        client: Any = None,
    ) -> ModelResponse:
        try:
            body, settings = prepare(
                messages,
                optional_params,
                litellm_params,
                api_key=api_key,
                api_base=api_base,
                model=model,
                headers=headers,
            )
            answer = engine.call_sync(lambda: _complete(body, settings), timeout=_seconds(timeout))
        except (FreeRouterError, TimeoutError) as exc:
            raise _translate(exc) from None
        return fill_response(model_response, answer, model)

    async def acompletion(
        self,
        model: str,
        messages: list[Any],
        api_base: str | None,
        custom_prompt_dict: dict[str, Any],
        model_response: ModelResponse,
        print_verbose: Any,
        encoding: Any,
        api_key: str | None,
        logging_obj: Any,
        optional_params: dict[str, Any],
        acompletion: Any = None,
        litellm_params: dict[str, Any] | None = None,
        logger_fn: Any = None,
        headers: dict[str, Any] | None = None,
        timeout: Any = None,
        client: Any = None,
    ) -> ModelResponse:
        try:
            body, settings = prepare(
                messages,
                optional_params,
                litellm_params,
                api_key=api_key,
                api_base=api_base,
                model=model,
                headers=headers,
            )
            answer = await _with_timeout(_complete(body, settings), _seconds(timeout))
        except (FreeRouterError, TimeoutError) as exc:
            raise _translate(exc) from None
        return fill_response(model_response, answer, model)

    def streaming(
        self,
        model: str,
        messages: list[Any],
        api_base: str | None,
        custom_prompt_dict: dict[str, Any],
        model_response: ModelResponse,
        print_verbose: Any,
        encoding: Any,
        api_key: str | None,
        logging_obj: Any,
        optional_params: dict[str, Any],
        acompletion: Any = None,
        litellm_params: dict[str, Any] | None = None,
        logger_fn: Any = None,
        headers: dict[str, Any] | None = None,
        timeout: Any = None,
        client: Any = None,
    ) -> Iterator[GenericStreamingChunk]:
        return ChunkStream(
            _sync_chunks(
                functools.partial(
                    prepare,
                    messages,
                    optional_params,
                    litellm_params,
                    api_key=api_key,
                    api_base=api_base,
                    model=model,
                    headers=headers,
                ),
                timeout,
            )
        )

    def astreaming(  # type: ignore[override,misc]
        self,
        model: str,
        messages: list[Any],
        api_base: str | None,
        custom_prompt_dict: dict[str, Any],
        model_response: ModelResponse,
        print_verbose: Any,
        encoding: Any,
        api_key: str | None,
        logging_obj: Any,
        optional_params: dict[str, Any],
        acompletion: Any = None,
        litellm_params: dict[str, Any] | None = None,
        logger_fn: Any = None,
        headers: dict[str, Any] | None = None,
        timeout: Any = None,
        client: Any = None,
    ) -> AsyncIterator[GenericStreamingChunk]:
        # litellm iterates what this returns without awaiting it: an async iterator object.
        return AsyncChunkStream(
            _async_chunks(
                functools.partial(
                    prepare,
                    messages,
                    optional_params,
                    litellm_params,
                    api_key=api_key,
                    api_base=api_base,
                    model=model,
                    headers=headers,
                ),
                timeout,
            )
        )


def _sync_chunks(
    prepared: Callable[[], tuple[dict[str, Any], Settings]], timeout: Any
) -> Iterator[GenericStreamingChunk]:
    try:
        body, settings = prepared()
        yield from engine.stream_sync(
            lambda: _generic_chunks(body, settings),
            first_item_timeout=_seconds(timeout),
            consumer_timeout=settings.idle_timeout,
        )
    except (FreeRouterError, TimeoutError) as exc:
        raise _translate(exc) from None


async def _async_chunks(
    prepared: Callable[[], tuple[dict[str, Any], Settings]], timeout: Any
) -> AsyncIterator[GenericStreamingChunk]:
    try:
        body, settings = prepared()
        stream = engine.stream_local(
            lambda: _generic_chunks(body, settings), consumer_timeout=settings.idle_timeout
        )
        try:
            try:
                first = await _with_timeout(stream.__anext__(), _seconds(timeout))
            except StopAsyncIteration:
                return
            yield first
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()
    except (FreeRouterError, TimeoutError) as exc:
        raise _translate(exc) from None


class ChunkStream:
    """The sync chunk iterator litellm wraps; remembers the winner so that litellm's own
    closing chunks can carry it too (see :func:`_tag_wrapper_chunks`)."""

    def __init__(self, chunks: Iterator[GenericStreamingChunk]) -> None:
        self._chunks = chunks
        self.freerouter_model: str | None = None

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> GenericStreamingChunk:
        chunk = next(self._chunks)
        self.freerouter_model = _winner_of(chunk) or self.freerouter_model
        return chunk

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class AsyncChunkStream:
    def __init__(self, chunks: AsyncIterator[GenericStreamingChunk]) -> None:
        self._chunks = chunks
        self.freerouter_model: str | None = None

    def __aiter__(self) -> AsyncChunkStream:
        return self

    async def __anext__(self) -> GenericStreamingChunk:
        chunk = await self._chunks.__anext__()
        self.freerouter_model = _winner_of(chunk) or self.freerouter_model
        return chunk

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _winner_of(chunk: GenericStreamingChunk) -> str | None:
    fields = chunk.get("provider_specific_fields") or {}
    winner = fields.get("freerouter_model")
    return winner if isinstance(winner, str) and winner else None


def _tag_wrapper_chunks() -> None:
    """Put ``freerouter_model`` on the finish and usage chunks litellm makes up itself.

    litellm's stream wrapper holds back our last chunk and emits chunks of its own; they would
    lack the winner's id.  Its chunk factory is wrapped to copy the id from our stream, for our
    streams only: every other provider's chunks are left exactly as they were.
    """
    try:
        from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper
    except ImportError:  # pragma: no cover - a litellm without the wrapper
        return
    original = getattr(CustomStreamWrapper, "model_response_creator", None)
    if original is None or getattr(original, "_freerouter", False):
        return

    @functools.wraps(original)
    def model_response_creator(self: Any, *args: Any, **kwargs: Any) -> Any:
        response = original(self, *args, **kwargs)
        stream = getattr(self, "completion_stream", None)
        winner = getattr(stream, "freerouter_model", None)
        if winner and isinstance(stream, (ChunkStream, AsyncChunkStream)):
            try:
                response.freerouter_model = winner
                # As on our own chunks: the proxy writes a chunk with no provider fields
                # by a fast path that keeps only OpenAI's fields (litellm 1.108), which
                # would drop the winner from the finish chunk.
                delta = response.choices[0].delta if response.choices else None
                if delta is not None and getattr(delta, "provider_specific_fields", None) is None:
                    delta.provider_specific_fields = {"freerouter_model": winner}
            except (AttributeError, TypeError, ValueError):
                pass
        return response

    model_response_creator._freerouter = True  # type: ignore[attr-defined]
    setattr(CustomStreamWrapper, "model_response_creator", model_response_creator)  # noqa: B010


def _seconds(timeout: Any) -> float | None:
    """litellm's ``timeout`` (a number, or an httpx.Timeout) as seconds to a first answer."""
    if isinstance(timeout, str):
        try:
            timeout = float(timeout)
        except ValueError:
            pass
    if isinstance(timeout, (bool, str)) or (
        isinstance(timeout, (int, float)) and not (timeout > 0 and math.isfinite(timeout))
    ):
        from .errors import ConfigurationError

        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if isinstance(timeout, (int, float)):
        return float(timeout)
    read = getattr(timeout, "read", None)
    if isinstance(read, (int, float)) and read > 0:
        return float(read)
    return None


async def _with_timeout(awaitable: Any, seconds: float | None) -> Any:
    try:
        return await wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise TimeoutError(f"no answer within the caller's timeout of {seconds:g} s") from None


handler = FreeRouterLLM()
_registered = threading.Lock()


def register() -> None:
    """Make ``freerouter/auto`` known to litellm; safe to call any number of times."""
    import litellm

    with _registered:
        providers = litellm.custom_provider_map
        if not any(entry.get("provider") == PROVIDER for entry in providers):
            providers.append({"provider": PROVIDER, "custom_handler": handler})
        from litellm.utils import custom_llm_setup

        setup: Any = custom_llm_setup  # untyped in some litellm versions
        setup()
        _tag_wrapper_chunks()
        missing = {name: dict(MODEL_INFO) for name in MODEL_NAMES if name not in litellm.model_cost}
        if missing:
            litellm.register_model(missing)
