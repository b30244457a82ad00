"""Shared fixtures: a clean environment and a fake OpenRouter for every test."""

from __future__ import annotations

import os

# Before litellm is imported anywhere: no cost-map download, no tokenizer download.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["HF_HUB_OFFLINE"] = "1"

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import pytest

from litellm_freerouter import engine, events
from litellm_freerouter.simulator import ModelScript, Simulator, SimulatorThread

if TYPE_CHECKING:
    from litellm_freerouter.router import Router

KEY = "sk-or-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    """No test sees the developer's key, endpoint or tunables."""
    for name in list(os.environ):
        if name.startswith(("FREEROUTER_", "OPENROUTER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FREEROUTER_STATE_DIR", str(tmp_path / "state"))
    # Exploration reorders candidates at random; the tests that pin it turn it back on.
    monkeypatch.setenv("FREEROUTER_EXPLORE", "0")


@pytest.fixture(autouse=True)
def fresh_routers() -> Iterator[None]:
    """Each test starts with no learned state: routers are per endpoint and key, and the
    tests reuse endpoints."""
    yield
    eng = engine.get_engine()

    async def drop() -> None:
        routers = eng.state.pop("routers", {})
        for router in routers.values():
            await router.aclose()

    eng.submit(drop()).result(10)


def env_router() -> Router:
    """The router a call made with this test's environment (endpoint, key, state) uses."""
    from litellm_freerouter.config import load_settings
    from litellm_freerouter.provider import _router

    return _router(load_settings())


def cool(model: str, seconds: float) -> None:
    """Bench ``model`` for ``seconds`` in the router's shared state, as an earlier failure of
    another request (or another process) would."""
    env_router().health.cool(model, seconds, "slow")


def cool_once_listed(model: str, seconds: float) -> Callable[[], None]:
    """Bench ``model`` for ``seconds`` from the moment the router has fetched the model list,
    just before the request first looks for a ready model: however slow the machine, the
    cooldown cannot run out before the request sees it. Returns the unsubscribe function."""

    def on_event(event: events.Event) -> None:
        if isinstance(event, events.CatalogRefreshed) and event.ok:
            cool(model, seconds)

    return events.subscribe(on_event)


@contextlib.contextmanager
def released_on_failure(model: str) -> Iterator[threading.Event]:
    """A gate for ``ModelScript.hold_first_token``, set once the router has reported that
    ``model`` failed (its cooldown already recorded): a rival held on it sends its first token
    only then, however late a loaded machine runs ``model``, and both are in flight at once."""
    gate = threading.Event()

    def on_event(event: events.Event) -> None:
        if isinstance(event, events.ContenderFailed) and event.model == model:
            gate.set()

    stop = events.subscribe(on_event)
    try:
        yield gate
    finally:
        stop()


@dataclass
class Upstream:
    sim: Simulator
    url: str

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Block until every upstream stream has ended (AssertionError otherwise)."""
        thread = self._thread
        thread.call(lambda: self.sim.wait_idle(timeout))

    def wait_requests(self, count: int, timeout: float = 5.0) -> None:
        """Block until ``count`` chat requests were recorded (AssertionError otherwise)."""
        self._thread.call(lambda: self.sim.wait_requests(count, timeout))

    _thread: SimulatorThread


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[Upstream]:
    """A fake OpenRouter in its own thread (sync callers block the test's loop), wired in
    through the environment like a user's setup."""
    sim = Simulator([], api_key=KEY)
    with SimulatorThread(sim) as thread:
        monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
        monkeypatch.setenv("OPENROUTER_API_BASE", thread.url)
        yield Upstream(sim, thread.url, thread)


def _alive_tasks() -> list[str]:
    """Names of the tasks alive on the running loop (besides the one asking)."""
    me = asyncio.current_task()
    return sorted(
        f"{t.get_name()} {t.get_coro()!r}"
        for t in asyncio.all_tasks()
        if t is not me and not t.done()
    )


def engine_tasks() -> list[str]:
    """Names of the tasks alive on the engine's loop (besides the one asking)."""

    async def names() -> list[str]:
        return _alive_tasks()

    return engine.get_engine().submit(names()).result(5)


def caller_tasks() -> list[str]:
    """freerouter's tasks alive on the caller's loop, when called from a coroutine: async
    requests race there."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return []
    return [name for name in _alive_tasks() if name.startswith("freerouter")]


def request_tasks() -> list[str]:
    """Tasks that belong to a request, on the engine (the catalogue and quota owners excluded)
    and on the caller's loop."""
    on_engine = [
        n for n in engine_tasks() if not n.startswith(("freerouter-catalog", "freerouter-quota"))
    ]
    return on_engine + caller_tasks()


def in_use_connections() -> int:
    """Connections checked out of a pool and not given back: the engine's pool and, called from
    a coroutine, the pool of the caller's loop, where async requests race. A response that is
    neither read to its end nor closed keeps its connection checked out."""

    def acquired(session: aiohttp.ClientSession) -> int:
        # Private, but telling; fail loudly rather than count nothing if aiohttp renames it.
        checked_out = getattr(session.connector, "_acquired", None)
        assert checked_out is not None, "aiohttp's connector no longer has _acquired"
        return len(checked_out)

    async def count() -> int:
        return acquired(engine.session())

    on_engine = engine.get_engine().submit(count()).result(5)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return on_engine
    return on_engine + acquired(engine.session())


async def nothing_left_open(upstream: Upstream, timeout: float = 5.0) -> None:
    """After the calls of a test: no upstream response in progress, no connection checked out
    of a pool, no request task pending.

    A response is given back to its pool as it is closed, which for a sync caller happens on
    the engine's loop a moment after the caller has its last chunk: polled, up to ``timeout``.
    """
    await asyncio.to_thread(upstream.wait_idle, timeout)
    deadline = time.monotonic() + timeout
    while (left := in_use_connections()) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # polling, with a deadline: nothing signals a release
    assert left == 0, f"{left} upstream connection(s) still checked out after {timeout} s"
    assert request_tasks() == []


def fast(model_id: str, text: str = "Hello there", delay: float = 0.0, **kw: object) -> ModelScript:
    words = text.split(" ")
    chunks = tuple(w if i == 0 else " " + w for i, w in enumerate(words))
    return ModelScript(id=model_id, first_token_delay=delay, chunks=chunks, **kw)  # type: ignore[arg-type]
