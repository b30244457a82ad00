"""What the router does, as small events: logged, and offered to subscribers (the CLI's live view).

Subscribers are called on the router's own thread; they must be quick and must not raise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

# A child of the package's logger (whose handlers and level it follows): the command line,
# which shows these events itself, can quiet their log lines alone.
log = logging.getLogger("litellm_freerouter.events")


@dataclass(frozen=True, slots=True)
class Event:
    def message(self) -> str:
        return type(self).__name__

    level = logging.INFO


@dataclass(frozen=True, slots=True)
class RaceStarted(Event):
    request_id: str
    models: tuple[str, ...]
    candidates: int
    # True: the models start one at a time, each when the one before runs late (hedge_delay).
    hedged: bool = False

    def message(self) -> str:
        how = ", hedged" if self.hedged else ""
        return (
            f"[{self.request_id}] racing {', '.join(self.models)}"
            f" ({self.candidates} candidates{how})"
        )


@dataclass(frozen=True, slots=True)
class ContenderStarted(Event):
    request_id: str
    model: str
    after: float  # seconds since the race started

    level = logging.DEBUG

    def message(self) -> str:
        return f"[{self.request_id}] started {self.model} at +{self.after * 1000:.0f} ms"


@dataclass(frozen=True, slots=True)
class ContenderFailed(Event):
    request_id: str
    model: str
    kind: str
    scope: str
    reason: str
    cooldown: float | None  # seconds; None: the model stays healthy for other requests

    def message(self) -> str:
        cooling = f", cooling {self.cooldown:.0f} s" if self.cooldown else ""
        return f"[{self.request_id}] dropped {self.model}: {self.kind} ({self.reason}){cooling}"


@dataclass(frozen=True, slots=True)
class Winner(Event):
    request_id: str
    model: str
    first_token: float  # seconds since the race started
    contenders: int

    def message(self) -> str:
        return (
            f"[{self.request_id}] winner {self.model}: first token in"
            f" {self.first_token * 1000:.0f} ms ({self.contenders} started)"
        )


@dataclass(frozen=True, slots=True)
class Resumed(Event):
    request_id: str
    model: str  # the model that failed mid-answer
    kind: str
    delivered: int  # characters of content already delivered
    restart: bool  # True: the answer starts afresh (nothing had reached the caller)

    # Mended, not a problem: at INFO it stays out of a caller's output (aider printed it in
    # the middle of the answer it was streaming); a failure to mend it is the caller's error.
    level = logging.INFO

    def message(self) -> str:
        how = (
            "starting the answer afresh on another model"
            if self.restart
            else f"carrying the answer on from its {self.delivered} characters on another model"
        )
        return f"[{self.request_id}] {self.model} failed mid-answer ({self.kind}); {how}"


@dataclass(frozen=True, slots=True)
class Finished(Event):
    request_id: str
    model: str
    ok: bool
    duration: float
    error: str | None = None

    level = logging.DEBUG

    def message(self) -> str:
        status = "done" if self.ok else f"failed: {self.error}"
        return f"[{self.request_id}] {self.model} {status} after {self.duration:.2f} s"


@dataclass(frozen=True, slots=True)
class Waiting(Event):
    request_id: str
    seconds: float  # until the first of the cooling models returns, or the account's minute
    cooling: int  # models that could serve the request and have not failed it; 0: the account
    # Part of the answer has reached the caller already (it is being carried on).
    mid_answer: bool = False

    @property
    def level(self) -> int:  # type: ignore[override]  # the level of this event, not its class
        """A WARNING while the caller has nothing yet, or it looks hung for up to
        wait_for_model seconds (aider shows a freerouter warning, not an INFO); an INFO in the
        middle of an answer, where a warning would print inside the text being streamed."""
        return logging.INFO if self.mid_answer else logging.WARNING

    def message(self) -> str:
        if not self.cooling:
            return (
                f"[{self.request_id}] the account's free requests a minute are used up;"
                f" waiting {self.seconds:.1f} s for the minute to free"
            )
        models = "model" if self.cooling == 1 else "models"
        return (
            f"[{self.request_id}] every free model that can serve this request is cooling down"
            f" or has failed it; waiting {self.seconds:.1f} s for the first of {self.cooling}"
            f" {models} to return"
        )


@dataclass(frozen=True, slots=True)
class CatalogRefreshed(Event):
    count: int
    ok: bool
    error: str | None = None

    def message(self) -> str:
        if self.ok:
            return f"free-model list refreshed: {self.count} models"
        return f"free-model list refresh failed, keeping {self.count} models: {self.error}"


@dataclass(frozen=True, slots=True)
class AccountNotice(Event):
    text: str
    level = logging.WARNING

    def message(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class QuotaNotice(AccountNotice):
    """How the router adapts to what is left of the day's quota: news, not a problem."""

    level = logging.INFO


_subscribers: list[Callable[[Event], None]] = []
_lock = threading.Lock()


def subscribe(callback: Callable[[Event], None]) -> Callable[[], None]:
    """Call ``callback`` for every event; returns a function that unsubscribes it."""
    with _lock:
        _subscribers.append(callback)

    def unsubscribe() -> None:
        with _lock:
            if callback in _subscribers:
                _subscribers.remove(callback)

    return unsubscribe


def emit(event: Event) -> None:
    if log.isEnabledFor(event.level):
        log.log(event.level, "%s", event.message())
    with _lock:
        targets = list(_subscribers)
    for callback in targets:
        try:
            callback(event)
        except Exception:  # a broken subscriber must not break a request
            log.debug("event subscriber failed", exc_info=True)


__all__ = [
    "AccountNotice",
    "CatalogRefreshed",
    "ContenderFailed",
    "ContenderStarted",
    "Event",
    "Finished",
    "QuotaNotice",
    "RaceStarted",
    "Resumed",
    "Waiting",
    "Winner",
    "emit",
    "subscribe",
]
