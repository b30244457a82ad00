"""A real ``litellm --config`` proxy process for the end-to-end tests, and its config files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "config.example.yaml"
SHIM = REPO / "freerouter_shim.py"

# A proxy starts in about five seconds here; a loaded CI machine gets plenty more, yet less
# than pytest's per-test timeout (120 s), so a failed start reports the proxy's output.
START_DEADLINE = 90.0
STOP_DEADLINE = 15.0

# Variables of the developer's shell that would change what the proxy under test does.
_INHERITED_NOISE = ("FREEROUTER_", "OPENROUTER_", "LITELLM_", "DATABASE_URL", "REDIS_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proxy_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The test process's environment without its routing settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_NOISE)}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def litellm_script(venv_bin: Path | None = None) -> Path:
    """The ``litellm`` console script of a venv; this interpreter's by default."""
    script = (venv_bin or Path(sys.executable).parent) / "litellm"
    if not script.exists():
        raise FileNotFoundError(f"no litellm console script at {script}")
    return script


def example_config() -> dict[str, Any]:
    loaded = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def write_shim_config(directory: Path, litellm_params: Mapping[str, Any]) -> Path:
    """The example config switched to the 1.81.x shim, with the shim beside it."""
    config = example_config()
    for entry in config["litellm_settings"]["custom_provider_map"]:
        if entry["provider"] == "freerouter":
            entry["custom_handler"] = "freerouter_shim.handler"
    for model in config["model_list"]:
        model["litellm_params"].update(litellm_params)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    shutil.copy(SHIM, directory / SHIM.name)
    return path


def copy_example_config(directory: Path) -> Path:
    path = directory / "config.yaml"
    shutil.copy(EXAMPLE_CONFIG, path)
    return path


@dataclass
class Proxy:
    """One ``litellm --config`` process on a free loopback port, its output in ``log_path``."""

    config: Path
    env: dict[str, str]
    script: Path = field(default_factory=litellm_script)
    port: int = field(default_factory=free_port)
    secrets: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.config.parent / "proxy.log"

    def log(self) -> str:
        """What the proxy printed so far, with every secret masked."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        for secret in self.secrets:
            text = text.replace(secret, "<secret>")
        return text

    def start(self) -> Proxy:
        command = [
            str(self.script), "--config", str(self.config),
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.config.parent,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_DEADLINE
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get(f"{self.url}/health/liveliness").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                try:
                    # Waiting on the process doubles as the polling interval.
                    code = self.process.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                raise RuntimeError(f"the proxy exited with {code}:\n{self.log()[-4000:]}")
        raise RuntimeError(
            f"the proxy was not healthy in {START_DEADLINE} s:\n{self.log()[-4000:]}"
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_DEADLINE)
