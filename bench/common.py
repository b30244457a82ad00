"""Helpers every benchmark section shares: environment, processes, statistics, the machine line."""

from __future__ import annotations

import logging
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PYTHON = sys.executable

# Short names of the policies and computed lines, for chart axes and table headers.
SHORT = {
    "router": "LiteLLM Router",
    "random": "random + retries",
    "seed": "seed (batches of 3)",
    "race": "freerouter race",
    "hedged": "freerouter hedged",
    "hedged_warm": "hedged, 2nd session",
    "oracle": "oracle",
    "oracle_run": "oracle via litellm",
    "best_known": "best-known model",
    "informed_race": "perfect knowledge, race 3",
    "informed_hedged": "perfect knowledge, hedged",
}

# Variables of the caller's shell that would change what the code under test does.
_NOISE = ("FREEROUTER_", "OPENROUTER_", "LITELLM_", "DATABASE_URL", "REDIS_")


# freerouter keeps what it learns in a SQLite file (its default): one fresh directory per
# benchmark run, shared by the processes the run starts, removed by run.py at the end.
STATE_DIR = os.environ.get("BENCH_FREEROUTER_STATE") or tempfile.mkdtemp(
    prefix="freerouter-bench-state-"
)


def _parent_death_signal() -> Any:
    """Linux's prctl(PR_SET_PDEATHSIG), looked up here (not in the forked child), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def die_with_parent() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM once the bench process is gone

    return die_with_parent


# For every process the bench starts: however the bench ends (Ctrl-C at a bad moment, kill,
# a crash), no simulator, proxy or worker outlives it.
DIE_WITH_PARENT = _parent_death_signal()


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without routing settings, offline, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_NOISE)}
    env.update(
        HF_HUB_OFFLINE="1",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        PYTHONUNBUFFERED="1",
        FREEROUTER_STATE_DIR=STATE_DIR,
        BENCH_FREEROUTER_STATE=STATE_DIR,
    )
    env.update(extra or {})
    return env


def setup_process_env() -> None:
    """Before litellm is imported: no cost-map or tokenizer downloads, no inherited tunables."""
    for name in list(os.environ):
        if name.startswith(_NOISE):
            del os.environ[name]
    os.environ.update(clean_env())


def quiet_litellm() -> None:
    import litellm

    litellm.suppress_debug_info = True
    litellm.set_verbose = False
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm_freerouter", "httpx"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def version_of(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, litellm {version_of('litellm')}, "
        f"aiohttp {version_of('aiohttp')}, litellm-freerouter {version_of('litellm-freerouter')}"
    )


# --- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no data."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 50)


def fmt(value: float | None, spec: str = ".2f", none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


# --- text ----------------------------------------------------------------------------------------

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "ve", "si", "po", "da", "fe", "gu", "zo", "wy")


def varied_chunks(count: int, seed: int) -> list[str]:
    """``count`` word-sized pieces, all different (litellm aborts a stream repeating a chunk)."""
    rng = random.Random(seed)
    pieces = []
    for i in range(count):
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))
        pieces.append(f" {word}{i}")
    return pieces


# --- processes -----------------------------------------------------------------------------------


class Server:
    """A child process that prints ``READY <url>`` once it serves; stopped by ``stop``."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        deadline: float = 60.0,
        log: Path | None = None,
    ) -> None:
        self.log = log or Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
        self._log_handle = self.log.open("wb")
        self.process = subprocess.Popen(
            list(args),
            stdout=subprocess.PIPE,
            stderr=self._log_handle,
            stdin=subprocess.DEVNULL,
            env=env or clean_env(),
            cwd=REPO,
            preexec_fn=DIE_WITH_PARENT,
        )
        self.url = self._wait_ready(deadline)

    def _wait_ready(self, deadline: float) -> str:
        assert self.process.stdout is not None
        end = time.monotonic() + deadline
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.process.stdout, selectors.EVENT_READ)
            while time.monotonic() < end:
                if not sel.select(timeout=0.5):
                    if self.process.poll() is not None:
                        break
                    continue
                line = self.process.stdout.readline().decode(errors="replace")
                if not line:
                    break
                if line.startswith("READY "):
                    return line.split()[1]
        self.stop()
        raise RuntimeError(f"{self.process.args} did not become ready; see {self.log}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log_handle.close()


def stop_process(process: subprocess.Popen[Any]) -> None:
    """Terminate, then kill if it lingers; bounded either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def simulator_process(
    models_json: Path, *, time_scale: float = 1.0, daily_quota: int | None = None
) -> Server:
    """The package's own fake OpenRouter, in a process of its own (a core of its own)."""
    args = [
        PYTHON,
        "-m",
        "litellm_freerouter.simulator",
        "--models",
        str(models_json),
        "--time-scale",
        str(time_scale),
    ]
    if daily_quota is not None:
        args += ["--daily-quota", str(daily_quota)]
    return Server(args, env=clean_env({"FREEROUTER_DISABLE_AUTOLOAD": "1"}))
