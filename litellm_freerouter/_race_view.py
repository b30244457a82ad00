"""The live view of a race on stderr, built from the router's events (``chat`` and ``demo``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from . import events
from ._ui import Output, kind_text, ms, one_line, span


@dataclass
class RaceRecord:
    """What one request's race looked like, for closing summaries."""

    request_id: str
    candidates: int = 0
    started: list[str] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (model, kind)
    winner: str | None = None
    first_token: float | None = None
    ok: bool | None = None
    duration: float | None = None
    error: str | None = None


class RaceView:
    """Subscribes to the router's events while in use; prints each as a line on ``out``.

    Called on the engine's thread, so it only formats and writes (``Output`` is thread-safe).
    """

    def __init__(
        self, out: Output, *, quiet: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.out = out
        self.quiet = quiet
        self.records: list[RaceRecord] = []
        self._by_id: dict[str, RaceRecord] = {}
        self._t0: dict[str, float] = {}
        self._clock = clock
        self._lock = threading.Lock()
        self._unsubscribe: Callable[[], None] | None = None

    def __enter__(self) -> RaceView:
        self._unsubscribe = events.subscribe(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    @property
    def last(self) -> RaceRecord | None:
        with self._lock:
            return self.records[-1] if self.records else None

    def _record(self, request_id: str) -> RaceRecord:
        record = self._by_id.get(request_id)
        if record is None:
            record = self._by_id[request_id] = RaceRecord(request_id)
            self.records.append(record)
        return record

    def _at(self, request_id: str, after: float | None = None) -> str:
        if after is None:
            after = self._clock() - self._t0.get(request_id, self._clock())
        return f"{'+' + ms(max(0.0, after)):>9}"  # never "+-0 ms" from clock jitter

    def __call__(self, event: events.Event) -> None:
        with self._lock:
            self._handle(event)

    def _handle(self, event: events.Event) -> None:
        out = self.out
        if isinstance(event, events.RaceStarted):
            self._t0[event.request_id] = self._clock()
            record = self._record(event.request_id)
            record.candidates = event.candidates
            if not self.quiet:
                can = "model can" if event.candidates == 1 else "models can"
                how = (
                    f"up to {len(event.models)}, each when the one before runs late"
                    if event.hedged
                    else f"starting {len(event.models)} at once"
                )
                out.parts(
                    [
                        (f"race {event.request_id}", "bold cyan"),
                        (f": {event.candidates} free {can} answer; {how}", None),
                    ]
                )
        elif isinstance(event, events.ContenderStarted):
            self._record(event.request_id).started.append(event.model)
            if not self.quiet:
                out.parts(
                    [
                        (self._at(event.request_id, event.after), "dim"),
                        ("  start  ", "cyan"),
                        (event.model, None),
                    ]
                )
        elif isinstance(event, events.ContenderFailed):
            self._record(event.request_id).dropped.append((event.model, event.kind))
            if not self.quiet:
                if event.scope == "account":
                    consequence = "stops this request: it affects the whole account"
                elif event.cooldown:
                    consequence = f"benched for {span(event.cooldown)}"
                else:
                    consequence = "skipped for this request only"
                out.parts(
                    [
                        (self._at(event.request_id), "dim"),
                        ("  drop   ", "bold red" if event.scope == "account" else "yellow"),
                        (event.model, None),
                        (f"  {kind_text(event.kind)}: {one_line(event.reason, 120)}", "yellow"),
                        (f" {out.sym('·', '-')} {consequence}", "dim"),
                    ]
                )
        elif isinstance(event, events.Waiting):
            if not self.quiet:
                wait = f"{event.seconds:.1f} s" if event.seconds < 10 else span(event.seconds)
                if not event.cooling:
                    what = f"{wait} until the account's free requests a minute free up"
                elif event.cooling == 1:
                    what = f"{wait} until the cooling model returns"
                else:
                    what = f"{wait} until the first of {event.cooling} cooling models returns"
                out.parts(
                    [
                        (self._at(event.request_id), "dim"),
                        ("  wait   ", "cyan"),
                        (what, None),
                    ]
                )
        elif isinstance(event, events.Winner):
            record = self._record(event.request_id)
            record.winner, record.first_token = event.model, event.first_token
            if not self.quiet:
                out.parts(
                    [
                        (self._at(event.request_id, event.first_token), "dim"),
                        ("  won    ", "bold green"),
                        (event.model, "bold green"),
                        (
                            f"  first token after {ms(event.first_token)}"
                            f" ({event.contenders} started)",
                            None,
                        ),
                    ]
                )
        elif isinstance(event, events.Finished):
            # Printed by the command once the answer is out, so it never splits the answer.
            record = self._record(event.request_id)
            record.ok, record.duration, record.error = event.ok, event.duration, event.error
        elif isinstance(event, events.QuotaNotice):
            out.parts([(out.sym("· ", "note: "), "dim"), (event.text, "dim")])
        elif isinstance(event, events.AccountNotice):
            out.parts([(out.sym("! ", "warn: "), "bold yellow"), (event.text, "yellow")])
        elif isinstance(event, events.CatalogRefreshed) and not event.ok and event.count:
            out.parts(
                [
                    (out.sym("! ", "warn: "), "bold yellow"),
                    (
                        f"free-model list refresh failed, keeping {event.count} models:"
                        f" {one_line(event.error or '', 160)}",
                        "yellow",
                    ),
                ]
            )
