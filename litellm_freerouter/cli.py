"""The ``freerouter`` command: ``models``, ``doctor``, ``chat``, ``demo`` and ``state``.

A subcommand is a function decorated with ``@cli.command()`` (or a ``@cli.group()`` of them)
taking the :class:`App` through ``@pass_app``: it gets settings from ``app.settings()`` and
prints through ``app.out`` / ``app.err``.  Errors need no handling there: :class:`FreeRouterCLI`
turns every exception into one line on stderr and exit status 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import click

from . import __version__, engine
from ._race_view import RaceView
from ._support import (
    cancel_in_flight,
    describe,
    done_line,
    free_models,
    settle,
    stream_answer,
)
from ._ui import MIN_SECRET, REDACTED, ColorChoice, Output, kind_text, ms, span, wants_color
from .catalog import FreeModel
from .config import Settings, load_settings
from .errors import ConfigurationError, NoModelAvailable
from .health import ModelView
from .provider import _router


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class App:
    """What every subcommand needs: the global options, settings, and the two outputs."""

    api_base: str | None = None
    api_key: str | None = None
    color: ColorChoice = "auto"
    verbose: bool = False
    _outputs: dict[str, Output] = field(default_factory=dict)

    def settings(self, overrides: Mapping[str, Any] | None = None) -> Settings:
        return load_settings(
            overrides, api_key=self.api_key, api_base=self.api_base, override_source=_flag
        )

    @property
    def key_source(self) -> str:
        return "--api-key" if self.api_key else "OPENROUTER_API_KEY"

    def secret(self) -> str | None:
        try:
            return self.settings().api_key
        except ConfigurationError:
            return self.api_key

    def _output(self, name: str) -> Output:
        # Built on first use, from the streams of that moment (CliRunner swaps them).
        output = self._outputs.get(name)
        if output is None:
            stream = sys.stdout if name == "out" else sys.stderr
            output = self._outputs[name] = Output(
                stream, fancy=wants_color(stream, self.color), secret=self.secret()
            )
        return output

    @property
    def out(self) -> Output:
        return self._output("out")

    @property
    def err(self) -> Output:
        return self._output("err")


pass_app = click.make_pass_decorator(App)


class CLIError(click.ClickException):
    """One line on stderr, exit status 1, no traceback."""

    def __init__(self, message: str, secret: str | None = None) -> None:
        if secret and len(secret) >= MIN_SECRET:
            message = message.replace(secret, REDACTED)
        super().__init__(message)

    def show(self, file: Any = None) -> None:
        click.echo(f"freerouter: error: {self.message}", err=True)


class FreeRouterCLI(click.Group):
    """A group that turns any exception from a subcommand into a :class:`CLIError`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            cancel_in_flight()
            click.echo("\nfreerouter: interrupted", err=True)
            raise click.exceptions.Exit(130) from None
        except BrokenPipeError:
            _quiet_stdout()  # the reader left (`freerouter models | head`); that is fine
            raise click.exceptions.Exit(1) from None
        except Exception as exc:
            app = ctx.find_object(App)
            if app is not None and app.verbose:
                raise
            base = None
            if app is not None:
                with contextlib.suppress(ConfigurationError):
                    base = app.settings().base
            said = describe(exc, base)
            if app is not None and app.api_key:
                # The key came from --api-key: that is what to check, not the variable.
                said = said.replace("Check OPENROUTER_API_KEY", "Check --api-key")
            raise CLIError(said, app.secret() if app else None) from None


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


@click.group(cls=FreeRouterCLI, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--api-base",
    metavar="URL",
    help="OpenRouter API base [default: OPENROUTER_API_BASE, else openrouter.ai].",
)
@click.option(
    "--api-key",
    metavar="KEY",
    help="OpenRouter API key [default: OPENROUTER_API_KEY, the safer place for it].",
)
@click.option(
    "--color",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Styled output; auto: on a terminal unless NO_COLOR is set.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what the router does; show tracebacks.")
@click.version_option(__version__, "-V", "--version", prog_name="freerouter")
@click.pass_context
def cli(
    ctx: click.Context, api_base: str | None, api_key: str | None, color: ColorChoice, verbose: bool
) -> None:
    """freerouter/auto for LiteLLM: OpenRouter's free models, raced; the first token wins.

    \b
    Start here:
      freerouter demo            watch races against a simulated OpenRouter
      freerouter doctor          check your key, quota and privacy setting
      freerouter chat "Hello"    ask the real thing
    """
    ctx.obj = App(api_base=api_base or None, api_key=api_key or None, color=color, verbose=verbose)
    litellm_logger = logging.getLogger("LiteLLM")
    logger = logging.getLogger("litellm_freerouter")
    events_logger = logging.getLogger("litellm_freerouter.events")
    levels = {each: each.level for each in (litellm_logger, logger, events_logger)}
    handler: logging.Handler | None = None
    if not verbose:
        # litellm's own warnings (such as its cost-map download failing offline) mean nothing
        # to someone running this command; our errors say what went wrong, and the router's
        # events are shown as its notices (their log lines would say them twice). Other
        # warnings, such as the state file being unusable, still show.
        litellm_logger.setLevel(logging.ERROR)
        events_logger.setLevel(logging.ERROR)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)

    def restore() -> None:
        """The loggers as they were: the command may run inside a process (tests, scripts)."""
        for each, level in levels.items():
            each.setLevel(level)
        if handler is not None:
            logger.removeHandler(handler)

    ctx.call_on_close(restore)


# --- models -----------------------------------------------------------------------------------


def _state(view: ModelView) -> tuple[str, str]:
    if view.cooling_for > 0:
        limit = f", {view.limit_rpm}/min" if view.limit_rpm else ""
        return "cooling", f"cooling {span(view.cooling_for)} ({kind_text(view.cool_reason)}{limit})"
    if view.limit_wait > 0:
        return "at_limit", f"at its {view.limit_rpm}/min limit for {span(view.limit_wait)}"
    if view.measured or view.attempts:
        return "ready", f"ready ({view.limit_rpm}/min)" if view.limit_rpm else "ready"
    return "never_tried", "never tried"


@dataclass(frozen=True)
class _Row:
    model: FreeModel
    view: ModelView
    prior: float | None  # OpenRouter's own first-token figure (seconds), where it gave one


async def _models_report(
    settings: Settings, with_quota: bool
) -> tuple[list[_Row], tuple[int, int] | None]:
    router = _router(settings)
    try:
        await router.catalog.get()
    except NoModelAvailable:
        return [], None
    await settle(router)  # the per-model latency figures the ranking uses
    models = router.catalog.models or ()
    quota = None
    if with_quota and settings.api_key:
        await router.read_quota(settings.api_key)  # failures are skipped quietly
        q = router.health.quota
        if q.limit is not None and q.remaining is not None:
            quota = (q.remaining, q.limit)
    # The order the next race would try them in; the ones it would leave out last.
    ranked = router.rank(models, replace(settings, explore=0.0), None, settings.race_width)
    rows = [_Row(m, router.health.view(m.id), router.health.stats(m.id).prior_ttft) for m in ranked]
    rows.sort(key=lambda row: row.view.cooling_for > 0 or row.view.limit_wait > 0)
    return rows, quota


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="A JSON list of objects, for scripts.")
@pass_app
def models(app: App, as_json: bool) -> None:
    """The free models, in the order freerouter would race them (no key needed)."""
    settings = app.settings()
    rows, quota = engine.call_sync(
        lambda: _models_report(settings, with_quota=not as_json), timeout=120
    )
    if as_json:
        app.out.write(json.dumps([_as_json(row) for row in rows], indent=2) + "\n")
        return
    out = app.out
    if not rows:
        out.line("OpenRouter lists no free models right now.")
        return
    yes, no = out.sym("✓", "yes"), out.sym("·", "-")
    table = []
    for row in rows:
        model, view = row.model, row.view
        state, state_text = _state(view)
        style = {"ready": "green", "cooling": "yellow", "at_limit": "yellow"}.get(state, "dim")
        table.append(
            [
                (model.id, None),
                (f"{model.context_length:,}" if model.context_length else "?", None),
                (yes if model.supports_tools else no, None),
                (yes if model.supports_images else no, None),
                (state_text, style),
                (_speed(row), None if view.ttft_p50 is not None else "dim"),
            ]
        )
    out.line(
        f"{len(rows)} free models at {settings.base}, in the order the next race tries them", "bold"
    )
    out.table(
        ["model", "context", "tools", "vision", "state", "first token p50"], table, right=(1, 5)
    )
    if any(row.view.ttft_p50 is None and row.prior is not None for row in rows):
        out.line(
            "~: OpenRouter's recent figure for the model; measured here once it has raced.", "dim"
        )
    if quota is not None:
        remaining, limit = quota
        out.line(f"Free requests left today: {remaining} of {limit} (resets 00:00 UTC).")
    if not settings.api_key:
        out.line(
            "No API key: the states and speeds are those learnt without one. What your key's"
            " races learnt shows with OPENROUTER_API_KEY set (or --api-key).",
            "dim",
        )


def _speed(row: _Row) -> str:
    if row.view.ttft_p50 is not None:
        return ms(row.view.ttft_p50)
    return "~" + ms(row.prior) if row.prior is not None else "-"


def _as_json(row: _Row) -> dict[str, Any]:
    model, view = row.model, row.view
    state, _ = _state(view)
    return {
        "id": model.id,
        "name": model.name,
        "context_length": model.context_length,
        "max_completion_tokens": model.max_completion_tokens,
        "tools": model.supports_tools,
        "vision": model.supports_images,
        "state": state,
        "cooling_seconds": round(view.cooling_for, 1) if view.cooling_for > 0 else None,
        "cool_reason": view.cool_reason or None,
        "ttft_p50_ms": None if view.ttft_p50 is None else round(view.ttft_p50 * 1000),
        "ttft_p90_ms": None if view.ttft_p90 is None else round(view.ttft_p90 * 1000),
        "openrouter_ttft_ms": None if row.prior is None else round(row.prior * 1000),
        "provider": model.provider,
        "wins": view.wins,
        "attempts": view.attempts,
        "limit_rpm": view.limit_rpm,
        "limit_frees_in_seconds": round(view.limit_wait, 1) if view.limit_wait > 0 else None,
    }


# --- doctor -----------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--probe/--no-probe",
    default=True,
    show_default=True,
    help=(
        "Send one minimal completion (spends 1 request of the daily free quota, and one more"
        " for each model that fails it)."
    ),
)
@pass_app
def doctor(app: App, probe: bool) -> None:
    """Check the key, quota, endpoint, free models and privacy setting; say how to fix each."""
    from ._doctor import Doctor

    status = Doctor(app.out, app.settings(), key_source=app.key_source, probe=probe).run()
    if status:
        raise click.exceptions.Exit(status)


# --- chat -------------------------------------------------------------------------------------


@cli.command()
@click.argument("prompt")
@click.option("--system", metavar="TEXT", help="A system message to send first.")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Cap the answer's length.")
@click.option(
    "--race-width",
    type=int,
    help="How many models race at once [default: FREEROUTER_RACE_WIDTH, else 3].",
)
@click.option(
    "--hedge-delay",
    metavar="SECONDS|auto",
    help="Wait before adding each next contender; auto: until the one before runs late"
    " [default: FREEROUTER_HEDGE_DELAY, else 0: all at once].",
)
@click.option(
    "--first-token-timeout",
    type=float,
    metavar="SECONDS",
    help="Drop a contender with no first token by then"
    " [default: FREEROUTER_FIRST_TOKEN_TIMEOUT, else 30].",
)
@click.option("-q", "--quiet", is_flag=True, help="Only the answer: no race view on stderr.")
@pass_app
def chat(
    app: App,
    prompt: str,
    system: str | None,
    max_tokens: int | None,
    race_width: int | None,
    hedge_delay: str | None,
    first_token_timeout: float | None,
    quiet: bool,
) -> None:
    """Ask once; the answer streams to stdout and the race to stderr ("-" reads stdin)."""
    if prompt == "-":
        prompt = sys.stdin.read()
    tunables = {
        name: value
        for name, value in (
            ("race_width", race_width),
            ("hedge_delay", hedge_delay),
            ("first_token_timeout", first_token_timeout),
        )
        if value is not None
    }
    settings = app.settings(tunables)  # invalid values fail here, with the setting's name
    settings.require_key()
    messages = [{"role": "user", "content": prompt}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    extra: dict[str, Any] = dict(tunables)
    if max_tokens is not None:
        extra["max_tokens"] = max_tokens
    with RaceView(app.err, quiet=quiet) as view:
        free_models(settings)  # an unreachable endpoint is a clear error before any race
        stream_answer(app.out, settings, messages, extra)
    if not quiet:
        done_line(app.err, view.last)


# --- demo -------------------------------------------------------------------------------------


@cli.command()
@pass_app
def demo(app: App) -> None:
    """Watch live races against a simulated OpenRouter: no key, no network, a few seconds."""
    from . import _demo

    status = _demo.run(app.out, app.err)
    if status:
        raise click.exceptions.Exit(status)


# --- state ------------------------------------------------------------------------------------


@cli.group("state")
def state_group() -> None:
    """What freerouter remembers between runs: cooldowns, speed, account limits, the model list."""


@state_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@pass_app
def state_show(app: App, as_json: bool) -> None:
    """Where the state lives, who is cooling down and why, and the free requests left."""
    from . import state as shared

    report = shared.describe(app.settings())
    if as_json:
        app.out.write(json.dumps(report.as_dict(), indent=2) + "\n")
        return
    for line in report.lines(kind_text):
        app.out.line(line)


@state_group.command("clear")
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Every key's and endpoint's state, not only this key's.",
)
@pass_app
def state_clear(app: App, everything: bool) -> None:
    """Forget cooldowns, measured speed, account limits and the cached model list."""
    from . import state as shared

    app.out.line(shared.clear(app.settings(), everything=everything))


def main() -> None:
    """The console script's entry point."""
    cli(prog_name="freerouter")
