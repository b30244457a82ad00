"""Several processes sharing state, in a row and side by side, through SQLite and Redis.

Each worker is a real Python process that imports litellm_freerouter and answers commands on
stdin with ``litellm.completion`` against the simulator of this test process.  Workers start
together (importing litellm takes seconds) but build their router only at their first request,
so a worker whose first request comes after another has quit starts like a new process.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from litellm_freerouter.simulator import ModelScript

from .conftest import Upstream, fast
from .test_state import RedisServer

WORKER = r"""
import json, logging, sys
import litellm
import litellm_freerouter
import litellm_freerouter.state.resilient as resilient
from litellm_freerouter import engine
from litellm_freerouter.config import load_settings
from litellm_freerouter.provider import _router

resilient.RETRY_EVERY = 0.1
handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(logging.Formatter("FREEROUTER %(levelname)s %(message)s"))
logging.getLogger("litellm_freerouter").addHandler(handler)

async def problem():
    router = _router(load_settings())
    router.health.refresh()
    return router.health.store.problem

print("ready", flush=True)
for line in sys.stdin:
    command = json.loads(line)
    if command["op"] == "quit":
        break
    if command["op"] == "problem":
        print(json.dumps({"problem": engine.call_sync(problem)}), flush=True)
        continue
    try:
        response = litellm.completion(
            model="freerouter/auto", timeout=20,
            messages=[{"role": "user", "content": command["tag"]}],
        )
        out = {"ok": True, "text": response.choices[0].message.content}
    except Exception as exc:
        out = {"ok": False, "error": type(exc).__name__, "message": str(exc)[:300]}
    print(json.dumps(out), flush=True)
"""

STARTUP = 120.0  # importing litellm takes seconds, more on a loaded machine
ANSWER = 60.0


class Worker:
    """One worker process; ``ask`` sends a tagged request and returns what the worker got."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._stderr = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER],
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put("")  # the worker ended

    def _reply(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"worker {self.name} silent for {timeout} s:\n{self.log.read_text()[-3000:]}"
            ) from None
        if not line:
            raise AssertionError(f"worker {self.name} ended:\n{self.log.read_text()[-3000:]}")
        return line

    def ready(self) -> None:
        assert self._reply(STARTUP).strip() == "ready"

    def _send(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        reply: dict[str, Any] = json.loads(self._reply(ANSWER))
        return reply

    def ask(self, tag: str) -> dict[str, Any]:
        return self._send({"op": "ask", "tag": tag})

    def problem(self) -> str | None:
        problem: str | None = self._send({"op": "problem"})["problem"]
        return problem

    def quit(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.process.stdin.close()
            self.process.wait(30)
        self._reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        self._stderr.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self._reader.join(10)
        self._stderr.close()

    def warnings(self) -> list[str]:
        return [
            line
            for line in self.log.read_text().splitlines()
            if line.startswith("FREEROUTER WARNING")
        ]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Any]:
    """Start named workers together; each gets this test's environment plus its extras."""
    started: list[Worker] = []

    def start(names: list[str], extra: dict[str, dict[str, str]] | None = None) -> list[Worker]:
        group = []
        for name in names:
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {}).get(name, {})}
            group.append(Worker(name, env, tmp_path / f"{name}.log"))
        started.extend(group)
        for worker in group:
            worker.ready()
        return group

    yield start
    for worker in started:
        worker.kill()


def called(upstream: Upstream, tag: str) -> list[str]:
    """The models that requests tagged ``tag`` were sent to."""
    return sorted(
        q.model
        for q in upstream.sim.requests
        if q.body.get("messages", [{}])[0].get("content") == tag
    )


BAD = "bad/a:free"
GOOD = "good/b:free"


def healthy() -> list[ModelScript]:
    return [
        fast(BAD, "from a", context_length=1000, delay=0.05),
        fast(GOOD, "from b", context_length=2000, delay=0.3),
    ]


def rate_limited() -> list[ModelScript]:
    return [
        ModelScript(BAD, context_length=1000, status=429, error_message="Provider returned error"),
        fast(GOOD, "from b", context_length=2000, delay=0.3),
    ]


def test_sqlite_processes_share_cooldowns_side_by_side_and_in_a_row(
    upstream: Upstream, workers: Any
) -> None:
    """One process's cooldown holds in a running one and a new one, which skips /models."""
    one, other, later = workers(["one", "other", "later"])
    upstream.sim.set_models(healthy())
    assert one.ask("one-1")["ok"] and other.ask("other-1")["ok"]
    assert called(upstream, "other-1") == [BAD, GOOD]
    upstream.sim.set_models(rate_limited())
    assert one.ask("one-2") == {"ok": True, "text": "from b"}
    assert called(upstream, "one-2") == [BAD, GOOD]
    # Side by side: the other process, already running, does not call the cooling model.
    upstream.sim.set_models(healthy())
    assert other.ask("other-2") == {"ok": True, "text": "from b"}
    assert called(upstream, "other-2") == [GOOD]
    one.quit()
    # In a row: a process whose first request comes now, while /models hangs.
    fetches = upstream.sim.models_fetches
    upstream.sim.models_delay = 600
    assert later.ask("later-1") == {"ok": True, "text": "from b"}
    assert called(upstream, "later-1") == [GOOD]
    assert upstream.sim.models_fetches == fetches


def test_sqlite_daily_quota_stop_holds_in_the_next_process(
    upstream: Upstream, workers: Any
) -> None:
    """Once one process has met the daily-quota 429, the next sends nothing until the reset."""
    one, other = workers(["one", "other"])
    upstream.sim.daily_quota = 1
    upstream.sim.set_models(healthy())
    assert one.ask("one-1")["ok"]  # spends the day's one request
    stopped = one.ask("one-2")  # a request to one model meets the daily 429
    assert stopped["error"] == "RateLimitError" and "00:00 UTC" in stopped["message"]
    one.quit()
    held = other.ask("other-1")
    assert held["error"] == "RateLimitError"
    assert called(upstream, "other-1") == []


def _attempts(directory: str, count: int) -> None:
    """In a forked child: record ``count`` attempts through a store of its own."""
    from litellm_freerouter.health import Health
    from litellm_freerouter.state.sqlite import SqliteStore

    health = Health(store=SqliteStore(Path(directory), "k", "c"))
    for _ in range(count):
        health.record_attempt(BAD)
    health.close()


def test_processes_writing_at_once_lose_no_update(tmp_path: Path) -> None:
    """Four processes recording 100 attempts each on one model at once: 400 are stored."""
    import multiprocessing

    context = multiprocessing.get_context("fork")  # the child needs no second litellm import
    children = [context.Process(target=_attempts, args=(str(tmp_path), 100)) for _ in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    from litellm_freerouter.health import Health
    from litellm_freerouter.state.sqlite import SqliteStore

    health = Health(store=SqliteStore(tmp_path, "k", "c"))
    assert health.stats(BAD).attempts == 400
    health.close()


def redis_env(server: RedisServer, tmp_path: Path, names: list[str]) -> dict[str, dict[str, str]]:
    """Each worker its own state directory: whatever they share goes through Redis."""
    return {
        name: {
            "FREEROUTER_REDIS_URL": server.url,
            "FREEROUTER_STATE_DIR": str(tmp_path / f"state-{name}"),
        }
        for name in names
    }


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may kill."""
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


def test_redis_workers_share_cooldowns_and_the_quota_stop(
    upstream: Upstream, workers: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Through Redis alone, one worker's cooldown and daily-quota stop hold in the other."""
    one, other = workers(["one", "other"], redis_env(redis_server, tmp_path, ["one", "other"]))
    upstream.sim.set_models(healthy())
    assert one.ask("one-1")["ok"] and other.ask("other-1")["ok"]
    upstream.sim.set_models(rate_limited())
    assert one.ask("one-2") == {"ok": True, "text": "from b"}
    upstream.sim.set_models(healthy())
    assert other.ask("other-2") == {"ok": True, "text": "from b"}
    assert called(upstream, "other-2") == [GOOD]
    upstream.sim.daily_quota = upstream.sim.quota_used  # the day's requests are all spent
    assert one.ask("one-3")["error"] == "RateLimitError"
    held = other.ask("other-3")
    assert held["error"] == "RateLimitError" and "00:00 UTC" in held["message"]
    assert called(upstream, "other-3") == []
    assert redis_server.client().keys("freerouter:*:account:block")
    for worker in (one, other):
        assert worker.warnings() == []


def test_killing_redis_mid_run_loses_no_request(
    upstream: Upstream, workers: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis killed mid-request: all answered, one warning each, and shared again on return."""
    one, other = workers(["one", "other"], redis_env(redis_server, tmp_path, ["one", "other"]))
    upstream.sim.set_models(healthy())
    assert one.ask("one-1")["ok"] and other.ask("other-1")["ok"]
    # A slow answer, and Redis killed while it streams.
    upstream.sim.set_models(
        [
            fast(BAD, "slow a", context_length=1000, delay=3.0),
            fast(GOOD, "slow b", context_length=2000, delay=3.0),
        ]
    )
    answer: dict[str, Any] = {}
    asking = threading.Thread(target=lambda: answer.update(one.ask("one-2")))
    asking.start()
    until(lambda: len(called(upstream, "one-2")) == 2, "both upstream requests to open")
    redis_server.kill()
    asking.join(ANSWER)
    assert answer["ok"], answer
    # Redis down: both keep answering; only the first learns that a model is rate-limited.
    upstream.sim.set_models(healthy())
    for i in range(3):
        assert other.ask(f"other-down-{i}")["ok"]
    upstream.sim.set_models(rate_limited())
    for i in range(3):
        assert one.ask(f"one-down-{i}") == {"ok": True, "text": "from b"}
    assert called(upstream, "one-down-1") == [GOOD]  # its own cooldown holds meanwhile
    for worker in (one, other):
        assert len(worker.warnings()) == 1, worker.warnings()
        assert "unavailable" in worker.warnings()[0]
    # Back, and empty (as a restarted Redis without persistence is): both find it again, and
    # the first writes back what it learnt meanwhile.
    redis_server.start()
    until(lambda: one.problem() is None and other.problem() is None, "Redis to be used again")
    assert redis_server.client().keys(f"freerouter:*:cool:{BAD}")
    upstream.sim.set_models(healthy())
    assert other.ask("other-back") == {"ok": True, "text": "from b"}
    assert called(upstream, "other-back") == [GOOD]
    for worker in (one, other):
        assert len(worker.warnings()) == 1


def until(condition: Any, what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` (each poll is a round trip to a worker or the simulator)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        threading.Event().wait(0.02)


def test_processes_share_the_accounts_minute(upstream: Upstream, workers: Any) -> None:
    """OpenRouter's free requests a minute are the account's, not a process's: what one
    process sent narrows the next race in another, running side by side."""
    pace = {
        "FREEROUTER_REQUESTS_PER_MINUTE": "4",
        "FREEROUTER_RACE_WIDTH": "3",
        "FREEROUTER_EXPLORE": "0",
    }
    one, other = workers(["one", "other"], {"one": pace, "other": pace})
    # Slow enough that every contender's request reaches the simulator before one wins.
    upstream.sim.set_models(
        [
            fast("a/a:free", "from a", context_length=1000, delay=0.3),
            fast("b/b:free", "from b", context_length=2000, delay=0.6),
            fast("c/c:free", "from c", context_length=3000, delay=0.6),
        ]
    )
    assert one.ask("one-1")["ok"]
    assert len(called(upstream, "one-1")) == 3
    assert other.ask("other-1")["ok"]
    assert len(called(upstream, "other-1")) == 1  # 3 of 4 already used by the other process
