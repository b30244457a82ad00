"""Terminal output for the ``freerouter`` command: rich on a terminal, plain text otherwise.

Every line the command prints goes through an :class:`Output`, which removes the API key from
it first (defence in depth: no message should contain it in the first place).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Literal, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

Mark = Literal["ok", "fail", "warn"]
ColorChoice = Literal["auto", "always", "never"]

_MARKS: dict[Mark, tuple[str, str, str]] = {
    # unicode, ascii, rich style
    "ok": ("✓", "ok", "bold green"),
    "fail": ("✗", "FAIL", "bold red"),
    "warn": ("!", "warn", "bold yellow"),
}
REDACTED = "[redacted key]"
MIN_SECRET = 8

# What each failure kind means to a person watching a race.
KINDS: Mapping[str, str] = {
    "rate_limited": "rate limited",
    "server": "server error",
    "network": "network error",
    "slow": "no first token in time",
    "stalled": "went quiet",
    "empty": "empty answer",
    "gone": "no longer served",
    "rejected": "rejected the request",
    "unsupported": "cannot serve this request",
    "context": "prompt too long for it",
    "too_large": "request too large",
    "moderation": "moderated",
    "privacy": "blocked by the account's privacy settings",
    "auth": "API key rejected",
    "credits": "account needs credits",
    "daily_quota": "daily free quota used",
    "minute_limit": "per-minute limit reached",
}


def wants_color(stream: TextIO, choice: ColorChoice) -> bool:
    """Rich output on a terminal unless NO_COLOR (https://no-color.org) or TERM=dumb say no."""
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR", "") != "" or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _encodes(text: str, stream: TextIO) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class Output:
    """One output stream; thread-safe, since race events arrive on the engine's thread."""

    def __init__(self, stream: TextIO, *, fancy: bool, secret: str | None = None) -> None:
        self.stream = stream
        self.fancy = fancy
        # A real key is long; a made-up short one ("x") would blank out every word holding it.
        self._secret = secret if secret and len(secret) >= MIN_SECRET else None
        self._lock = threading.RLock()
        self.unicode = _encodes("✓✗★·…→", stream)
        self._console: Console | None = None
        if fancy:
            self._console = Console(
                file=stream,
                force_terminal=True,
                # fancy already weighed NO_COLOR against --color; rich would read it again.
                no_color=False,
                highlight=False,
                soft_wrap=True,
                emoji=False,
                markup=False,
            )

    def redact(self, text: str) -> str:
        if self._secret and self._secret in text:
            text = text.replace(self._secret, REDACTED)
        return text

    def sym(self, fancy: str, plain: str) -> str:
        return fancy if self.unicode else plain

    def write(self, text: str) -> None:
        """Raw text as it comes (an answer being streamed): no styling, no newline added."""
        with self._lock:
            self.stream.write(self.redact(text))
            self.stream.flush()

    def line(self, text: str = "", style: str | None = None) -> None:
        self.parts([(text, style)])

    def parts(self, parts: Sequence[tuple[str, str | None]]) -> None:
        """One line made of differently styled pieces."""
        with self._lock:
            if self._console is not None:
                line = Text()
                for text, style in parts:
                    line.append(self.redact(text), style=style or "")
                self._console.print(line)
            else:
                self.stream.write(self.redact("".join(text for text, _ in parts)) + "\n")
            self.stream.flush()

    def mark(self, kind: Mark, text: str, fix: str | None = None) -> None:
        """A check's result: ✓, ✗ or !, then what to do about it on the next line."""
        fancy_sym, plain_sym, style = _MARKS[kind]
        self.parts([(self.sym(fancy_sym, plain_sym), style), (" " + text, None)])
        if fix:
            self.parts([("  " + self.sym("→ ", "-> ") + fix, "dim" if kind == "ok" else None)])

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[tuple[str, str | None]]],
        *,
        right: Sequence[int] = (),
    ) -> None:
        """Rows of (text, style) cells; plain text is aligned with spaces for grep and cut."""
        with self._lock:
            if self._console is not None:
                table = Table(
                    box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold"
                )
                for i, header in enumerate(headers):
                    table.add_column(header, justify="right" if i in right else "left")
                for row in rows:
                    table.add_row(*(Text(self.redact(t), style=s or "") for t, s in row))
                self._console.print(table)
                self.stream.flush()
                return
            cells = [list(headers)] + [[self.redact(t) for t, _ in row] for row in rows]
            widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
            for r in cells:
                padded = [
                    c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                    for i, c in enumerate(r)
                ]
                self.stream.write("  ".join(padded).rstrip() + "\n")
            self.stream.flush()


def kind_text(kind: str) -> str:
    return KINDS.get(kind, kind.replace("_", " "))


def one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace, so that one error stays one line."""
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def span(seconds: float) -> str:
    """A wait, in the unit a person would use."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


__all__ = [
    "KINDS",
    "REDACTED",
    "ColorChoice",
    "Mark",
    "Output",
    "kind_text",
    "ms",
    "one_line",
    "span",
    "wants_color",
]
