"""Section 3: many concurrent streams, through ``acompletion`` and through a real litellm proxy.

One simulator process is the upstream (the answering model plus two slower ones that lose every
race). For ``acompletion`` each path (litellm's own ``openrouter/<model>``, ``freerouter/auto``)
runs in a fresh worker process of its own (``python bench/scale.py worker ...``), so that its
peak memory and CPU time are its own. For the proxy, one ``litellm --config`` process serves
both paths as two model names and a plain aiohttp client in this process drives it.

At each concurrency level C, C workers send requests back to back until the level's count is
done. Per level: answers per second, chunks per second, first-token percentiles, the process's
CPU time per request (all its threads) and its peak RSS (sampled every 20 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    DIE_WITH_PARENT,
    PYTHON,
    REPO,
    clean_env,
    percentile,
    setup_process_env,
    simulator_process,
    stop_process,
    varied_chunks,
)

ANSWER_MODEL = "bench/answer-8b:free"
UPSTREAM_KEY = "sk-or-bench-scale"


def catalogue(chunks: int) -> list[dict[str, Any]]:
    text = varied_chunks(chunks, seed=7)
    return [
        {
            "id": ANSWER_MODEL,
            "context_length": 8192,
            "first_token_delay": 0.1,
            "chunk_delay": 0.005,
            "chunks": text,
        },
        {
            "id": "bench/slow-24b:free",
            "context_length": 32768,
            "first_token_delay": 5.0,
            "chunks": text[:10],
        },
        {
            "id": "bench/slower-70b:free",
            "context_length": 65536,
            "first_token_delay": 6.0,
            "chunks": text[:10],
        },
    ]


def requests_at(level: int, total_floor: int) -> int:
    return max(2 * level, total_floor)  # a level of 1 sends ``total_floor`` one after another


class Sampler:
    """Peak RSS and CPU time of a process (this one by default), sampled in a thread."""

    def __init__(self, pid: int | None = None, interval: float = 0.02) -> None:
        import psutil

        self.proc = psutil.Process(pid or os.getpid())
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:
                pass
        return int(total)

    def cpu(self) -> float:
        times = self.proc.cpu_times()
        total = times.user + times.system
        for child in self.proc.children(recursive=True):
            try:
                t = child.cpu_times()
                total += t.user + t.system
            except Exception:
                pass
        return float(total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, self.rss())
            except Exception:
                return

    def __enter__(self) -> Sampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def drive(
    level: int, total: int, one: Callable[[], Awaitable[dict[str, Any]]], sampler: Sampler
) -> dict[str, Any]:
    """``level`` workers, back to back, until ``total`` requests are done."""
    remaining = total
    results: list[dict[str, Any]] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                results.append(await asyncio.wait_for(one(), 120))
            except Exception as exc:
                results.append({"ok": False, "error": type(exc).__name__})

    rss_before = sampler.rss()
    sampler.peak = rss_before
    cpu0, t0 = sampler.cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(level)))
    wall, cpu = time.perf_counter() - t0, sampler.cpu() - cpu0
    good = [r for r in results if r.get("ok")]
    ttfts = [r["ttft"] for r in good]
    return {
        "level": level,
        "requests": len(results),
        "ok": len(good),
        "errors": sorted({r.get("error", "?") for r in results if not r.get("ok")}),
        "wall": wall,
        "answers_per_s": len(good) / wall,
        "chunks_per_s": sum(r["chunks"] for r in good) / wall,
        "ttft_p50": percentile(ttfts, 50),
        "ttft_p95": percentile(ttfts, 95),
        "cpu_ms_per_request": 1000 * cpu / max(1, len(results)),
        "rss_start_mb": rss_before / 2**20,
        "rss_peak_mb": sampler.peak / 2**20,
    }


# --- acompletion, in a worker process ------------------------------------------------------------


async def _worker_main(
    path: str, url: str, levels: list[int], floor: int, chunks: int
) -> list[dict[str, Any]]:
    import litellm

    import litellm_freerouter  # noqa: F401

    kwargs: dict[str, Any] = (
        {"model": f"openrouter/{ANSWER_MODEL}", "api_base": url, "api_key": UPSTREAM_KEY}
        if path == "litellm"
        else {
            "model": "freerouter/auto",
            "api_base": url,
            "api_key": UPSTREAM_KEY,
            "race_width": 3,
            "requests_per_minute": 0,  # three contenders every time: no minute limit here
        }
    )
    messages = [{"role": "user", "content": "Stream me an answer."}]

    async def one() -> dict[str, Any]:
        started = time.perf_counter()
        stream = await litellm.acompletion(messages=messages, stream=True, **kwargs)
        first = None
        count = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if first is None:
                    first = time.perf_counter()
                count += 1
        ok = count == chunks and first is not None
        return {
            "ok": ok,
            "ttft": (first or 0) - started,
            "chunks": count,
            "error": None if ok else f"{count} chunks",
        }

    out = []
    with Sampler() as sampler:
        for _ in range(3):  # warm-up: imports, catalogue, connection pool
            await one()
        for level in levels:
            out.append(await drive(level, requests_at(level, floor), one, sampler))
    return out


def worker_cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--path", choices=("litellm", "freerouter"), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--levels", required=True)
    parser.add_argument("--floor", type=int, default=20)
    parser.add_argument("--chunks", type=int, required=True)
    args = parser.parse_args(argv)
    setup_process_env()
    from common import quiet_litellm

    quiet_litellm()
    levels = [int(x) for x in args.levels.split(",")]
    result = asyncio.run(_worker_main(args.path, args.url, levels, args.floor, args.chunks))
    print("RESULT " + json.dumps(result), flush=True)


def _run_worker(
    path: str, url: str, levels: list[int], floor: int, chunks: int
) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [
            PYTHON,
            str(Path(__file__).resolve()),
            "worker",
            "--path",
            path,
            "--url",
            url,
            "--levels",
            ",".join(map(str, levels)),
            "--floor",
            str(floor),
            "--chunks",
            str(chunks),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=REPO,
        timeout=600,
        preexec_fn=DIE_WITH_PARENT,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return list(json.loads(line[len("RESULT ") :]))
    raise RuntimeError(f"scale worker {path} failed:\n{proc.stderr[-3000:]}")


# --- the proxy ----------------------------------------------------------------------------------


def _proxy_config(directory: Path, url: str, master_key: str) -> Path:
    import yaml

    config = {
        "model_list": [
            {
                "model_name": "freerouter/auto",
                "litellm_params": {
                    "model": "freerouter/auto",
                    "api_key": UPSTREAM_KEY,
                    "api_base": url,
                    "race_width": 3,
                    "requests_per_minute": 0,
                },
            },
            {
                "model_name": "direct",
                "litellm_params": {
                    "model": f"openrouter/{ANSWER_MODEL}",
                    "api_key": UPSTREAM_KEY,
                    "api_base": url,
                },
            },
        ],
        "litellm_settings": {
            "custom_provider_map": [
                {"provider": "freerouter", "custom_handler": "litellm_freerouter.handler"}
            ],
        },
        "general_settings": {"master_key": master_key},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Proxy:
    def __init__(self, config: Path) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = config.parent / "proxy.log"
        script = Path(PYTHON).parent / "litellm"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(script),
                    "--config",
                    str(config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                cwd=config.parent,
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=DIE_WITH_PARENT,
            )
        self._wait()

    def _wait(self) -> None:
        import urllib.request

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/liveliness", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("proxy did not become healthy in 120 s")

    def stop(self) -> None:
        stop_process(self.process)


async def _proxy_levels(
    proxy: Proxy, master_key: str, model: str, levels: list[int], floor: int, chunks: int
) -> list[dict[str, Any]]:
    import aiohttp

    headers = {"Authorization": f"Bearer {master_key}", "Content-Type": "application/json"}
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": "Stream me an answer."}],
        }
    )
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> dict[str, Any]:
            started = time.perf_counter()
            first = None
            count = 0
            async with session.post(
                f"{proxy.url}/v1/chat/completions", data=body, headers=headers
            ) as response:
                if response.status != 200:
                    return {"ok": False, "error": f"HTTP {response.status}"}
                async for line in response.content:
                    if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                        continue
                    event = json.loads(line[6:])
                    choices = event.get("choices") or []
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        if first is None:
                            first = time.perf_counter()
                        count += 1
            ok = count == chunks and first is not None
            return {
                "ok": ok,
                "ttft": (first or 0) - started,
                "chunks": count,
                "error": None if ok else f"{count} chunks",
            }

        out = []
        with Sampler(proxy.process.pid) as sampler:
            for _ in range(3):
                await one()
            for level in levels:
                out.append(await drive(level, requests_at(level, floor), one, sampler))
        return out


def run(
    *,
    levels: list[int],
    floor: int,
    chunks: int,
    proxy: bool = True,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    results: dict[str, Any] = {"levels": levels, "chunks": chunks, "floor": floor}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        models = Path(tmp) / "models.json"
        models.write_text(json.dumps(catalogue(chunks)))
        server = simulator_process(models)
        try:
            for path in ("litellm", "freerouter"):
                rows = _run_worker(path, server.url, levels, floor, chunks)
                results[f"acompletion_{path}"] = rows
                top = rows[-1]
                progress(
                    f"  acompletion {path}: {top['answers_per_s']:.1f} answers/s at "
                    f"{top['level']}, {top['cpu_ms_per_request']:.1f} ms CPU/request, "
                    f"peak {top['rss_peak_mb']:.0f} MB"
                )
            if proxy:
                # A proxy process per path, so that each one's memory is its own.
                for path, model in (("litellm", "direct"), ("freerouter", "freerouter/auto")):
                    master_key = "sk-bench-" + secrets.token_hex(8)
                    directory = Path(tmp) / f"proxy-{path}"
                    directory.mkdir()
                    config = _proxy_config(directory, server.url, master_key)
                    started = time.perf_counter()
                    px = Proxy(config)
                    results.setdefault("proxy_start_s", time.perf_counter() - started)
                    try:
                        rows = asyncio.run(
                            _proxy_levels(px, master_key, model, levels, floor, chunks)
                        )
                    finally:
                        px.stop()
                    results[f"proxy_{path}"] = rows
                    top = rows[-1]
                    progress(
                        f"  proxy {path}: {top['answers_per_s']:.1f} answers/s at "
                        f"{top['level']}, {top['cpu_ms_per_request']:.1f} ms CPU/request,"
                        f" peak {top['rss_peak_mb']:.0f} MB"
                    )
        finally:
            server.stop()
    return results


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker_cli(sys.argv[2:])
    else:
        setup_process_env()
        out = run(levels=[1, 10, 50], floor=8, chunks=100)
        Path(tempfile.gettempdir(), "bench-scale.json").write_text(json.dumps(out, indent=1))
