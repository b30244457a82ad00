"""Load through a real proxy: 100 concurrent clients, faulty upstream models, clients that hang
up. Nothing may hang, every request ends with an answer or a clear error, a client that hangs up
has its upstream stream closed, and afterwards no upstream stream is open and the proxy's
sockets and memory have not grown."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from litellm_freerouter.simulator import ModelScript, Simulator, SimulatorThread

from .proxy_harness import Proxy, copy_example_config, proxy_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MASTER_KEY = "sk-load-master-" + secrets.token_hex(8)
UPSTREAM_KEY = "sk-or-load-" + secrets.token_hex(8)
WORDS = tuple(f" w{i}" for i in range(40))
WAVES = 4
# The proxy's FREEROUTER_IDLE_TIMEOUT: the latest a stream the proxy dropped without closing is
# closed by freerouter itself.
IDLE_TIMEOUT = 15.0
# A hang-up that reaches freerouter closes the upstream within this many seconds.
PROMPT = 5.0
MODELS = [
    ModelScript("load/good-a:free", first_token_delay=0.05, chunks=WORDS, chunk_delay=0.005),
    ModelScript("load/good-b:free", first_token_delay=0.08, chunks=WORDS, chunk_delay=0.005),
    ModelScript("load/down:free", status=503),
    ModelScript("load/err-chunk:free", chunks=WORDS, error_chunk_after=0),
    ModelScript("load/drops:free", first_token_delay=0.15, chunks=WORDS, drop_after_chunks=3),
]


def stall_when_hung_up(script: ModelScript, body: dict[str, Any]) -> ModelScript:
    """A good model answering a client that will hang up stalls after three words, until its
    connection is closed: only a close ends it, so the close time says who closed it."""
    if "hang up" in str(body.get("messages")) and script.id.startswith("load/good"):
        return dataclasses.replace(script, stall_after_chunks=3)
    return script


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Simulator, SimulatorThread]]:
    sim = Simulator(MODELS, api_key=UPSTREAM_KEY)
    sim.per_request = stall_when_hung_up
    with SimulatorThread(sim) as thread:
        yield sim, thread


@pytest.fixture(scope="module")
def proxy(
    upstream: tuple[Simulator, SimulatorThread], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """The shipped config, with cooldowns off so that the faulty models fail in every race."""
    _, thread = upstream
    directory = tmp_path_factory.mktemp("load-proxy")
    path = copy_example_config(directory)
    config = yaml.safe_load(path.read_text())
    params = config["model_list"][0]["litellm_params"]
    params.update(
        cooldown_rate_limit=0,
        cooldown_rejected=0,
        cooldown_slow=0,
        explore=0.5,
        idle_timeout=IDLE_TIMEOUT,
        first_token_timeout=5,
    )
    path.write_text(yaml.safe_dump(config))
    env = proxy_env(
        {
            "OPENROUTER_API_KEY": UPSTREAM_KEY,
            "OPENROUTER_API_BASE": thread.url,
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "FREEROUTER_STATE_DIR": str(directory / "state"),
        }
    )
    started = Proxy(path, env, secrets=(MASTER_KEY, UPSTREAM_KEY)).start()
    yield started
    started.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def upstream_sockets(pid: int, port: int) -> Counter[str]:
    """The process's TCP connections to the upstream's port by state (from /proc's socket
    tables): "01" established, "08" close-wait (the upstream closed it, the proxy never did)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    states: Counter[str] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == port:
                states[fields[3]] += 1
    return states


async def one_client(
    client: httpx.AsyncClient,
    proxy: Proxy,
    request: str,
    hang_up: bool,
    hung_up_at: dict[str, float],
    said: list[str],
) -> str:
    """One streamed request; a client that hangs up does so after the first chunk, noting
    when in ``hung_up_at``. Returns the outcome; an error event's message goes in ``said``."""
    body = {
        "model": "freerouter/auto",
        "stream": True,
        "messages": [{"role": "user", "content": request}],
    }
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    async with client.stream(
        "POST", f"{proxy.url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        if response.status_code != 200:
            await response.aread()
            return f"http {response.status_code}"
        text, error = "", False
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if '"error"' in line:
                error = True
                message = json.loads(line[len("data: ") :]).get("error", {}).get("message")
                said.append(str(message or ""))
                break
            if hang_up and text:
                hung_up_at[request] = time.monotonic()  # the simulator's clock, too
                return "hung up"  # leaving the block closes the connection
            text += line
        return "stream error" if error else ("answered" if text else "empty")


async def wave(
    proxy: Proxy, n: int, seed: int, hung_up_at: dict[str, float], said: list[str]
) -> Counter[str]:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    clients = []
    for i in range(n):
        hang_up = rng.random() < 0.3
        request = f"wave {seed} request {i}{' hang up' if hang_up else ''}"
        clients.append((request, hang_up))
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(one_client(client, proxy, *c, hung_up_at, said) for c in clients)),
            timeout=240,
        )
    return Counter(outcomes)


async def test_load_with_faults_and_hangups_leaks_nothing(
    proxy: Proxy, upstream: tuple[Simulator, SimulatorThread]
) -> None:
    """Waves of 100 concurrent clients: all end clearly; each client that hung up has its
    stalled upstream stream closed, at once when the proxy passes the hang-up on and within the
    idle timeout when it does not; streams, sockets and memory stay flat."""
    sim, thread = upstream
    port = int(thread.url.split(":")[2].split("/")[0])
    assert proxy.process is not None
    pid = proxy.process.pid
    hung_up_at: dict[str, float] = {}
    said: list[str] = []
    results = []
    for seed in range(WAVES):
        outcomes = await wave(proxy, 100, seed, hung_up_at, said)
        # Every stream ends: at the latest, freerouter's idle timeout closes one the proxy
        # dropped without closing.
        await asyncio.to_thread(thread.call, lambda: sim.wait_idle(IDLE_TIMEOUT + 15))
        results.append((outcomes, rss_kib(pid), open_fds(pid), upstream_sockets(pid, port)))
    for outcomes, _, _, sockets in results:
        assert sum(outcomes.values()) == 100
        assert set(outcomes) <= {"answered", "hung up", "stream error"}, outcomes
        assert outcomes["answered"] >= 30, outcomes
        # Two good models answer every race (the faulty ones fail before their first token or
        # are carried on): an error reaching a client is rare, and always says what happened.
        assert outcomes["stream error"] <= 5, outcomes
        assert outcomes["hung up"] >= 10, outcomes
        # Idle keep-alive connections stay pooled (15 s) for reuse: never more than the
        # contenders that could have been in flight at once (100 clients x race width 3).
        assert sockets.total() <= 300, sockets
        assert sockets["08"] == 0, sockets  # none the upstream closed and the proxy kept
    assert sim.open_streams == 0
    print(f"\noutcomes: {[dict(r[0]) for r in results]}; errors said: {Counter(said)}")
    assert all(len(message) > 20 for message in said), said
    # The streams of clients that hung up, which only a close could end: how long after the
    # hang-up each was closed (a race's losers were closed before it: negative).
    stalled = [
        r
        for r in sim.requests
        if r.model.startswith("load/good") and "hang up" in str(r.body.get("messages"))
    ]
    assert {r.outcome for r in stalled} == {"client_closed"}, Counter(r.outcome for r in stalled)
    delays = sorted(
        r.ended - hung_up_at[request]
        for r in stalled
        if r.ended is not None and (request := r.body["messages"][0]["content"]) in hung_up_at
    )
    late = [d for d in delays if d > PROMPT]
    print(
        f"\n{len(hung_up_at)} hang-ups, {len(delays)} stalled streams of theirs: closed a median"
        f" {delays[len(delays) // 2]:.2f} s and at most {delays[-1]:.2f} s after the hang-up;"
        f" {len(late)} later than {PROMPT:g} s"
    )
    assert len(delays) >= WAVES * 10, len(delays)
    assert delays[-1] <= IDLE_TIMEOUT + 2, delays[-5:]
    # Nearly all promptly: the proxy passes a hang-up on as a cancellation, which closes the
    # upstream at once.
    assert len(late) <= len(delays) // 50, late
    (_, rss1, fds1, sockets1), *_, (_, rss_n, fds_n, sockets_n) = results
    assert rss_n < rss1 * 1.25, (rss1, rss_n)
    other1, other_n = fds1 - sockets1.total(), fds_n - sockets_n.total()
    assert other_n <= other1 + 10, (fds1, sockets1, fds_n, sockets_n)
    assert UPSTREAM_KEY not in proxy.log() and MASTER_KEY not in proxy.log()
