"""``freerouter demo``: live races against an embedded, simulated OpenRouter (no key or network)."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections import Counter
from collections.abc import Sequence
from typing import Any

from . import engine
from ._race_view import RaceRecord, RaceView
from ._support import describe, done_line, router_for, settle, stream_answer
from ._ui import Output, kind_text, ms, span
from .config import TUNABLES as ALL_TUNABLES
from .config import Settings, load_settings
from .router import Router
from .simulator import ModelScript, Simulator, SimulatorThread, demo_models, words

# The simulator accepts any key; this one is not a secret and never leaves the machine.
DEMO_KEY = "freerouter-demo"
PROMPTS = (
    "Why race several free models instead of asking one?",
    "Which model answered, and why that one?",
    "What happened to the others?",
)
# What the models that can win say to each prompt (the simulated models' own words otherwise).
ANSWERS = {
    PROMPTS[0]: (
        "Free models vary wildly in speed and availability from one minute to the next. Asking"
        " several at once and keeping the first real token beats guessing which one is quick"
        " today, and the losers are cancelled at once."
    ),
    PROMPTS[1]: (
        "This one, because it produced a real token first. Keep-alive comments and empty role"
        " deltas do not count, so a model that only says it is busy cannot win."
    ),
    PROMPTS[2]: (
        "They were cancelled the moment this answer won, and their connections closed. The"
        " ones that failed (a 503, a rate limit) are benched for a while, so the next race"
        " skips them without spending a request."
    ),
}


def _answer_to_prompt(script: ModelScript, body: dict[str, Any]) -> ModelScript:
    """The simulator's per-request hook: a model that answers, answers the question asked."""
    messages = body.get("messages") or []
    prompt = messages[-1].get("content") if messages and isinstance(messages[-1], dict) else None
    answer = ANSWERS.get(prompt) if isinstance(prompt, str) else None
    if answer is None or script.status != 200 or script.stall_before_first_token:
        return script
    return dataclasses.replace(script, chunks=words(answer))


# The demo's own settings; every other tunable takes its default. All are passed explicitly, so
# that the user's FREEROUTER_* settings cannot change the show.
TUNABLES: dict[str, Any] = {
    "race_width": 3,
    "hedge_delay": 0.0,
    "first_token_timeout": 2.0,
    "idle_timeout": 5.0,
    "explore": 0.0,
    "cooldown_rate_limit": 90.0,
    "cooldown_slow": 15.0,
    "cooldown_rejected": 90.0,
    "wait_for_model": 30.0,
}
# The scripted delays at half speed: the same story, told in a few seconds.
TIME_SCALE = 0.5

_OUTCOMES = {
    "ok": "answered",
    "client_closed": "cancelled (lost the race)",
    "pending": "cancelled (lost the race)",
    "stalled": "stalled, cut off",
}


def run(out: Output, err: Output, prompts: Sequence[str] = PROMPTS) -> int:
    # The demo's cooldowns and timings are make-believe: they live in a throwaway state
    # directory, never in the user's state file or Redis.
    with tempfile.TemporaryDirectory(prefix="freerouter-demo-", ignore_cleanup_errors=True) as tmp:
        defaults = Settings()
        tunables = {name: getattr(defaults, name) for name in ALL_TUNABLES}
        return _run(out, err, prompts, {**tunables, **TUNABLES, "state_dir": tmp, "redis_url": ""})


def _run(out: Output, err: Output, prompts: Sequence[str], tunables: dict[str, Any]) -> int:
    scripts = demo_models()
    sim = Simulator(scripts, time_scale=TIME_SCALE)
    sim.per_request = _answer_to_prompt
    thread = SimulatorThread(sim).start()
    try:
        settings = load_settings(tunables, api_key=DEMO_KEY, api_base=thread.url)
        paid = [s.id for s in scripts if not s.free]
        out.parts(
            [
                ("freerouter demo", "bold"),
                (
                    f": {len(prompts)} prompts against a simulated OpenRouter on {thread.url}"
                    f" ({len(scripts) - len(paid)} free models and {len(paid)} paid;"
                    " some fast, some slow, some failing). No key and no network needed.",
                    None,
                ),
            ]
        )
        answered = 0
        with RaceView(err) as view:
            router = router_for(settings)
            for number, prompt in enumerate(prompts, 1):
                out.line()
                out.parts([(f"[{number}/{len(prompts)}] ", "bold cyan"), (prompt, "bold")])
                _benched(err, router)
                try:
                    stream_answer(out, settings, [{"role": "user", "content": prompt}], tunables)
                except BrokenPipeError:
                    raise  # the reader left: end quietly
                except Exception as exc:  # one failed request does not end the demo
                    err.mark("fail", describe(exc, settings.base))
                    continue
                answered += 1
                done_line(err, view.last)
            # Background reads finish before the simulator goes; a summary with a stream
            # still closing is still a summary.
            engine.call_sync(lambda: settle(router), timeout=15)
            with contextlib.suppress(AssertionError):
                thread.call(lambda: sim.wait_idle(5.0))
            _summary(out, sim, view.records, len(prompts), answered)
        paid_called = any(sim.calls_for(model) for model in paid)
        return 0 if answered == len(prompts) and not paid_called else 1
    finally:
        thread.stop()


def _benched(err: Output, router: Router) -> None:
    """Which models earlier failures took out of the running, and for how long."""
    benched = []
    for model in router.catalog.models or ():
        view = router.health.view(model.id)
        if view.cooling_for > 0:
            benched.append(f"{model.id} ({kind_text(view.cool_reason)}, {span(view.cooling_for)})")
    if benched:
        err.parts([("benched after earlier failures: ", "dim"), (", ".join(benched), "yellow")])


def _summary(
    out: Output, sim: Simulator, records: Sequence[RaceRecord], asked: int, answered: int
) -> None:
    calls = sim.called_models()
    out.line()
    out.line("Summary", "bold")
    out.line(
        f"{asked} requests, {answered} answered; {len(calls)} upstream calls to"
        f" {len(set(calls))} free models (losers are cancelled the moment a winner streams)."
    )
    out.table(
        ["#", "winner", "first token", "started", "dropped"],
        [
            [
                (str(i), None),
                (r.winner or "none", "green" if r.winner else "red"),
                (ms(r.first_token), None),
                (str(len(r.started)), None),
                (", ".join(sorted({kind_text(k) for _, k in r.dropped})) or "-", None),
            ]
            for i, r in enumerate(records, 1)
        ],
        right=(0, 2, 3),
    )
    rows = []
    # Busiest first; the paid model last, where its "never called" closes the table.
    scripts = sorted(sim.models.values(), key=lambda s: (not s.free, -sim.calls_for(s.id)))
    for script in scripts:
        recorded = [rec for rec in sim.requests if rec.model == script.id]
        outcomes = Counter(_outcome(rec.outcome) for rec in recorded)
        summary = ", ".join(f"{n} {what}" for what, n in outcomes.most_common())
        if not script.free:
            check = out.sym(" ✓", "")
            label = f"{script.id} (paid)"
            text = f"never called{check}" if not recorded else f"CALLED: {summary}"
            rows.append(
                [
                    (label, None),
                    (str(len(recorded)), None),
                    (text, "bold green" if not recorded else "bold red"),
                ]
            )
            continue
        rows.append(
            [
                (script.id, None),
                (str(len(recorded)), None),
                (summary or "not needed", None if summary else "dim"),
            ]
        )
    out.table(["model", "calls", "what happened"], rows, right=(1,))
    out.line(
        "Next: create a free key at https://openrouter.ai/keys, export OPENROUTER_API_KEY=...,"
        ' then run `freerouter doctor` and `freerouter chat "..."`.',
        "dim",
    )


def _outcome(raw: str) -> str:
    if raw.startswith("status:"):
        return f"HTTP {raw.partition(':')[2]}"
    return _OUTCOMES.get(raw, raw.replace("_", " "))
