"""What every end-to-end test needs: a wheel of this tree and a simulator in its own process."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

# Set in every subprocess: no cost-map download, no tokenizer download.
OFFLINE = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, offline, with ``extra`` on top."""
    env = dict(os.environ)
    env.update(OFFLINE)
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def freerouter_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from this tree, as a user would get it from PyPI (no network needed)."""
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: an isolated build would download hatchling.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(REPO),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("litellm_freerouter-*.whl")
    return wheel


@dataclass
class SimulatorProcess:
    """``python -m litellm_freerouter.simulator`` serving scripted models until the test ends."""

    url: str
    api_key: str
    process: subprocess.Popen[str]

    def get(self, path: str) -> Any:
        """GET ``<api_base><path>`` with the key, as JSON."""
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.api_key}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def chat_requests(self) -> int:
        """How many chat requests reached the simulator (its daily-quota counter)."""
        counter = self.get("/key")["data"]["free_model_daily_requests"]
        return int(counter["used"])


def _first_line(stream: Any, timeout: float) -> str:
    """The first line of ``stream``, or '' if none arrives within ``timeout`` seconds."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return ""


@pytest.fixture
def start_simulator(
    tmp_path: Path,
) -> Iterator[Callable[[Sequence[Mapping[str, Any]], str], SimulatorProcess]]:
    """Start simulators from lists of ModelScript fields; each is stopped after the test.

    Every chat request is counted against a large daily quota, so ``chat_requests()`` can tell
    from outside how many requests arrived.
    """
    started: list[subprocess.Popen[str]] = []

    def start(models: Sequence[Mapping[str, Any]], api_key: str) -> SimulatorProcess:
        scripts = tmp_path / f"models-{len(started)}.json"
        scripts.write_text(json.dumps(list(models)), encoding="utf-8")
        log = tmp_path / f"simulator-{len(started)}.log"
        with log.open("w", encoding="utf-8") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "litellm_freerouter.simulator",
                    "--models",
                    str(scripts),
                    "--api-key",
                    api_key,
                    "--daily-quota",
                    "100000",
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=subprocess_env(),
                cwd=tmp_path,
            )
        started.append(process)
        line = _first_line(process.stdout, timeout=60)
        assert line.startswith("READY "), f"simulator did not start: {line!r}\n{log.read_text()}"
        return SimulatorProcess(line.split()[1], api_key, process)

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
