"""Section 1: what freerouter/auto costs over LiteLLM's own path to the same upstream.

One simulator process serves three free models on loopback. ``openrouter/<answer model>`` goes
straight to the answering model through litellm's OpenRouter provider; ``freerouter/auto``
races all three (``race_width=3``): the answering model, with the very same script, and two
slower ones that lose and are cancelled. Runs alternate A, B, A, B...; first-token time is
taken from the caller's side, throughput over a long answer of thousands of varied chunks.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import median, simulator_process, varied_chunks

ANSWER_MODEL = "bench/answer-8b:free"
SLOW_MODELS = ("bench/slow-24b:free", "bench/slower-70b:free")
KEY = "sk-or-bench-overhead"


def _catalogue(first_token_delay: float, chunks: int) -> list[dict[str, Any]]:
    long = varied_chunks(chunks, seed=6)
    return [
        {
            "id": ANSWER_MODEL,
            "context_length": 8192,
            "first_token_delay": first_token_delay,
            "chunks": long,
        },
        # Slower contenders: they lose every race and are cancelled.
        {
            "id": SLOW_MODELS[0],
            "context_length": 32768,
            "first_token_delay": first_token_delay + 1.5,
            "chunks": long[:40],
        },
        {
            "id": SLOW_MODELS[1],
            "context_length": 65536,
            "first_token_delay": first_token_delay + 2.5,
            "chunks": long[:40],
        },
    ]


def _paths(url: str) -> dict[str, dict[str, Any]]:
    return {
        "litellm": {"model": f"openrouter/{ANSWER_MODEL}", "api_base": url, "api_key": KEY},
        "freerouter": {
            "model": "freerouter/auto",
            "api_base": url,
            "api_key": KEY,
            "race_width": 3,
            "hedge_delay": 0,
            # Three contenders on every request: the loopback upstream has no minute limit to
            # pace to, and pacing would narrow the race after the first few requests.
            "requests_per_minute": 0,
        },
    }


def _record(
    started: float, first: float | None, last: float | None, count: int, winner: str | None
) -> dict[str, Any]:
    if first is None or last is None:
        return {"ok": False}
    span = last - first
    return {
        "ok": True,
        "ttft": first - started,
        "chunks": count,
        "rate": (count - 1) / span if span > 0 else None,
        "winner": winner,
    }


class _Tally:
    """What the caller saw of one streamed answer: first and last content chunk, count, winner."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.count = 0
        self.winner: str | None = None

    def see(self, chunk: Any) -> None:
        if chunk.choices and chunk.choices[0].delta.content:
            self.last = time.perf_counter()
            if self.first is None:
                self.first = self.last
            self.count += 1
        self.winner = getattr(chunk, "freerouter_model", None) or self.winner

    def record(self) -> dict[str, Any]:
        return _record(self.started, self.first, self.last, self.count, self.winner)


MESSAGES = [{"role": "user", "content": "Write a long answer."}]


async def _one_async(kwargs: dict[str, Any]) -> dict[str, Any]:
    import litellm

    tally = _Tally()
    stream = await litellm.acompletion(messages=MESSAGES, stream=True, **kwargs)
    async for chunk in stream:
        tally.see(chunk)
    return tally.record()


def _one_sync(kwargs: dict[str, Any]) -> dict[str, Any]:
    import litellm

    tally = _Tally()
    for chunk in litellm.completion(messages=MESSAGES, stream=True, **kwargs):
        tally.see(chunk)
    return tally.record()


# Each measured run starts after the process has been idle this long. A long answer leaves
# background work behind (litellm's logging of a 3000-chunk stream, in a thread); run at once,
# the next call competes with it for the GIL, which in the sync path cost whichever path came
# next 50-200 ms of first token (measured: freerouter 258 ms with 0.5 s of quiet before it,
# 300-470 ms straight after a litellm run). Both paths get the same quiet.
QUIET = 1.0


def _order(paths: dict[str, Any], i: int) -> list[str]:
    # Alternate which path goes first, so neither always follows the other.
    return list(paths) if i % 2 == 0 else list(reversed(paths))


def _interleaved(
    run_one: Callable[[dict[str, Any]], dict[str, Any]], url: str, rounds: int, warmup: int
) -> dict[str, list[dict[str, Any]]]:
    paths = _paths(url)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    for i in range(warmup + rounds):
        for name in _order(paths, i):
            time.sleep(QUIET)
            result = run_one(paths[name])
            if i >= warmup:
                out[name].append(result)
    return out


async def _interleaved_async(url: str, rounds: int, warmup: int) -> dict[str, list[dict[str, Any]]]:
    """As :func:`_interleaved`, on one event loop (litellm caches its clients per loop)."""
    paths = _paths(url)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    for i in range(warmup + rounds):
        for name in _order(paths, i):
            await asyncio.sleep(QUIET)
            result = await _one_async(paths[name])
            if i >= warmup:
                out[name].append(result)
    return out


def _summarise(runs: dict[str, list[dict[str, Any]]], expected_chunks: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, results in runs.items():
        good = [r for r in results if r["ok"] and r["chunks"] == expected_chunks]
        summary[name] = {
            "runs": len(results),
            "complete": len(good),
            "ttft_median": median([r["ttft"] for r in good]),
            "ttfts": [r["ttft"] for r in good],
            "rate_median": median([r["rate"] for r in good if r["rate"]]),
            "rates": [r["rate"] for r in good if r["rate"]],
            "winners": sorted({str(r.get("winner")) for r in good if r.get("winner")}),
        }
    a, b = summary["litellm"], summary["freerouter"]
    if a["ttft_median"] and b["ttft_median"]:
        summary["ttft_ratio"] = b["ttft_median"] / a["ttft_median"]
        summary["ttft_added_ms"] = (b["ttft_median"] - a["ttft_median"]) * 1000
    if a["rate_median"] and b["rate_median"]:
        summary["rate_ratio"] = b["rate_median"] / a["rate_median"]
    return summary


def run(
    *,
    rounds: int,
    sync_rounds: int,
    chunks: int,
    first_token_delay: float,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    import litellm_freerouter  # noqa: F401  (registers freerouter/auto)

    results: dict[str, Any] = {
        "first_token_delay": first_token_delay,
        "chunks": chunks,
        "rounds": rounds,
        "sync_rounds": sync_rounds,
    }
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        for label, delay, size, n_async, n_sync in (
            ("long", first_token_delay, chunks, rounds, sync_rounds),
            ("instant", 0.0, 20, rounds, 0),
        ):
            models = Path(tmp) / f"{label}.json"
            models.write_text(json.dumps(_catalogue(delay, size)))
            server = simulator_process(models)
            try:
                runs = asyncio.run(_interleaved_async(server.url, n_async, warmup=2))
                results[f"{label}_async"] = _summarise(runs, size)
                s = results[f"{label}_async"]
                progress(
                    f"  {label} acompletion: first token {s['litellm']['ttft_median'] * 1000:.1f}"
                    f" vs {s['freerouter']['ttft_median'] * 1000:.1f} ms, "
                    f"{s['litellm']['rate_median'] or 0:.0f} vs "
                    f"{s['freerouter']['rate_median'] or 0:.0f} chunks/s"
                )
                if n_sync:
                    runs = _interleaved(_one_sync, server.url, n_sync, warmup=1)
                    results[f"{label}_sync"] = _summarise(runs, size)
                    s = results[f"{label}_sync"]
                    progress(
                        f"  {label} completion (sync): first token "
                        f"{s['litellm']['ttft_median'] * 1000:.1f} vs "
                        f"{s['freerouter']['ttft_median'] * 1000:.1f} ms, "
                        f"{s['litellm']['rate_median'] or 0:.0f} vs "
                        f"{s['freerouter']['rate_median'] or 0:.0f} chunks/s"
                    )
            finally:
                server.stop()
    return results
