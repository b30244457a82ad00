"""The ``freerouter`` command, in-process (CliRunner) and as a real process, on the simulator."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from litellm_freerouter import __version__, engine
from litellm_freerouter import cli as cli_module
from litellm_freerouter._support import describe, settle
from litellm_freerouter._ui import REDACTED, Output, wants_color
from litellm_freerouter.cli import cli
from litellm_freerouter.config import TUNABLES
from litellm_freerouter.errors import PRIVACY_URL, MissingKeyError
from litellm_freerouter.simulator import ModelScript, demo_models

from .conftest import KEY, Upstream, cool_once_listed, env_router, fast

ANSI = "\x1b["
WINNER = "quick/winner:free"
DEMO_FAST = "meta-llama/llama-3.3-8b-instruct:free"
PRIVACY_MESSAGE = "No endpoints found matching your data policy (Free model publication)"


@pytest.fixture
def api(upstream: Upstream) -> Iterator[Upstream]:
    """The simulated OpenRouter; the routers' background reads settle before it stops."""
    yield upstream
    routers = engine.get_engine().state.get("routers", {})
    for router in list(routers.values()):
        engine.call_sync(lambda router=router: settle(router), timeout=20)


def invoke(args: Sequence[str], env: dict[str, str | None] | None = None) -> Result:
    """Run the command in-process; every run is checked for leaks and tracebacks."""
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert KEY not in result.output
    assert "Traceback" not in result.output
    return result


def run(args: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m litellm_freerouter`` as a real process, stdout and stderr piped."""
    done = subprocess.run(
        [sys.executable, "-m", "litellm_freerouter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    for stream in (done.stdout, done.stderr):
        assert KEY not in stream
        assert "Traceback" not in stream
    return done


def run_in_terminal(args: Sequence[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the command with a pseudo-terminal as stdout and stderr; returns (status, output)."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "litellm_freerouter", *args],
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
        env={**os.environ, "COLUMNS": "200", "TERM": "xterm-256color", **env},
    )
    os.close(child)
    output = bytearray()
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child has exited and the terminal is gone
            break
        if not data:
            break
        output += data
    os.close(main)
    return proc.wait(timeout=60), output.decode("utf-8", errors="replace")


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port_base() -> str:
    """An api_base on a loopback port nothing listens on."""
    return f"http://127.0.0.1:{closed_port()}/api/v1"


def mixed_models() -> list[ModelScript]:
    return [
        fast(WINNER, "Hello from the winner", delay=0.05),
        ModelScript(id="down/busy:free", status=503, error_message="No instances available"),
        ModelScript(
            id="see/vision:free",
            input_modalities=("text", "image"),
            supported_parameters=("max_tokens",),
            first_token_delay=1.0,
            endpoint_latency_ms=900.0,
        ),
        ModelScript(id="paid/model", free=False),
    ]


# --- models -----------------------------------------------------------------------------------


def test_models_table_lists_free_models_and_quota(api: Upstream) -> None:
    """`models` shows each free model's window, features and state, and today's quota."""
    api.sim.set_models(mixed_models())
    api.sim.daily_quota = 50
    result = invoke(["models"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert WINNER in out and "see/vision:free" in out and "down/busy:free" in out
    assert "paid/model" not in out
    assert "32,768" in out and "never tried" in out
    assert "Free requests left today: 50 of 50" in out
    vision_row = next(line for line in out.splitlines() if "see/vision:free" in line)
    assert vision_row.split()[2:4] == ["·", "✓"]  # no tools, vision
    assert vision_row.endswith("~900 ms")


def test_models_json_is_a_list_of_objects(api: Upstream) -> None:
    """`models --json` prints a JSON list scripts can read, and nothing else on stdout."""
    api.sim.set_models(mixed_models())
    result = invoke(["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == {WINNER, "down/busy:free", "see/vision:free"}
    vision = by_id["see/vision:free"]
    assert vision["vision"] is True and vision["tools"] is False
    assert vision["context_length"] == 32768
    assert vision["state"] == "never_tried" and vision["ttft_p50_ms"] is None
    assert vision["openrouter_ttft_ms"] == 900 and vision["provider"] == "SimProvider"
    assert rows[0]["id"] == "see/vision:free"  # OpenRouter's latency figure ranks it first


def test_models_works_without_a_key(api: Upstream) -> None:
    """The model list is public: `models` needs no key, and skips the quota quietly."""
    api.sim.set_models(mixed_models())
    api.sim.daily_quota = 50
    result = invoke(["models"], env={"OPENROUTER_API_KEY": None})
    assert result.exit_code == 0, result.output
    assert WINNER in result.stdout
    assert "Free requests" not in result.output
    assert result.stderr == ""
    # State is kept per key: without one, say whose state this is.
    assert "No API key: the states and speeds are those learnt without one" in result.stdout
    assert "No API key" not in invoke(["models"]).stdout


def test_models_shows_cooldowns_and_measured_speed_after_a_race(api: Upstream) -> None:
    """After a race, the winner is ready with a measured p50 and the failed model is cooling."""
    api.sim.set_models(mixed_models())
    assert invoke(["chat", "hi"]).exit_code == 0
    rows = {row["id"]: row for row in json.loads(invoke(["models", "--json"]).stdout)}
    assert rows[WINNER]["state"] == "ready"
    assert rows[WINNER]["ttft_p50_ms"] is not None and rows[WINNER]["wins"] == 1
    busy = rows["down/busy:free"]
    assert busy["state"] == "cooling" and busy["cool_reason"] == "server"
    assert busy["cooling_seconds"] > 0
    table = invoke(["models"]).stdout
    busy_row = next(line for line in table.splitlines() if "down/busy:free" in line)
    assert "cooling" in busy_row and "server error" in busy_row


def test_models_against_nothing_is_one_clear_line() -> None:
    """A real process pointed at a closed port says the endpoint is unreachable, exit 1."""
    done = run(["models"], env={"OPENROUTER_API_BASE": closed_port_base()})
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("freerouter: error:") and "unreachable" in lines[0]


def test_no_free_models_is_an_empty_list_and_a_doctor_failure(api: Upstream) -> None:
    """A catalogue with no free model: `models` says so (JSON: []), `doctor` fails on it."""
    api.sim.set_models([ModelScript(id="paid/only", free=False)])
    assert json.loads(invoke(["models", "--json"]).stdout) == []
    assert invoke(["models"]).stdout == "OpenRouter lists no free models right now.\n"
    result = invoke(["doctor"])
    assert result.exit_code == 1
    assert "✗ free models: OpenRouter lists none right now" in result.stdout
    assert api.sim.requests == []


# --- doctor -----------------------------------------------------------------------------------


def test_doctor_without_a_key_names_the_variable(api: Upstream) -> None:
    """No key: doctor fails with exit 1 and says to set OPENROUTER_API_KEY."""
    api.sim.set_models(mixed_models())
    result = invoke(["doctor"], env={"OPENROUTER_API_KEY": None})
    assert result.exit_code == 1
    assert "✗ API key: missing" in result.stdout
    assert "OPENROUTER_API_KEY" in result.stdout
    assert "✓ endpoint" in result.stdout  # the checks that need no key still run
    assert api.sim.requests == []


def test_doctor_reports_a_rejected_key(api: Upstream) -> None:
    """A key the endpoint answers 401 to is reported as rejected, and no probe is sent."""
    api.sim.set_models(mixed_models())
    result = invoke(["doctor"], env={"OPENROUTER_API_KEY": "sk-or-wrong-key"})
    assert result.exit_code == 1
    assert "✗ API key: rejected by OpenRouter (401)" in result.stdout
    assert "https://openrouter.ai/keys" in result.stdout
    assert api.sim.requests == []


def test_doctor_fails_a_key_no_request_could_send(api: Upstream) -> None:
    """A key with a newline inside (two lines pasted) is set but unusable: doctor fails it
    rather than saying all is good, and names where it came from; nothing is sent."""
    api.sim.set_models(mixed_models())
    result = invoke(["doctor"], env={"OPENROUTER_API_KEY": f"{KEY}\n{KEY}"})
    assert result.exit_code == 1
    assert "✗ API key: set (from OPENROUTER_API_KEY), but it has a space" in result.stdout
    assert "All good" not in result.stdout
    assert api.sim.requests == []


def test_doctor_names_the_option_a_rejected_key_came_from(api: Upstream) -> None:
    api.sim.set_models(mixed_models())
    result = invoke(["--api-key", "sk-or-wrong-key", "doctor"])
    assert result.exit_code == 1
    assert "check --api-key for typos" in result.stdout


def test_chat_names_the_option_a_rejected_key_came_from(api: Upstream) -> None:
    api.sim.set_models(mixed_models())
    result = invoke(["--api-key", "sk-or-wrong-key", "chat", "hi"])
    assert result.exit_code == 1
    assert "rejected the API key (401). Check --api-key" in result.stderr, result.stderr


def test_doctor_all_good_shows_the_quota_and_probes_once(api: Upstream) -> None:
    """A healthy setup passes every check; the probe spends exactly one request of the quota."""
    api.sim.set_models([fast(WINNER, "OK"), fast("also/fine:free", "OK")])
    api.sim.daily_quota = 50
    result = invoke(["doctor"], env={"FREEROUTER_HEDGE_DELAY": "auto"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "✓ daily free quota: 50 of 50 requests left today" in out
    assert "✓ shared state: sqlite at " in out
    assert "✓ probe: answered by " in out
    assert "✗" not in out
    assert api.sim.quota_used == 1
    assert api.sim.requests[0].body["max_tokens"] == 1


@pytest.mark.parametrize(
    ("limit", "env", "advised"),
    [
        (50, {}, True),
        (50, {"FREEROUTER_HEDGE_DELAY": "auto"}, False),
        (50, {"FREEROUTER_RACE_WIDTH": "1"}, False),
        (1000, {}, False),
    ],
    ids=["50-racing-3", "50-hedged", "50-one-at-a-time", "1000-racing-3"],
)
def test_doctor_advises_hedging_on_a_50_a_day_account(
    api: Upstream, limit: int, env: dict[str, str | None], advised: bool
) -> None:
    """Racing three at once spends a 50-a-day quota three times as fast: doctor says what to
    set instead, as a warning that is not a problem (exit 0)."""
    api.sim.set_models([fast(WINNER, "OK")])
    api.sim.daily_quota = limit
    result = invoke(["doctor", "--no-probe"], env=env)
    assert result.exit_code == 0, result.output
    quota = f"daily free quota: {limit} of {limit} requests left today"
    advice = "freerouter/auto racing 3 at once spends about 3 of them per prompt; hedged"
    assert (f"! {quota}" in result.stdout) is advised
    assert (f"✓ {quota}" in result.stdout) is not advised
    assert (advice in result.stdout) is advised
    if advised:
        assert "freerouter/hedged, or FREEROUTER_HEDGE_DELAY=auto" in result.stdout


def test_doctor_without_probe_sends_no_request(api: Upstream) -> None:
    """--no-probe spends nothing and says what it could not check."""
    api.sim.set_models(mixed_models())
    result = invoke(["doctor", "--no-probe"])
    assert result.exit_code == 0, result.output
    assert "! probe: skipped" in result.stdout
    assert "ready to use, with 2 warnings above" in result.stdout  # probe, quota unknown
    assert "All good" not in result.stdout
    assert api.sim.requests == []


def test_doctor_reports_a_used_up_quota(api: Upstream) -> None:
    """A used-up daily quota fails with its reset time, and the probe is not attempted."""
    api.sim.set_models(mixed_models())
    api.sim.daily_quota = 50
    api.sim.quota_used = 50
    result = invoke(["doctor"])
    assert result.exit_code == 1
    assert "✗ daily free quota: used up (0 of 50 left)" in result.stdout
    assert "resets at" in result.stdout
    assert api.sim.requests == []


def test_doctor_finds_the_privacy_setting(api: Upstream) -> None:
    """The data-policy 404 of the probe is reported as the privacy setting, with its URL."""
    api.sim.set_models(
        [ModelScript(id="any/model:free", status=404, error_message=PRIVACY_MESSAGE)]
    )
    result = invoke(["doctor"])
    assert result.exit_code == 1
    assert "✗ privacy settings: OpenRouter blocks free models" in result.stdout
    assert PRIVACY_URL in result.stdout
    assert len(api.sim.requests) == 1


def test_doctor_against_nothing_says_unreachable() -> None:
    """A closed port: the endpoint check fails as unreachable, exit 1, no traceback."""
    result = invoke(["--api-base", closed_port_base(), "--api-key", KEY, "doctor"])
    assert result.exit_code == 1
    assert "✗ endpoint: cannot reach" in result.stdout and "unreachable" in result.stdout


# --- chat -------------------------------------------------------------------------------------


def test_chat_streams_the_answer_to_stdout_and_the_race_to_stderr(api: Upstream) -> None:
    """stdout carries the answer alone; stderr shows starts, drops with reasons, the winner."""
    api.sim.set_models(mixed_models())
    result = invoke(["chat", "Say hello"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello from the winner\n"
    err = result.stderr
    assert "start  down/busy:free" in err
    assert "drop   down/busy:free  server error: No instances available" in err
    assert f"won    {WINNER}  first token after" in err
    assert f"✓ answered by {WINNER}" in err.splitlines()[-1]
    assert "free models can answer; starting 3 at once" in err


def test_chat_hedged_says_the_models_start_one_at_a_time(api: Upstream) -> None:
    """With --hedge-delay the view does not claim the race starts them all at once."""
    api.sim.set_models([fast(WINNER, "hedged"), fast("b/two:free", "two", delay=5)])
    result = invoke(["chat", "hi", "--hedge-delay", "auto"])
    assert result.exit_code == 0, result.output
    assert "2 free models can answer; up to 2, each when the one before runs late" in (
        result.stderr
    )
    assert "at once" not in result.stderr


def test_chat_passes_the_tunables_through(api: Upstream) -> None:
    """--race-width 1 reaches the router: only one model is asked."""
    api.sim.set_models([fast("a/one:free", "one"), fast("b/two:free", "two")])
    result = invoke(
        [
            "chat",
            "hi",
            "--race-width",
            "1",
            "--hedge-delay",
            "auto",
            "--first-token-timeout",
            "5",
            "--max-tokens",
            "7",
        ]
    )
    assert result.exit_code == 0, result.output
    assert len(api.sim.requests) == 1
    assert api.sim.requests[0].body["max_tokens"] == 7
    assert "race_width" not in api.sim.requests[0].body


def test_chat_quiet_prints_only_the_answer(api: Upstream) -> None:
    """--quiet leaves stderr empty."""
    api.sim.set_models([fast(WINNER, "just this")])
    result = invoke(["chat", "-q", "hi"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "just this\n", "")


def test_chat_without_a_key_is_one_line(api: Upstream) -> None:
    """No key: one line on stderr naming OPENROUTER_API_KEY, exit 1, nothing sent."""
    api.sim.set_models(mixed_models())
    result = invoke(["chat", "hi"], env={"OPENROUTER_API_KEY": None})
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("freerouter: error: no OpenRouter API key")
    assert "OPENROUTER_API_KEY" in result.stderr
    assert api.sim.requests == []


def test_chat_with_a_key_that_has_a_blank_inside_says_so(api: Upstream) -> None:
    """Set but unusable is not "no key": the one line says what is wrong with it."""
    api.sim.set_models(mixed_models())
    result = invoke(["chat", "hi"], env={"OPENROUTER_API_KEY": "sk-or-half one"})
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "space or control character inside" in result.stderr, result.stderr
    assert "sk-or-half" not in result.stderr
    assert api.sim.requests == []


def test_chat_when_every_model_fails_ends_in_one_error_line(api: Upstream) -> None:
    """All models down: the race is shown, then a single error line, exit 1."""
    api.sim.set_models([ModelScript(id=f"down/m{i}:free", status=503) for i in range(3)])
    result = invoke(["chat", "hi"])
    assert result.exit_code == 1
    assert result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("freerouter: error: all 3 free models tried for this request failed")


def test_chat_shows_a_wait_for_a_cooling_model(api: Upstream) -> None:
    """The only model is cooling and returns in moments: the race view says the request waits,
    then the answer comes."""

    api.sim.set_models([fast(WINNER, "after a pause")])
    cooling = cool_once_listed(WINNER, 0.5)
    try:
        result = invoke(["chat", "hi"])
    finally:
        cooling()
    assert result.exit_code == 0, result.output
    assert result.stdout == "after a pause\n"
    lines = result.stderr.splitlines()
    waits = [line for line in lines if "wait   " in line]
    assert len(waits) == 1, result.stderr
    assert re.search(r"wait   0\.[1-5] s until the cooling model returns$", waits[0])
    assert lines.index(waits[0]) < next(i for i, line in enumerate(lines) if "won    " in line)


def test_race_view_says_what_a_wait_is_for() -> None:
    """A wait for cooling models and a wait for the account's minute read differently."""
    from litellm_freerouter import events
    from litellm_freerouter._race_view import RaceView

    stream = io.StringIO()
    view = RaceView(Output(stream, fancy=False), clock=lambda: 0.0)
    view(events.Waiting("fr1", 2.5, 4))
    view(events.Waiting("fr1", 0.8, 1))
    view(events.Waiting("fr1", 45.0, 0))
    assert [line.split("wait   ")[1] for line in stream.getvalue().splitlines()] == [
        "2.5 s until the first of 4 cooling models returns",
        "0.8 s until the cooling model returns",
        "45 s until the account's free requests a minute free up",
    ]


def test_race_view_tells_a_quota_note_from_an_account_warning() -> None:
    """How the router adapts to the day's quota is a note; a stopped account is a warning."""
    from litellm_freerouter import events
    from litellm_freerouter._race_view import RaceView

    stream = io.StringIO()
    view = RaceView(Output(stream, fancy=False), clock=lambda: 0.0)
    view(events.QuotaNotice("40 free requests left today: a hedge waits longer"))
    view(events.AccountNotice("only 3 free requests left today: racing one model at a time"))
    assert stream.getvalue().splitlines() == [
        "· 40 free requests left today: a hedge waits longer",
        "! only 3 free requests left today: racing one model at a time",
    ]


def test_chat_invalid_setting_is_one_line(api: Upstream) -> None:
    """An invalid tunable is named in one line, before anything is sent."""
    result = invoke(["chat", "hi", "--race-width", "0"])
    assert result.exit_code == 1
    assert result.stderr == (
        "freerouter: error: race_width must be at least 1, got 0 (set by --race-width)\n"
    )


def test_chat_against_nothing_says_unreachable() -> None:
    """A closed port gives one 'unreachable' line, exit 1."""
    result = invoke(["--api-base", closed_port_base(), "--api-key", KEY, "chat", "hi"])
    assert result.exit_code == 1
    assert result.stderr.startswith("freerouter: error: cannot reach OpenRouter at")
    assert "unreachable" in result.stderr


def test_chat_as_a_process_separates_answer_and_race(api: Upstream) -> None:
    """In a real process the answer is on stdout and the race, uncoloured, on stderr."""
    api.sim.set_models(mixed_models())
    done = run(["chat", "Say hello"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello from the winner\n"
    assert f"won    {WINNER}" in done.stderr
    assert ANSI not in done.stderr


def test_a_notice_is_shown_once_and_router_logs_only_with_verbose(api: Upstream) -> None:
    """The command shows the router's notices itself: without -v its log lines stay out of
    the way (they were printed beside the notice, the same words twice)."""
    api.sim.set_models(mixed_models())
    api.sim.daily_quota = 7  # after the first race, below the reserve of 5
    assert invoke(["chat", "Say hello"]).exit_code == 0
    done = run(["chat", "Say hello"])  # the race narrows, with a notice
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("free requests left today") == 1, done.stderr
    verbose = invoke(["-v", "chat", "Say hello"])
    assert "litellm_freerouter" in verbose.stderr  # -v: the router's log too
    # A warning no notice stands for is still shown without -v.
    unusable = run(["chat", "Say hello"], env={"FREEROUTER_STATE_DIR": "/dev/null/state"})
    assert unusable.returncode == 0, unusable.stderr
    assert "keeping state in memory for this process" in unusable.stderr


# --- demo -------------------------------------------------------------------------------------


def test_demo_runs_offline_and_the_fast_model_wins(tmp_path: Path) -> None:
    """The demo needs no key or network, ignores the user's settings, and tells its story."""
    env: dict[str, str | None] = {
        "OPENROUTER_API_BASE": closed_port_base(),
        "OPENROUTER_API_KEY": KEY,
        # Every setting the user may have, each one the demo would choke on if it read it.
        **{f"FREEROUTER_{name.upper()}": "not-a-number" for name in TUNABLES},
        "FREEROUTER_STATE_DIR": str(tmp_path / "user-state"),
        "FREEROUTER_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0",
    }
    result = invoke(["demo"], env=env)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "user-state").exists()
    err, out = result.stderr, result.stdout
    assert err.count(f"won    {DEMO_FAST}") == 3
    assert "drop   moonshotai/kimi-k2:free  server error" in err
    assert "benched after earlier failures: " in err
    assert "3 requests, 3 answered" in out
    from litellm_freerouter._demo import ANSWERS, PROMPTS

    assert [out.count(ANSWERS[prompt]) for prompt in PROMPTS] == [1, 1, 1]  # each its own
    paid = next(m.id for m in demo_models() if not m.free)
    paid_row = next(line for line in out.splitlines() if paid in line)
    assert paid_row.split()[2:] == ["0", "never", "called", "✓"]


def test_demo_as_a_process_is_plain_and_quick() -> None:
    """Piped output has no colour codes, and the whole demo takes well under 15 s."""
    started = time.monotonic()
    done = run(["demo"])
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert elapsed < 15
    assert ANSI not in done.stdout + done.stderr
    assert "never called" in done.stdout
    assert done.stderr.count(f"won    {DEMO_FAST}") == 3


# --- output -----------------------------------------------------------------------------------


def test_no_color_is_respected_on_a_terminal(api: Upstream) -> None:
    """On a terminal output is styled, unless NO_COLOR is set."""
    api.sim.set_models(mixed_models())
    status, styled = run_in_terminal(["models"], {})
    assert status == 0 and ANSI in styled and WINNER in styled
    status, plain = run_in_terminal(["models"], {"NO_COLOR": "1"})
    assert status == 0 and ANSI not in plain and WINNER in plain
    assert KEY not in styled + plain


def test_color_always_styles_piped_output(api: Upstream) -> None:
    """--color always styles output even when it is not a terminal."""
    api.sim.set_models(mixed_models())
    result = invoke(["--color", "always", "models"])
    assert result.exit_code == 0
    assert ANSI in result.stdout


def test_color_always_beats_no_color(api: Upstream) -> None:
    """--color always colours even with NO_COLOR set (the option wins, as documented): not
    just bold, but colours."""
    api.sim.set_models(mixed_models())
    result = invoke(["--color", "always", "doctor", "--no-probe"], env={"NO_COLOR": "1"})
    assert "✓" in result.stdout
    assert re.search(r"\x1b\[[0-9;]*3[0-7]m", result.stdout), result.stdout


def test_ctrl_c_while_litellm_imports_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ctrl-C during the second or more that importing litellm takes, before the command's
    own handler is in place, is still one line and status 130."""
    import _freerouter_cli

    class Interrupted(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "litellm_freerouter.cli", Interrupted("cli"))
    try:
        with pytest.raises(SystemExit) as stopped:
            _freerouter_cli.main()
    except KeyboardInterrupt:  # escaping, it would end the whole test session
        pytest.fail("the KeyboardInterrupt escaped the console script")
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "freerouter: interrupted\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_wants_color_follows_terminal_no_color_and_the_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """auto: a terminal without NO_COLOR; always/never win over both."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    assert wants_color(_Terminal(), "auto")
    assert not wants_color(io.StringIO(), "auto")
    assert wants_color(io.StringIO(), "always")
    assert not wants_color(_Terminal(), "never")
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_color(_Terminal(), "auto")


@pytest.mark.parametrize("fancy", [False, True])
def test_output_never_shows_the_key(fancy: bool) -> None:
    """Whatever a message contains, the key is replaced before it is written."""
    stream = io.StringIO()
    out = Output(stream, fancy=fancy, secret=KEY)
    out.line(f"oops {KEY}")
    out.write(f"text {KEY}\n")
    out.mark("fail", f"bad {KEY}", fix=f"fix {KEY}")
    out.table(["a"], [[(KEY, None)]])
    assert KEY not in stream.getvalue()
    assert REDACTED in stream.getvalue()


def test_an_unexpected_error_is_one_line_too(
    api: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a bug ends in one line on stderr (naming --verbose) and exit 1, not a traceback."""

    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError(f"something broke near {KEY}")

    monkeypatch.setattr(cli_module, "_models_report", broken)
    result = invoke(["models"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"freerouter: error: unexpected RuntimeError: something broke near {REDACTED};"
        " run with --verbose for details\n"
    )


def test_version_and_help() -> None:
    """--version names the package version; --help lists every subcommand."""
    assert invoke(["--version"]).stdout == f"freerouter, version {__version__}\n"
    help_text = invoke(["--help"]).stdout
    for command in ("models", "doctor", "chat", "demo"):
        assert command in help_text


def test_litellm_errors_become_their_first_line() -> None:
    """A litellm error's appended traceback and original exception are cut; the cause is kept."""
    import litellm

    wordy = litellm.APIConnectionError(
        message="upstream hiccup\nTraceback (most recent call last):\n  File 'x.py', line 1",
        llm_provider="freerouter",
        model="auto",
    )
    assert describe(wordy) == "upstream hiccup"
    wrapped = RuntimeError("outer")
    wrapped.original_exception = MissingKeyError("no key")  # type: ignore[attr-defined]
    assert "OPENROUTER_API_KEY" in describe(wrapped)


def test_ctrl_c_cancels_the_race_and_exits_130(api: Upstream) -> None:
    """SIGINT mid-race closes the upstream connection and ends with status 130, no traceback."""
    api.sim.set_models([ModelScript(id="s/stall:free", stall_before_first_token=True)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "litellm_freerouter", "chat", "hi"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell running the suite in the background may have set SIGINT to "ignore".
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # wait until the contender is started...
        seen.append(line)
        if "start  s/stall:free" in line:
            break
    try:
        api.wait_requests(1, timeout=30)  # ...and its request has reached the simulator
    except AssertionError:
        proc.kill()
        proc.communicate()
        raise
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    err = "".join(seen) + err
    assert proc.returncode == 130
    assert err.rstrip().endswith("freerouter: interrupted")
    assert "Traceback" not in err and KEY not in out + err
    api.wait_idle()  # no upstream stream is left open (so its outcome is final)...
    # ...and the stalled request was closed by us.
    assert [r.outcome for r in api.sim.requests] == ["client_closed"]


def test_state_show_and_clear(api: Upstream) -> None:
    """`state show` reports a cooling model with its reason; `state clear` forgets it."""
    api.sim.set_models(mixed_models())
    assert invoke(["chat", "hi"]).exit_code == 0
    shown = invoke(["state", "show"])
    assert shown.exit_code == 0, shown.output
    assert "down/busy:free" in shown.stdout
    assert json.loads(invoke(["state", "show", "--json"]).stdout)["cooling"]
    cleared = invoke(["state", "clear"])
    assert cleared.exit_code == 0, cleared.output
    assert json.loads(invoke(["state", "show", "--json"]).stdout)["cooling"] == []


def test_models_shows_a_models_stated_per_minute_limit(api: Upstream) -> None:
    """A limit a model stated in its 429 is remembered and shown (and kept in the state)."""
    api.sim.set_models(
        [
            ModelScript(
                id="lim/a:free",
                context_length=1000,
                status=429,
                error_message="Rate limit exceeded: limit_rpm/lim/a:free/x. High demand for"
                " lim/a:free on OpenRouter - limited to 8 requests per minute.",
            ),
            fast(WINNER, "Hello from the winner", delay=0.05, context_length=2000),
        ]
    )
    assert invoke(["chat", "hi"]).exit_code == 0
    rows = {row["id"]: row for row in json.loads(invoke(["models", "--json"]).stdout)}
    assert rows["lim/a:free"]["limit_rpm"] == 8
    assert rows[WINNER]["limit_rpm"] is None
    assert rows["lim/a:free"]["state"] == "cooling"  # this process had not used it up
    assert rows["lim/a:free"]["limit_frees_in_seconds"] is None
    shown = invoke(["models"]).stdout
    # Out for a minute at most (its limit is a minute's), and the limit is shown with it.
    assert re.search(r"lim/a:free .* cooling (59|60) s \(rate limited, 8/min\)", shown), shown


def test_models_shows_a_model_whose_limit_is_used_up(api: Upstream) -> None:
    """A model sent its stated limit in the last minute is shown as at its limit, with when it
    frees, listed after the ones the next race would ask, and in `state show`."""

    api.sim.set_models(
        [fast("lim/a:free", context_length=1000), fast(WINNER, context_length=2000, delay=0.05)]
    )
    health = env_router().health
    health.record_attempt("lim/a:free")
    health.record_attempt("lim/a:free")
    health.refused("lim/a:free", 1)
    rows = json.loads(invoke(["models", "--json"]).stdout)
    assert [row["id"] for row in rows] == [WINNER, "lim/a:free"]
    assert rows[1]["state"] == "at_limit" and 59 < rows[1]["limit_frees_in_seconds"] <= 60
    shown = invoke(["models"]).stdout
    assert re.search(r"lim/a:free .* at its 1/min limit for (59|60) s", shown), shown
    state = invoke(["state", "show"]).stdout
    assert re.search(
        r"at their per-minute limit: 1\n +lim/a:free: (59|60) s more \(1 a minute\)", state
    )
    (entry,) = json.loads(invoke(["state", "show", "--json"]).stdout)["at_limit"]
    assert entry["model"] == "lim/a:free" and entry["limit_rpm"] == 1


@pytest.mark.parametrize(
    "args", [["frobnicate"], ["state", "wipe"], ["chat", "hi", "--max-tokens", "0"]]
)
def test_a_mistyped_command_or_option_prints_usage_and_exits_2(args: list[str]) -> None:
    """As the README says: usage errors are click's, with status 2, not status 1."""
    result = invoke(args)
    assert result.exit_code == 2
    assert "Usage: " in result.stderr and "Error: " in result.stderr
