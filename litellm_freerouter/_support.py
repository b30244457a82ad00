"""What the ``freerouter`` subcommands share: the router, errors as one line, a streamed answer."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from . import engine
from ._race_view import RaceRecord
from ._ui import Output, ms, one_line
from .catalog import FreeModel
from .config import Settings
from .errors import CatalogUnavailable, FreeRouterError, MalformedKeyError, MissingKeyError
from .provider import MODEL_NAME, _router
from .router import Router

MISSING_KEY = (
    "no OpenRouter API key: set OPENROUTER_API_KEY or pass --api-key; create one for free at"
    " https://openrouter.ai/keys"
)
_LITELLM_PREFIX = re.compile(r"^(?:litellm\.\w+:\s*|\w+Exception\s+-\s+)+")
_LITELLM_TAIL = re.compile(r"\n|Original exception:|Traceback \(most recent call last\)")


def router_for(settings: Settings) -> Router:
    """The process's router for this endpoint and key (the one litellm's calls use too)."""

    async def get() -> Router:
        return _router(settings)

    return engine.call_sync(get)


async def settle(router: Router, timeout: float = 10.0) -> None:
    """Let the router's background reads (per-model /endpoints, /key) finish, bounded.

    ``models`` wants their latency figures for its ranking, and the demo wants them done
    before it stops its simulator.
    """
    await router.settle(timeout)


def cancel_in_flight(timeout: float = 3.0) -> None:
    """On Ctrl-C, just before the process exits: cancel whatever the engine still runs and let
    it close its connections (bounded), so nothing is left pending when the loop stops.

    The engine's own bridges do this for a request, except when the interrupt lands while the
    request is being handed to the engine.
    """

    async def cancel() -> None:
        me = asyncio.current_task()
        tasks = {task for task in asyncio.all_tasks() if task is not me}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    with contextlib.suppress(Exception):
        engine.get_engine().submit(cancel()).result(timeout + 1)


def free_models(settings: Settings) -> tuple[FreeModel, ...]:
    """The free-model list (fetched once per process); raises CatalogUnavailable and co."""

    async def get() -> tuple[FreeModel, ...]:
        return await _router(settings).catalog.get()

    return engine.call_sync(get, timeout=90)


def network_cause(exc: BaseException) -> BaseException | None:
    """The network error (connection, DNS, timeout) somewhere behind ``exc``, if any."""
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        if isinstance(cause, (aiohttp.ClientError, asyncio.TimeoutError, OSError)):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def unreachable(exc: CatalogUnavailable) -> bool:
    """Whether the list failed because the endpoint could not be reached at all."""
    return network_cause(exc) is not None


def catalog_problem(exc: CatalogUnavailable, base: str) -> str:
    if unreachable(exc):
        cause = network_cause(exc)
        detail = str(cause) if cause is not None and str(cause) else str(exc)
        return (
            f"cannot reach OpenRouter at {base} (endpoint unreachable): {detail}. Check the"
            " network or proxy, and --api-base / OPENROUTER_API_BASE"
        )
    return str(exc)  # the catalogue's own words: "could not fetch the free-model list: ..."


def describe(exc: BaseException, base: str | None = None) -> str:
    """One line a person can act on, for any error a command can meet."""
    original = getattr(exc, "original_exception", None)
    if isinstance(original, BaseException) and original is not exc:
        return describe(original, base)
    if isinstance(exc, MissingKeyError):
        # Set but unusable is not missing: say what is wrong with it.
        return one_line(str(exc)) if isinstance(exc, MalformedKeyError) else MISSING_KEY
    if isinstance(exc, CatalogUnavailable):
        return one_line(catalog_problem(exc, base or "the API base"))
    if isinstance(exc, (FreeRouterError, TimeoutError)):
        return one_line(str(exc) or type(exc).__name__)
    text = str(getattr(exc, "message", None) or exc)
    if type(exc).__module__.startswith(("litellm", "openai")):
        # litellm appends the original exception and, for some classes, a whole traceback.
        text = _LITELLM_TAIL.split(text.strip())[0]
        text = _LITELLM_PREFIX.sub("", text.strip())
        return one_line(text or type(exc).__name__)
    return one_line(f"unexpected {type(exc).__name__}: {text}; run with --verbose for details")


def stream_answer(
    out: Output,
    settings: Settings,
    messages: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any],
) -> str:
    """Stream one answer through litellm (as any litellm user would) to ``out``; returns it."""
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on errors
    response = litellm.completion(
        model=MODEL_NAME,
        messages=list(messages),
        stream=True,
        api_base=settings.api_base,
        api_key=settings.api_key,
        **extra,
    )
    text: list[str] = []
    try:
        for chunk in response:
            choices = getattr(chunk, "choices", None)
            if not choices:
                continue
            content = getattr(choices[0].delta, "content", None)
            if content:
                out.write(content)
                text.append(content)
    finally:
        close = getattr(response, "close", None)
        if callable(close):
            close()
        if text:
            out.write("\n")
    return "".join(text)


def done_line(err: Output, record: RaceRecord | None) -> None:
    """The closing line of one request, printed once the answer is complete."""
    if record is None or record.winner is None:
        return
    dot = err.sym(" · ", ", ")
    tail = f"{dot}{record.duration:.2f} s in all" if record.duration is not None else ""
    dropped = f"{dot}{len(record.dropped)} dropped" if record.dropped else ""
    err.parts(
        [
            (err.sym("✓ ", "done: "), "bold green"),
            (f"answered by {record.winner}", "green"),
            (
                f"{dot}first token {ms(record.first_token)}{tail}{dot}"
                f"{len(record.started)} started{dropped}",
                "dim",
            ),
        ]
    )
