"""State that outlives the process: the three stores, Health over them, files, fallbacks."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest
import redis

from litellm_freerouter import engine, state
from litellm_freerouter.config import load_settings
from litellm_freerouter.errors import Failure, next_utc_midnight
from litellm_freerouter.health import Health
from litellm_freerouter.simulator import ModelScript
from litellm_freerouter.state.base import COOL, MODEL, Entry, StateStore
from litellm_freerouter.state.memory import MemoryStore
from litellm_freerouter.state.redis import RedisStore, redact
from litellm_freerouter.state.resilient import Resilient
from litellm_freerouter.state.sqlite import FILENAME, SqliteStore

from .conftest import KEY, Upstream, env_router, fast

MESSAGES = [{"role": "user", "content": "Say hello"}]
NOW = 1_900_000_000.0  # a fake clock's start: in the future, so that no entry is pruned


def ask(**kwargs: Any) -> Any:
    return litellm.completion(
        model="freerouter/auto", messages=kwargs.pop("messages", MESSAGES), **kwargs
    )


def new_process() -> None:
    """Forget this process's routers, as a new process would start without them."""
    eng = engine.get_engine()

    async def drop() -> None:
        for router in eng.state.pop("routers", {}).values():
            await router.aclose()

    eng.submit(drop()).result(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A real redis-server on a free loopback port, which a test may kill and start again."""

    def __init__(self, directory: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail(
                "redis-server is not on PATH: install the Debian package"
                " (apt-get install redis-server), as .ci/run does",
                pytrace=False,
            )
        self.exe = exe
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                "",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        log = []
        for line in self.process.stdout:  # its own word that it listens, not a guess
            log.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            pytest.fail("redis-server did not start:\n" + "".join(log), pytrace=False)
        # Keep draining its log, so that it can never block on a full pipe.
        self._drain = threading.Thread(target=self.process.stdout.read, daemon=True)
        self._drain.start()
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self._drain.join(10)
            assert self.process.stdout is not None
            self.process.stdout.close()
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for this module's tests."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The module's Redis, emptied for this test (started again if a test killed it)."""
    if redis_server.process is None:
        redis_server.start()
    redis_server.client().flushall()
    return redis_server.url


def sqlite_stores(tmp_path: Path) -> Callable[[str], StateStore]:
    return lambda scope: SqliteStore(tmp_path / "shared", scope, "catalog")


@pytest.fixture(params=["memory", "sqlite", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], StateStore]]:
    """A factory of stores of one kind that share their backend (like separate processes)."""
    opened: list[StateStore] = []
    memory = MemoryStore()

    def make(scope: str = "k") -> StateStore:
        store: StateStore
        if request.param == "memory":
            store = memory
        elif request.param == "sqlite":
            store = SqliteStore(tmp_path / "shared", scope, "catalog")
        else:
            store = RedisStore(request.getfixturevalue("redis_url"), scope, "catalog")
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def counter(old: Entry | None) -> Entry:
    count = int(old.data["n"]) if old is not None else 0
    return Entry({"n": count + 1}, NOW + 60)


# --- the interface, the same for every store ----------------------------------------------------


def test_concurrent_updates_are_never_lost(stores: Callable[[str], StateStore]) -> None:
    """Four writers with their own connections add 50 each to one entry: it reaches 200."""
    writers = [stores("k") for _ in range(4)]

    def add(store: StateStore) -> None:
        for _ in range(50):
            store.update(MODEL, "m/a:free", counter, NOW)

    threads = [threading.Thread(target=add, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert writers[0].load(NOW)[(MODEL, "m/a:free")].data == {"n": 200}


def test_entries_expire_at_their_deadline(stores: Callable[[str], StateStore]) -> None:
    """An entry is read until its expiry and not after; deleting one removes it."""
    store = stores("k")
    store.update(COOL, "m/a:free", lambda old: Entry({"until": NOW + 10}, NOW + 10), NOW)
    store.update(COOL, "m/b:free", lambda old: Entry({"until": NOW + 10}, NOW + 10), NOW)
    assert set(store.load(NOW + 9)) == {(COOL, "m/a:free"), (COOL, "m/b:free")}
    assert store.load(NOW + 10) == {}
    store.update(COOL, "m/b:free", lambda old: None, NOW)
    assert set(store.load(NOW)) == {(COOL, "m/a:free")}


def test_scopes_are_separate_and_clear_takes_one_or_all(
    stores: Callable[[str], StateStore],
) -> None:
    """Two keys' states do not mix; clear() forgets one scope, clear(everything) all."""
    mine, theirs = stores("mine"), stores("theirs")  # the same object for memory: no scopes
    mine.update(MODEL, "m/a:free", counter, NOW)
    theirs.update(MODEL, "m/a:free", counter, NOW)
    theirs.update(MODEL, "m/a:free", counter, NOW)
    mine.save_catalog([{"id": "m/a:free"}], NOW)
    if mine is not theirs:
        assert mine.load(NOW)[(MODEL, "m/a:free")].data == {"n": 1}
        assert mine.clear() == 1
        assert mine.load(NOW) == {} and mine.load_catalog() is None
        assert theirs.load(NOW)[(MODEL, "m/a:free")].data == {"n": 2}
    theirs.clear(everything=True)
    assert theirs.load(NOW) == {}


def test_catalogue_round_trips(stores: Callable[[str], StateStore]) -> None:
    """A saved free-model list comes back with its fetch time, for any key of the endpoint."""
    models = [{"id": "m/a:free", "context_length": 1000, "supported_parameters": ["tools"]}]
    stores("k").save_catalog(models, NOW - 5)
    cached = stores("other-key").load_catalog()
    assert cached is not None
    assert list(cached.models) == models and cached.fetched_at == NOW - 5


# --- Health over a shared store -----------------------------------------------------------------


@pytest.fixture
def two_healths(tmp_path: Path) -> Iterator[Callable[[list[float]], tuple[Health, Health]]]:
    """Two Healths over one SQLite file (like two processes), closed after the test."""
    made: list[Health] = []

    def make(clock: list[float]) -> tuple[Health, Health]:
        stores = sqlite_stores(tmp_path)
        pair = (
            Health(lambda: clock[0], store=Resilient(stores("k"))),
            Health(lambda: clock[0], store=Resilient(stores("k"))),
        )
        made.extend(pair)
        return pair

    yield make
    for health in made:
        health.close()


def test_cooldown_of_one_health_holds_in_another(
    two_healths: Callable[[list[float]], tuple[Health, Health]],
) -> None:
    """A cooldown recorded by one process is honoured by another after its next refresh."""
    clock = [NOW]
    one, other = two_healths(clock)
    one.cool("m/a:free", 90, "rate_limited")
    assert other.ready("m/a:free")  # not read yet: a request refreshes first
    other.refresh()
    assert other.cooling_for("m/a:free") == 90
    assert other.view("m/a:free").cool_reason == "rate_limited"
    other.cool("m/a:free", 10, "slow")  # a shorter cooldown never cuts a longer one
    one.refresh()
    assert one.cooling_for("m/a:free") == 90
    clock[0] += 91
    one.refresh()
    assert one.ready("m/a:free")


def test_statistics_from_two_processes_add_up(
    two_healths: Callable[[list[float]], tuple[Health, Health]],
) -> None:
    """Attempts, wins and first-token samples recorded by two processes are all kept."""
    clock = [NOW]
    one, other = two_healths(clock)
    one.record_attempt("m/a:free")
    other.record_attempt("m/a:free")
    one.record_first_token("m/a:free", 0.2)
    other.record_first_token("m/a:free", 0.4)
    other.record_failure("m/a:free")
    one.refresh()
    stats = one.stats("m/a:free")
    assert (stats.attempts, stats.wins) == (2, 2)
    assert sorted(stats.ttft) == [0.2, 0.4]
    assert stats.failures == 1.0 and stats.successes == pytest.approx(1.8 * 0.8)


def test_a_refused_request_counts_in_the_accounts_minute_everywhere(
    two_healths: Callable[[list[float]], tuple[Health, Health]],
) -> None:
    """A request a model refused with a 429 leaves the model's own minute but stays in the
    account's, in the process that sent it and in one that shares the state."""
    clock = [NOW]
    one, other = two_healths(clock)
    one.record_attempt("m/a:free")
    one.record_attempt("m/b:free")
    one.refused("m/b:free", 1)
    other.refresh()
    for health in (one, other):
        assert health.sent_last_minute() == 2
        assert health.limit_wait("m/b:free") == 0
    clock[0] += 61
    assert other.sent_last_minute() == 0


def test_daily_quota_stop_holds_across_processes_until_the_reset(
    two_healths: Callable[[list[float]], tuple[Health, Health]],
) -> None:
    """The daily-quota block written by one process stops another until UTC midnight."""
    clock = [NOW]
    one, other = two_healths(clock)
    reset = next_utc_midnight(NOW)
    one.set_quota(50, 3)
    one.spend(2)
    other.refresh()
    assert other.quota_remaining() == 1
    one.block_account(Failure("daily_quota", "account", "used up"), reset)
    other.refresh()
    held = other.account_block()
    assert held is not None and held.kind == "daily_quota"
    clock[0] = reset - 1
    other.refresh()
    assert other.account_block() is not None
    clock[0] = reset + 1
    other.refresh()
    assert other.account_block() is None
    assert other.quota_remaining() == 50  # a new day


def test_clearing_the_block_reaches_other_processes(
    two_healths: Callable[[list[float]], tuple[Health, Health]],
) -> None:
    """clear_account_block() lifts the hold for every process."""
    clock = [NOW]
    one, other = two_healths(clock)
    one.block_account(Failure("minute_limit", "account", "slow down"), NOW + 60)
    other.refresh()
    assert other.account_block() is not None
    other.clear_account_block()
    one.refresh()
    assert one.account_block() is None


def one_rate_limited(upstream: Upstream, answer: str) -> None:
    """Two models: ``bad/a`` answers 429 "rate-limited upstream", ``good/b`` answers."""
    upstream.sim.set_models(
        [
            ModelScript(
                "bad/a:free",
                context_length=1000,
                status=429,
                error_message="Provider returned error",
            ),
            fast("good/b:free", answer, context_length=2000, delay=0.1),
        ]
    )


@pytest.mark.parametrize("hint", ["inf", "1e999", "1e12"])
def test_an_endless_wait_hint_never_benches_a_model_for_good(
    upstream: Upstream, hint: str, tmp_path: Path
) -> None:
    """A 429 saying Retry-After: inf (or an overflow, or centuries) cools the model for the
    usual time, or a day at most: the state file holds a finite expiry, `state show --json` stays
    JSON, and the request is answered by the other model."""
    one_rate_limited(upstream, "still answered")
    upstream.sim.models["bad/a:free"] = dataclasses.replace(
        upstream.sim.models["bad/a:free"], error_headers={"Retry-After": hint}
    )
    assert ask().choices[0].message.content == "still answered"
    health = env_router().health
    cooling = health.cooling_for("bad/a:free")
    assert 0 < cooling <= 86400
    health.cool("other/c:free", float("inf"), "slow")
    health.block_account(Failure("minute_limit", "account", "x"), float("nan"))
    assert health.cooling_for("other/c:free") <= 7 * 86400
    db = sqlite3.connect(tmp_path / "state" / FILENAME)
    try:
        expiries = [row[0] for row in db.execute("SELECT expires FROM entries")]
    finally:
        db.close()
    assert expiries and all(e is not None and math.isfinite(e) for e in expiries)
    shown = subprocess.run(
        [sys.executable, "-m", "litellm_freerouter", "state", "show", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    json.loads(shown.stdout)


# --- the SQLite file ----------------------------------------------------------------------------


def test_state_files_are_private_and_hold_no_key(upstream: Upstream, tmp_path: Path) -> None:
    """The state directory is 0700, its files 0600, and no byte of the key is in them."""
    one_rate_limited(upstream, "hello")
    assert ask().choices[0].message.content == "hello"
    new_process()  # closes the file
    directory = tmp_path / "state"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = sorted(p.name for p in directory.iterdir())
    assert FILENAME in files
    for name in files:
        path = directory / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        assert KEY.encode() not in path.read_bytes(), name


def test_wal_files_are_private_too(tmp_path: Path) -> None:
    """While the store is open, its -wal and -shm files are owner-only as well."""
    store = SqliteStore(tmp_path / "s", "k", "c")
    store.update(MODEL, "m/a:free", counter, NOW)
    names = {p.name for p in (tmp_path / "s").iterdir()}
    assert {FILENAME + "-wal", FILENAME + "-shm"} <= names
    for name in names:
        assert stat.S_IMODE((tmp_path / "s" / name).stat().st_mode) == 0o600, name
    store.close()


def test_corrupt_state_file_warns_once_and_routes_in_memory(
    upstream: Upstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage in the state file: one warning, and every request is still answered."""
    directory = tmp_path / "state"
    directory.mkdir()
    (directory / FILENAME).write_bytes(b"this is not a database" * 100)
    upstream.sim.set_models([fast("good/a:free", "still here")])
    for _ in range(2):
        assert ask().choices[0].message.content == "still here"
        new_process()
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING
        and r.name == "litellm_freerouter"
        and "state" in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "memory" in warnings[0].getMessage() and "state clear" in warnings[0].getMessage()
    assert state.describe(load_settings()).backend == "memory"


def test_unwritable_state_dir_warns_once_and_routes_in_memory(
    upstream: Upstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A state directory that cannot be created: one warning, answers from memory."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FREEROUTER_STATE_DIR", str(blocker / "state"))
    upstream.sim.set_models([fast("good/a:free", "fine")])
    assert ask().choices[0].message.content == "fine"
    new_process()
    assert ask().choices[0].message.content == "fine"
    warnings = [
        r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "litellm_freerouter"
    ]
    assert len(warnings) == 1 and str(blocker) in warnings[0].getMessage()


def test_a_newer_schema_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file from a newer version is not touched: memory, one warning naming the schema."""
    import sqlite3

    directory = tmp_path / "state"
    SqliteStore(directory, "k", "c").close()
    with contextlib.closing(sqlite3.connect(directory / FILENAME)) as db:
        db.execute("PRAGMA user_version = 99")
        db.commit()
    before = (directory / FILENAME).read_bytes()
    store = state.open_store(load_settings())
    assert isinstance(store, MemoryStore)
    assert "newer" in caplog.text
    assert (directory / FILENAME).read_bytes() == before


def test_a_new_process_answers_from_the_cached_catalogue(upstream: Upstream) -> None:
    """With a saved list, the first answer does not wait for /models; it refreshes behind."""
    upstream.sim.set_models([fast("good/a:free", "from the cache")])
    ask()
    fetches = upstream.sim.models_fetches
    new_process()
    # Make the saved list stale, and /models slower than the caller is willing to wait.
    store = state.open_store(load_settings())
    cached = store.load_catalog()
    assert cached is not None
    store.save_catalog(cached.models, time.time() - 7200)
    store.close()
    upstream.sim.models_delay = 60
    assert ask(timeout=10).choices[0].message.content == "from the cache"
    router = env_router()
    assert router.catalog.fetched_at is not None and router.catalog.stale()
    # The refresh runs in the background (and is cancelled at the end of the test).
    deadline = time.monotonic() + 10
    while upstream.sim.models_fetches == fetches and time.monotonic() < deadline:
        engine.call_sync(_yield_once)
    assert upstream.sim.models_fetches == fetches + 1


def test_a_key_that_starts_from_a_list_another_key_cached_learns_its_latency(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list is cached per endpoint, latency figures per key: a key whose process starts
    from a fresh cached list reads the per-endpoint latency on its first request, rather than
    ranking without it until the list is an hour old."""
    from litellm_freerouter.provider import _router

    upstream.sim.set_models([fast("good/a:free", "hi", endpoint_latency_ms=320.0)])
    monkeypatch.delenv("OPENROUTER_API_KEY")
    anonymous = _router(load_settings())  # as `freerouter models` without a key
    engine.call_sync(anonymous.models)
    engine.call_sync(anonymous.settle)
    assert anonymous.health.stats("good/a:free").prior_ttft == pytest.approx(0.32)
    new_process()
    fetches = upstream.sim.models_fetches
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    assert ask().choices[0].message.content == "hi"
    assert upstream.sim.models_fetches == fetches  # the cached list answered
    health = env_router().health
    deadline = time.monotonic() + 10
    while health.stats("good/a:free").prior_ttft is None and time.monotonic() < deadline:
        engine.call_sync(_yield_once)
    assert health.stats("good/a:free").prior_ttft == pytest.approx(0.32)


async def _yield_once() -> None:
    """Let the engine's loop run its other tasks for a moment."""
    import asyncio

    await asyncio.sleep(0.01)


def test_a_cooldown_from_an_earlier_process_is_honoured(upstream: Upstream) -> None:
    """A model rate-limited before a restart is not called by the new process."""
    one_rate_limited(upstream, "ok")
    ask()
    new_process()
    upstream.sim.set_models(
        [
            fast("bad/a:free", "healthy again", context_length=1000),
            fast("good/b:free", "ok", context_length=2000, delay=0.1),
        ]
    )
    later = [{"role": "user", "content": "after the restart"}]
    assert ask(messages=later).choices[0].message.content == "ok"
    assert [q.model for q in upstream.sim.requests if q.body["messages"] == later] == [
        "good/b:free"
    ]


def test_describe_and_clear(upstream: Upstream, tmp_path: Path) -> None:
    """describe() shows who is cooling and why and the quota left; clear() resets it all."""
    upstream.sim.daily_quota = 40
    one_rate_limited(upstream, "ok")
    ask()
    router = env_router()
    engine.call_sync(lambda: router.read_quota(KEY))
    new_process()
    report = state.describe(load_settings())
    assert (report.backend, report.where) == ("sqlite", str(tmp_path / "state" / FILENAME))
    assert [(c.model, c.reason) for c in report.cooling] == [("bad/a:free", "rate_limited")]
    assert 80 < report.cooling[0].seconds <= 90
    assert (report.quota_remaining, report.quota_limit) == (38, 40)
    assert report.catalog_models == 2 and report.problem is None
    text = "\n".join(report.lines())
    assert "bad/a:free" in text and "38 of 40" in text
    assert report.as_dict()["cooling"][0]["model"] == "bad/a:free"
    assert "cleared" in state.clear(load_settings())
    empty = state.describe(load_settings())
    assert (empty.cooling, empty.quota_remaining, empty.catalog_models) == ((), None, None)


def test_clear_removes_a_corrupt_file(tmp_path: Path) -> None:
    """`freerouter state clear` deletes a file too damaged to open; the next run starts afresh."""
    directory = tmp_path / "state"
    directory.mkdir()
    (directory / FILENAME).write_bytes(b"\x00garbage" * 64)
    assert "removed" in state.clear(load_settings())
    assert state.describe(load_settings()).backend == "sqlite"


def test_clear_leaves_a_file_that_is_only_locked(tmp_path: Path) -> None:
    """A file another process holds locked is in use, not damaged: `state clear` says so and
    removes nothing (else one key's clear would wipe every key's state); once the lock is
    gone, it clears as usual."""
    settings = load_settings(api_key=KEY)
    other = load_settings(api_key=KEY + "-other")
    for each in (settings, other):
        health = Health(store=state.open_store(each))
        health.cool("m/a:free", 900, "rate_limited")
        health.close()
    holder = sqlite3.connect(tmp_path / "state" / FILENAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(state.StateUnavailable, match="locked by another process"):
            state.clear(settings)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [c.model for c in state.describe(other).cooling] == ["m/a:free"]
    assert "cleared 1 entries" in state.clear(settings)
    assert state.describe(settings).cooling == ()
    assert [c.model for c in state.describe(other).cooling] == ["m/a:free"]


def test_a_process_started_during_a_lock_uses_the_file_once_it_is_free(tmp_path: Path) -> None:
    """A process (a proxy) that starts while another holds the file locked keeps its state in
    memory meanwhile, and tries the file again: once it opens, what it learnt is written back
    for every other process, and it shares theirs from then on."""
    settings = load_settings(api_key=KEY)
    Health(store=state.open_store(settings)).close()  # the file exists
    holder = sqlite3.connect(tmp_path / "state" / FILENAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        store = state.open_store(settings)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert isinstance(store, Resilient) and "database is locked" in (store.problem or "")
    health = Health(store=store)
    try:
        health.cool("m/a:free", 900, "rate_limited")
        deadline = time.monotonic() + 10
        while store.problem is not None and time.monotonic() < deadline:
            health.refresh()  # polling, with a deadline: the file is retried off this thread
            time.sleep(0.01)
        assert store.problem is None
        assert [c.model for c in state.describe(settings).cooling] == ["m/a:free"]
    finally:
        health.close()


def test_state_is_scoped_by_key_and_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another key or another endpoint has its own scope; the scope is a hash, not the key."""
    base = load_settings(api_key=KEY)
    scopes = {
        state.scope_of(base),
        state.scope_of(load_settings(api_key=KEY + "x")),
        state.scope_of(load_settings(api_key=KEY, api_base="http://127.0.0.1:9/api/v1")),
    }
    assert len(scopes) == 3
    assert all(KEY not in s for s in scopes)
    assert state.scope_of(base) == base.key_id


# --- Redis --------------------------------------------------------------------------------------


def test_redis_keys_expire_with_what_they_hold(redis_server: RedisServer, redis_url: str) -> None:
    """A cooldown's key expires when it ends, the daily block's at the reset."""
    health = Health(store=Resilient(RedisStore(redis_url, "k", "c")))
    health.cool("m/a:free", 90, "rate_limited")
    reset = next_utc_midnight(time.time())
    health.block_account(Failure("daily_quota", "account", "used up"), reset)
    client = redis_server.client()
    assert 89_000 < client.pttl("freerouter:{k}:cool:m/a:free") <= 90_000
    assert abs(client.pttl("freerouter:{k}:account:block") / 1000 - (reset - time.time())) < 5
    assert client.ttl("freerouter:{k}:model:m/a:free") == -2  # nothing measured, nothing kept
    health.close()


def test_redis_password_is_never_shown() -> None:
    """The Redis URL is shown without its password."""
    assert redact("redis://user:s3cret@cache:6380/1") == "redis://user:***@cache:6380/1"
    assert redact("redis://cache:6379") == "redis://cache:6379"


def test_redis_down_at_start_never_fails_a_request(
    upstream: Upstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No Redis yet: answers from local state with one warning, and shares once it comes."""
    import litellm_freerouter.state.resilient as resilient

    monkeypatch.setattr(resilient, "RETRY_EVERY", 0.05)
    server = RedisServer(tmp_path)
    monkeypatch.setenv("FREEROUTER_REDIS_URL", server.url)
    one_rate_limited(upstream, "ok")
    for _ in range(3):
        assert ask().choices[0].message.content == "ok"
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and r.name == "litellm_freerouter"
    ]
    assert len(warnings) == 1 and "redis" in warnings[0].getMessage()
    assert "unavailable" in warnings[0].getMessage()
    server.start()
    try:
        router = env_router()
        deadline = time.monotonic() + 10
        while router.health.store.problem is not None and time.monotonic() < deadline:
            engine.call_sync(_refresh_after_a_moment(router))
        assert router.health.store.problem is None
        # The cooldown set while Redis was away was written back.
        keys = server.client().keys("freerouter:*:cool:*")
        assert [k.rsplit(":cool:", 1)[1] for k in keys] == ["bad/a:free"]
    finally:
        new_process()
        server.kill()


def _refresh_after_a_moment(router: Any) -> Callable[[], Any]:
    async def refresh() -> None:
        await _yield_once()
        router.health.refresh()

    return refresh


def test_redis_killed_mid_run_falls_back_and_writes_back(
    redis_server: RedisServer,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis killed: local state carries on with one warning; back: changes are shared."""
    import litellm_freerouter.state.resilient as resilient

    monkeypatch.setattr(resilient, "RETRY_EVERY", 0.05)
    one = Health(store=Resilient(RedisStore(redis_url, "k", "c")))
    other = Health(store=Resilient(RedisStore(redis_url, "k", "c")))
    one.cool("m/a:free", 300, "rate_limited")
    other.refresh()
    redis_server.kill()
    one.cool("m/b:free", 300, "gone")  # kept locally
    one.refresh()  # the local copy still knows both
    assert not one.ready("m/a:free") and not one.ready("m/b:free")
    other.refresh()  # answered from what it read before
    assert not other.ready("m/a:free")
    assert one.store.problem is not None and "redis" in one.store.problem
    redis_server.start()
    deadline = time.monotonic() + 10
    while one.store.problem is not None and time.monotonic() < deadline:
        one.refresh()
        threading.Event().wait(0.01)  # the probe runs in its own thread
    assert one.store.problem is None
    fresh = Health(store=Resilient(RedisStore(redis_url, "k", "c")))
    assert not fresh.ready("m/a:free")
    assert fresh.view("m/b:free").cool_reason == "gone"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per Health that noticed, not one per call
    for health in (one, other, fresh):
        health.close()


class _Switchable(MemoryStore):
    """A shared store that can be switched off (every call raises, as a killed Redis)."""

    kind = "switchable"
    shared = True
    errors = (ConnectionError,)
    down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("switched off")

    def load(self, now: float) -> Any:
        self._check()
        return super().load(now)

    def update(self, *args: Any) -> Any:
        self._check()
        return super().update(*args)

    def ping(self) -> None:
        self._check()


def test_quota_spent_while_the_store_was_away_is_not_lost_on_its_return(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Requests one process sent while the shared store was away are still counted once it is
    back, though the store's own count (by the others) is of the same day: the count with
    fewer requests left wins, not the one that happens to be there."""
    import litellm_freerouter.state.resilient as resilient

    monkeypatch.setattr(resilient, "RETRY_EVERY", 0.0)
    shared = _Switchable()
    one = Health(store=Resilient(shared))
    other = Health(store=shared)
    one.set_quota(1000, 100)
    other.refresh()
    assert other.quota_remaining() == 100
    shared.down = True
    for _ in range(5):
        one.spend()  # counted here only
    assert one.quota_remaining() == 95
    shared.down = False
    other.spend()  # the others carry on meanwhile: the store says 99
    deadline = time.monotonic() + 10
    while one.store.problem is not None and time.monotonic() < deadline:
        one.refresh()
        threading.Event().wait(0.01)  # the probe runs in its own thread
    assert one.store.problem is None
    other.refresh()
    assert other.quota_remaining() == 95
    one.close()


def test_missing_redis_package_falls_back_to_the_file(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """redis_url without the redis package: a warning saying what to install, and SQLite."""
    import builtins

    real_import = builtins.__import__

    def no_redis(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "redis" or name.startswith("redis."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_redis)
    monkeypatch.setattr(state, "_warned", set())
    monkeypatch.setenv("FREEROUTER_REDIS_URL", "redis://127.0.0.1:9/0")
    store = state.open_store(load_settings())
    assert store.kind == "sqlite"
    assert "litellm-freerouter[redis]" in caplog.text
    store.close()
    # ... and `state show` / doctor say it, not only a log line.
    report = state.describe(load_settings())
    assert report.backend == "sqlite"
    assert report.problem is not None and "litellm-freerouter[redis]" in report.problem


def test_state_files_have_no_key_with_redis_either(
    upstream: Upstream,
    redis_server: RedisServer,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With Redis, nothing of the key reaches Redis: names and values hold only its hash."""
    monkeypatch.setenv("FREEROUTER_REDIS_URL", redis_url)
    upstream.sim.set_models([fast("good/a:free", "ok")])
    ask()
    client = redis_server.client()
    keys = client.keys("*")
    assert keys
    for key in keys:
        assert KEY not in key
        if client.type(key) == "string":
            assert KEY not in client.get(key)
