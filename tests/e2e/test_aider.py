"""aider, given nothing but ``pip install litellm-freerouter``, edits a file via freerouter/auto.

A wheel of this tree goes into a venv holding aider-chat (and the litellm it pins); aider then
runs non-interactively against a simulated OpenRouter in another process, with every connection
beyond this machine refused, so any download it attempts fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import requires
from pathlib import Path
from typing import Any

import pytest

from .conftest import OFFLINE, SimulatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

AIDER_VERSION = "0.86.2"
# Read at import: the suite's autouse fixture clears FREEROUTER_* before each test.
AIDER_VENV = os.environ.get("FREEROUTER_AIDER_VENV")
GUARD = Path(__file__).with_name("aider_guard.py")
KEY = "sk-test"
AIDER_TIMEOUT = 120.0

ORIGINAL = 'print("hello")\n'
EDITED = 'print("hello from the race")\n'
# aider's whole-file format: the file's name on a line of its own, then the new content fenced.
WHOLE_FILE_REPLY = (
    "Here is the updated file:\n\n",
    "hello.py\n",
    "```python\n",
    'print("hello ',
    "from the ",
    'race")\n',
    "```\n",
)
MODELS: list[dict[str, Any]] = [
    {
        "id": "sim/editor:free",
        "first_token_delay": 0.3,
        "chunk_delay": 0.01,
        "chunks": list(WHOLE_FILE_REPLY),
    },
    {"id": "sim/overloaded:free", "status": 503},
    {"id": "sim/sluggish:free", "first_token_delay": 60.0, "chunks": ["far ", "too ", "late"]},
]
# What aider prints when it does not know a model, or when anything went wrong.
TROUBLE = re.compile(r"(?i)warning|unknown|error|traceback|did you mean|autoload")


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def _run(command: list[str], timeout: float = 600.0, **kwargs: Any) -> str:
    env = {**os.environ, **OFFLINE}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, **kwargs
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _versions(python: Path) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m; "
        "print(json.dumps({n: m.version(n) for n in ('aider-chat', 'litellm')}))"
    )
    versions: dict[str, str] = json.loads(_run([str(python), "-c", code], timeout=60))
    return versions


def _is_aider_venv(venv: Path) -> bool:
    return _bin(venv, "python").exists() and _bin(venv, "aider").exists()


def _create_aider_venv(venv: Path) -> None:
    """A venv with aider-chat and our runtime requirements (the one step that downloads)."""
    if sys.version_info >= (3, 13):
        pytest.fail(
            f"aider-chat {AIDER_VERSION} needs Python < 3.13: create its venv with python3.12 "
            "and point FREEROUTER_AIDER_VENV at it"
        )
    _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    ours = [r for r in requires("litellm-freerouter") or [] if "extra ==" not in r]
    _run(
        [
            str(_bin(venv, "python")),
            "-m",
            "pip",
            "install",
            "--quiet",
            f"aider-chat=={AIDER_VERSION}",
            *ours,
        ]
    )


@dataclass(frozen=True)
class AiderInstall:
    venv: Path
    before: dict[str, str]
    after: dict[str, str]
    package_file: str

    @property
    def python(self) -> Path:
        return _bin(self.venv, "python")

    @property
    def aider(self) -> Path:
        return _bin(self.venv, "aider")


@pytest.fixture(scope="session")
def aider_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FREEROUTER_AIDER_VENV if it holds aider (created there if missing), else a new venv."""
    venv = Path(AIDER_VENV) if AIDER_VENV else tmp_path_factory.mktemp("aider-venv")
    if _is_aider_venv(venv):
        return venv
    if venv.exists() and any(venv.iterdir()):
        pytest.fail(f"FREEROUTER_AIDER_VENV={venv} is neither empty nor a venv with aider")
    _create_aider_venv(venv)
    return venv


@pytest.fixture(scope="session")
def aider(aider_venv: Path, freerouter_wheel: Path) -> AiderInstall:
    """aider's venv with this tree's wheel installed the way a user would install it."""
    python = str(_bin(aider_venv, "python"))
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    before = _versions(Path(python))
    _run([*pip, "uninstall", "--yes", "litellm-freerouter"])
    # No index: what aider brought must already satisfy our requirements, litellm's included.
    _run([*pip, "install", "--no-index", str(freerouter_wheel)])
    after = _versions(Path(python))
    package_file = _run(
        [python, "-c", "import litellm_freerouter as p; print(p.__file__)"],
        timeout=60,
        cwd=aider_venv,
    ).strip()
    return AiderInstall(aider_venv, before, after, package_file)


@pytest.fixture
def simulator(start_simulator: Any) -> SimulatorProcess:
    """A fake OpenRouter in its own process: one model edits, one is down, one is too slow."""
    sim: SimulatorProcess = start_simulator(MODELS, KEY)
    return sim


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def _git(project: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **GIT_IDENTITY},
    )
    assert done.returncode == 0, f"git {args}: {done.stderr}"
    return done.stdout


def run_aider(
    install: AiderInstall,
    sim: SimulatorProcess,
    tmp_path: Path,
    *extra: str,
    env_extra: dict[str, str] | None = None,
    git: bool = False,
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """aider run as REFERENCE.md shows, in a fresh HOME and project (a git repository with one
    commit if ``git``, where aider commits its edit); the output, file, net log."""
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    target = project / "hello.py"
    target.write_text(ORIGINAL, encoding="utf-8")
    if git:
        _git(project, "init", "-q")
        _git(project, "config", "user.name", GIT_IDENTITY["GIT_AUTHOR_NAME"])
        _git(project, "config", "user.email", GIT_IDENTITY["GIT_AUTHOR_EMAIL"])
        _git(project, "add", "hello.py")
        _git(project, "commit", "-q", "-m", "Start")
    netlog = tmp_path / "network.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIDER_", "OPENROUTER_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(OFFLINE)
    env.update(
        HOME=str(home),
        OPENROUTER_API_KEY=KEY,
        OPENROUTER_API_BASE=sim.url,
        FREEROUTER_STATE_DIR=str(tmp_path / "state"),
        TERM="dumb",
        **GIT_IDENTITY,
    )
    env.update(env_extra or {})
    command = [
        str(install.python),
        str(GUARD),
        str(netlog),
        str(install.aider),
        "hello.py",
        "--model",
        "freerouter/auto",
        "--edit-format",
        "whole",
        "--message",
        "Make hello.py greet the race.",
        "--yes-always",
        *(["--no-gitignore"] if git else ["--no-git"]),
        "--no-check-update",
        "--no-analytics",
        "--no-show-release-notes",
        "--no-pretty",
        "--no-fancy-input",
        "--map-tokens",
        "0",
        "--no-auto-lint",
        "--no-detect-urls",
        "--no-restore-chat-history",
        *extra,
    ]
    done = subprocess.run(
        command,
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=AIDER_TIMEOUT,
    )
    return done, target, netlog


def test_installing_keeps_aiders_litellm(aider: AiderInstall) -> None:
    """pip-installing the wheel into aider's venv changes neither litellm nor aider, and the
    package (with its start-up hook) is imported from that venv, not from this tree."""
    assert aider.after == aider.before
    assert Path(aider.package_file).resolve().is_relative_to(aider.venv.resolve())
    hooks = aider.venv.glob("lib*/python*/site-packages/litellm_freerouter_autoload.pth")
    assert len({hook.resolve() for hook in hooks}) == 1  # lib64 may be a link to lib


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"], ids=["streamed", "not-streamed"])
def test_aider_edits_a_file_through_freerouter(
    aider: AiderInstall, simulator: SimulatorProcess, tmp_path: Path, stream: str
) -> None:
    """With zero setup aider knows freerouter/auto (no warning), the race reaches the
    simulator, the winner's whole-file edit lands on disk, and nothing else is contacted."""
    asked_before = simulator.chat_requests()
    done, target, netlog = run_aider(aider, simulator, tmp_path, stream)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert target.read_text(encoding="utf-8") == EDITED, output
    # "infinite output": an answer cut short by its output limit is continued by prefill.
    assert "Main model: freerouter/auto with whole edit format, infinite output" in output
    assert "Weak model: freerouter/hedged" in output
    assert "Applied edit to hello.py" in output
    assert [line for line in output.splitlines() if TROUBLE.search(line)] == [], output
    assert not netlog.exists(), netlog.read_text(encoding="utf-8")
    # The winner and at least one of the others were asked: a race, not a single call.
    assert simulator.chat_requests() - asked_before >= 2


def test_aiders_commit_message_costs_one_request_not_a_race(
    aider: AiderInstall, simulator: SimulatorProcess, tmp_path: Path
) -> None:
    """aider writes a commit message with its weak model after every edit. The hook makes that
    freerouter/hedged: the model that just won answers alone, where freerouter/auto would
    start a second race (here: the winner and the slow model again)."""
    done, target, netlog = run_aider(aider, simulator, tmp_path, git=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Weak model: freerouter/hedged" in output
    assert target.read_text(encoding="utf-8") == EDITED, output
    assert [line for line in output.splitlines() if TROUBLE.search(line)] == [], output
    project = target.parent
    assert _git(project, "status", "--porcelain", "hello.py") == ""  # the edit is committed
    subjects = _git(project, "log", "--format=%s").splitlines()
    assert len(subjects) == 2 and subjects[1] == "Start", subjects
    assert subjects[0] == "Here is the updated file:", subjects  # the model's answer
    # The edit raced all three models; the commit message asked one.
    assert simulator.chat_requests() == len(MODELS) + 1, output
    assert not netlog.exists(), netlog.read_text(encoding="utf-8")


def test_autoload_switched_off_leaves_aider_without_freerouter(
    aider: AiderInstall, simulator: SimulatorProcess, tmp_path: Path
) -> None:
    """FREEROUTER_DISABLE_AUTOLOAD=1 really turns the hook off in aider: it warns about an
    unknown model, reaches for a metadata download, asks no one and leaves the file alone."""
    done, target, netlog = run_aider(
        aider, simulator, tmp_path, env_extra={"FREEROUTER_DISABLE_AUTOLOAD": "1"}
    )
    output = done.stdout + done.stderr
    assert "Unknown context window" in output
    assert target.read_text(encoding="utf-8") == ORIGINAL
    assert simulator.chat_requests() == 0
    # What the hook spares aider (the guard refused it).
    assert netlog.exists(), output
    assert "raw.githubusercontent.com" in netlog.read_text(encoding="utf-8")
