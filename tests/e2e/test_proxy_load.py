"""Load through a real proxy: 100 concurrent clients, faulty upstream models, clients that hang
up. Nothing may hang, every request ends with an answer or a clear error, and afterwards no
upstream stream is open and the proxy's sockets and memory have not grown."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from litellm_freerouter.simulator import ModelScript, Simulator, SimulatorThread

from .proxy_harness import Proxy, copy_example_config, proxy_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MASTER_KEY = "sk-load-master-" + secrets.token_hex(8)
UPSTREAM_KEY = "sk-or-load-" + secrets.token_hex(8)
WORDS = tuple(f" w{i}" for i in range(40))
MODELS = [
    ModelScript("load/good-a:free", first_token_delay=0.05, chunks=WORDS, chunk_delay=0.005),
    ModelScript("load/good-b:free", first_token_delay=0.08, chunks=WORDS, chunk_delay=0.005),
    ModelScript("load/down:free", status=503),
    ModelScript("load/err-chunk:free", chunks=WORDS, error_chunk_after=0),
    ModelScript("load/drops:free", first_token_delay=0.15, chunks=WORDS, drop_after_chunks=3),
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Simulator, SimulatorThread]]:
    sim = Simulator(MODELS, api_key=UPSTREAM_KEY)
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
        idle_timeout=5,
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


def upstream_sockets(pid: int, port: int) -> int:
    """The process's TCP connections to the upstream's port (from /proc's socket tables)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


async def one_client(client: httpx.AsyncClient, proxy: Proxy, i: int, rng: random.Random) -> str:
    """One streamed request; some clients hang up after the first chunk. Returns the outcome."""
    hang_up = rng.random() < 0.3
    body = {
        "model": "freerouter/auto",
        "stream": True,
        "messages": [{"role": "user", "content": f"request {i}"}],
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
                break
            if hang_up and text:
                return "hung up"
            text += line
        return "stream error" if error else ("answered" if text else "empty")


async def wave(proxy: Proxy, n: int, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(one_client(client, proxy, i, rng) for i in range(n))), timeout=240
        )
    return Counter(outcomes)


async def test_load_with_faults_and_hangups_leaks_nothing(
    proxy: Proxy, upstream: tuple[Simulator, SimulatorThread]
) -> None:
    """Three waves of 100 concurrent clients: all end clearly; streams, sockets, memory flat."""
    sim, thread = upstream
    port = int(thread.url.split(":")[2].split("/")[0])
    assert proxy.process is not None
    pid = proxy.process.pid
    results = []
    for seed in range(3):
        outcomes = await wave(proxy, 100, seed)
        await asyncio.to_thread(thread.call, lambda: sim.wait_idle(30))
        results.append((outcomes, rss_kib(pid), open_fds(pid), upstream_sockets(pid, port)))
    for outcomes, _, _, pooled in results:
        assert sum(outcomes.values()) == 100
        assert set(outcomes) <= {"answered", "hung up", "stream error"}, outcomes
        assert outcomes["answered"] >= 30, outcomes
        assert outcomes["hung up"] >= 10, outcomes
        # Idle keep-alive connections stay pooled (15 s) for reuse: never more than the
        # contenders that could have been in flight at once (100 clients x race width 3).
        assert pooled <= 300, pooled
    assert sim.open_streams == 0
    assert sim.closed_by_client > 0  # hang-ups and lost races really closed upstream streams
    (_, rss1, fds1, pool1), _, (_, rss3, fds3, pool3) = results
    assert rss3 < rss1 * 1.25, (rss1, rss3)
    assert fds3 - pool3 <= fds1 - pool1 + 10, (fds1, pool1, fds3, pool3)
    assert UPSTREAM_KEY not in proxy.log() and MASTER_KEY not in proxy.log()
