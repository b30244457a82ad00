"""The error tree, how upstream failures are classified, and how they become litellm's errors.

::

    FreeRouterError
    ├── ConfigurationError ............ a tunable or argument is wrong      -> BadRequestError
    │   └── MissingKeyError ........... no OPENROUTER_API_KEY                -> AuthenticationError
    ├── UpstreamError ................. one model's failure, with its scope (account, model,
    │   │                               request) and kind; raised to the caller only when it
    │   │                               stops the whole request
    │   └── StreamStalled ............. the winner went quiet after its first token -> Timeout
    ├── NoModelAvailable .............. every free model is cooling or none exist
    │                                                              -> ServiceUnavailableError
    ├── NoCapableModel ................ no free model can serve this request -> BadRequestError
    ├── AllModelsFailed ............... every candidate failed for this request
    │                                   -> RateLimitError / ContextWindowExceededError / Timeout /
    │                                      ServiceUnavailableError, by what the failures were
    └── CatalogUnavailable ............ the list cannot be fetched -> ServiceUnavailableError

Upstream HTTP statuses and error chunks are classified in :func:`classify` and nowhere else;
exceptions reach litellm's classes in :func:`to_litellm` and nowhere else.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

Scope = Literal["account", "model", "request"]

PRIVACY_URL = "https://openrouter.ai/settings/privacy"
CREDITS_URL = "https://openrouter.ai/settings/credits"
KEYS_URL = "https://openrouter.ai/keys"


class FreeRouterError(Exception):
    """Base class of every error this package raises."""


class ConfigurationError(FreeRouterError, ValueError):
    """A setting or argument is invalid; the message names it (``setting``: which tunable)."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class MissingKeyError(ConfigurationError):
    """No API key was given."""


class ServerKeyMissing(FreeRouterError):
    """A LiteLLM proxy serves freerouter without an OpenRouter key: its operator's mistake, not
    the client's (whose virtual key was fine), so not an authentication error to the client."""


class MalformedKeyError(MissingKeyError):
    """The key has a blank or control character inside: it cannot be sent."""


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong with one model on one request."""

    kind: str
    scope: Scope
    message: str
    model: str | None = None
    status: int | None = None
    retry_after: float | None = None
    # Absolute reset time (epoch seconds) of an account limit, when the upstream said it.
    reset_at: float | None = None
    # A model's own requests-per-minute limit, when its 429 said it (``limit_rpm/...``).
    limit_rpm: int | None = None

    def describe(self) -> str:
        where = f"{self.model}: " if self.model else ""
        code = f"{self.status} " if self.status else ""
        return f"{where}{code}{self.kind} ({self.message})"


class UpstreamError(FreeRouterError):
    """One model's failure, carried as an exception out of its contender task."""

    def __init__(self, failure: Failure) -> None:
        named = (
            failure.model and failure.scope != "account" and failure.model not in failure.message
        )
        super().__init__(f"{failure.model}: {failure.message}" if named else failure.message)
        self.failure = failure
        # The answer broke off after freerouter had already carried it on, or could not: a
        # retry would spend the quota again on the same breaks (see _final).
        self.final = False


class StreamStalled(UpstreamError):
    """The winning model sent nothing for ``idle_timeout`` seconds after it had started."""


class NoModelAvailable(FreeRouterError):
    """Every free model is cooling down (or there are none); nothing was sent upstream."""

    def __init__(self, message: str, *, cooling: int = 0, next_ready_in: float | None = None):
        super().__init__(message)
        self.cooling = cooling
        self.next_ready_in = next_ready_in


class NoCapableModel(FreeRouterError):
    """No free model supports what this request needs (tools, images, size...);
    ``context_only``: what none has is a context window large enough."""

    def __init__(self, message: str, *, context_only: bool = False) -> None:
        super().__init__(message)
        self.context_only = context_only


class AllModelsFailed(FreeRouterError):
    """Every model tried for this request failed; ``failures`` says how, ``left_out`` (when
    given) why the other free models were not tried; ``cut_short``: the account's minute
    stopped it before the rest were; ``repeat`` (seconds ago, window): the
    request went on from an identical one that failed that long ago, within the window."""

    def __init__(
        self,
        failures: Sequence[Failure],
        *,
        cap: int | None = None,
        left_out: str = "",
        repeat: tuple[float, float] | None = None,
        cut_short: bool = False,
    ) -> None:
        self.failures = tuple(failures)
        self.left_out = left_out
        # The account's free requests a minute ran out before every model had its turn.
        self.cut_short = cut_short
        shown = "; ".join(f.describe() for f in self.failures[:6])
        more = f"; and {len(self.failures) - 6} more" if len(self.failures) > 6 else ""
        why = (
            f" (no more are tried for one request: it may send {cap}, FREEROUTER_MAX_ATTEMPTS"
            " or the race width if that is larger)"
            if cap is not None
            else ""
        )
        if not self.failures and cap is not None:
            # An answer carried on, or races the account's minute cut short, used them all.
            super().__init__(
                f"this request has sent the {cap} upstream requests it may send"
                " (max_attempts, FREEROUTER_MAX_ATTEMPTS; or the race width if that is larger)"
            )
            return
        which = "this request"
        again = ""
        if repeat is not None:
            ago, window = repeat
            which += f" and an identical one {ago:.0f} s ago"
            again = (
                f"; a request repeated within {window:.0f} s of the first failure goes on from"
                " it, without asking the models that failed it again"
            )
        super().__init__(
            f"all {len(self.failures)} free models tried for {which} failed{why}:"
            f" {shown}{more}{f'; {left_out}' if left_out else ''}{again}"
        )


class RequestRejected(FreeRouterError):
    """Two models refused this request outright (400/422), or one said it is too large (413,
    431): most likely the request itself is at fault, and trying every other model would only
    spend the quota."""

    def __init__(self, failures: Sequence[Failure]) -> None:
        self.failures = tuple(failures)
        shown = "; ".join(f.describe() for f in self.failures)
        if any(f.kind == "too_large" for f in self.failures):
            super().__init__(
                f"the request is too large for OpenRouter: {shown}. It would be as large for"
                " every model, so no other was asked: shorten the prompt or attachments"
                " (images as URLs), or the extra_headers"
            )
            return
        super().__init__(
            f"{len(self.failures)} free models refused this request: {shown}. The request itself"
            " is likely at fault (a parameter or tool schema they do not accept), so no other"
            " model was asked"
        )


class CatalogUnavailable(FreeRouterError):
    """The free-model list could not be fetched and no earlier copy exists."""


# --- classification -------------------------------------------------------------------------

_CONTEXT = re.compile(r"context length|context window|maximum context|too many tokens", re.I)
_UNSUPPORTED = re.compile(r"no endpoints found that support|does not support|not support", re.I)
_PRIVACY = re.compile(r"data policy|privacy", re.I)
# "High demand for <id> on OpenRouter - limited to N requests per minute" (limit_rpm/<id>/...).
_LIMIT_RPM = re.compile(r"(\d+) requests? per minute", re.I)
_NO_ENDPOINTS = re.compile(
    r"no endpoints found|no allowed providers|not a valid model|deprecated"
    r"|no longer (available|free)|has ended|unavailable",
    re.I,
)


# No upstream hint to wait is taken for longer than a day (the free quota resets daily), and
# a reset time further ahead than two days is not believed: a garbled header must not bench a
# model, or the account, for good.
MAX_WAIT = 86400.0
MAX_RESET_AHEAD = 2 * 86400.0


def _as_float(value: Any) -> float | None:
    """A non-negative, finite number from a header or body field, else None."""
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return result if math.isfinite(result) and result >= 0 else None


def retry_after_of(
    body: Mapping[str, Any] | None, headers: Mapping[str, str] | None
) -> float | None:
    """The longest wait the upstream asked for, from any of the places it may say it."""
    candidates: list[float | None] = []
    if headers:
        lowered = {k.lower(): v for k, v in headers.items()}
        candidates.append(_as_float(lowered.get("retry-after")))
    error = (body or {}).get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        meta = error.get("metadata")
        if isinstance(meta, Mapping):
            candidates.append(_as_float(meta.get("retry_after_seconds")))
            meta_headers = meta.get("headers")
            if isinstance(meta_headers, Mapping):
                candidates.append(_as_float(meta_headers.get("Retry-After")))
        availability = error.get("availability")
        if isinstance(availability, Mapping):
            candidates.append(_as_float(availability.get("retry_after")))
        candidates.append(_as_float(error.get("retry_after_seconds")))
    values = [c for c in candidates if c is not None]
    return min(max(values), MAX_WAIT) if values else None


def _reset_at(error: Mapping[str, Any]) -> float | None:
    meta = error.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    headers = meta.get("headers")
    if not isinstance(headers, Mapping):
        return None
    raw = _as_float(headers.get("X-RateLimit-Reset"))
    if raw is None:
        return None
    # OpenRouter sends epoch milliseconds; accept seconds too, should that ever change.
    reset = raw / 1000 if raw > 1e11 else raw
    # A reset already past (a garbled header, clock skew) would hold nothing: not believed,
    # like one too far ahead; the caller falls back to the next UTC midnight.
    now = time.time()
    return reset if now < reset <= now + MAX_RESET_AHEAD else None


def next_utc_midnight(now: float | None = None) -> float:
    now = time.time() if now is None else now
    return (now // 86400 + 1) * 86400


def decode_error_body(raw: bytes) -> Any:
    """An upstream error body as :func:`classify` takes it: its JSON, else its text."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")[:500]


def error_message(body: Any) -> str:
    """What an error body says: OpenRouter's ``error.message``, or the text itself."""
    error = body.get("error") if isinstance(body, Mapping) else None
    said = error.get("message") if isinstance(error, Mapping) else None
    return str(said or (body if isinstance(body, str) else "") or "").strip()


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` (the API key) taken out: an upstream that echoes the key in its
    error must not make freerouter write it into an exception, a log line or an event."""
    if secret and len(secret) >= 8 and secret in text:
        return text.replace(secret, "[OPENROUTER_API_KEY]")
    return text


def classify(
    status: int,
    body: Any,
    headers: Mapping[str, str] | None = None,
    *,
    model: str | None = None,
    secret: str | None = None,
    in_stream: bool = False,
) -> Failure:
    """Decide what an upstream error means for routing: OpenRouter's errors by scope, as the
    README's "What a failure means" table lists them.  ``secret`` is redacted from what the
    upstream said; ``in_stream``: the error came inside a 200 stream (from the model's
    provider, after OpenRouter had accepted the request)."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        error = {}
    message = redact(error_message(body), secret)
    meta = error.get("metadata") if isinstance(error.get("metadata"), Mapping) else {}
    raw = redact(str(meta.get("raw") or ""), secret) if isinstance(meta, Mapping) else ""
    text = f"{message} {raw}"
    message = message or f"HTTP {status}"
    retry_after = retry_after_of(body if isinstance(body, Mapping) else None, headers)

    def failure(kind: str, scope: Scope, **extra: Any) -> Failure:
        return Failure(kind, scope, message, model, status, retry_after, **extra)

    if status == 401:
        return failure("auth", "account")
    if status == 402:
        return failure("credits", "account")
    if status == 429:
        if "free-models-per-day" in text:
            reset = _reset_at(error) or next_utc_midnight()
            return failure("daily_quota", "account", reset_at=reset)
        if "free-models-per-min" in text:
            return Failure("minute_limit", "account", message, model, status, retry_after or 60.0)
        rpm = _LIMIT_RPM.search(text)
        return failure("rate_limited", "model", limit_rpm=int(rpm.group(1)) if rpm else None)
    if status == 404:
        if _PRIVACY.search(text):
            return failure("privacy", "account")
        if _UNSUPPORTED.search(text):
            return failure("unsupported", "request")
        return failure("gone", "model")
    if status == 403:
        return failure("moderation", "request")
    relayed = (
        in_stream or bool(raw) or (isinstance(meta, Mapping) and bool(meta.get("provider_name")))
    )
    if status in (413, 431) and not relayed and not _CONTEXT.search(text):
        # Too large for OpenRouter (the body, or the headers): as large for every model. Not
        # a provider's own 413 (its context window, its tokens a minute), passed on with its
        # words or inside a stream: that is this model's limit, and another may serve.
        return failure("too_large", "request")
    if status in (400, 413, 422):
        if _CONTEXT.search(text):
            return failure("context", "request")
        if raw and raw not in message:
            # OpenRouter's "Provider returned error" says nothing; the provider's own words do.
            message = f"{message}: {' '.join(raw.split())[:300]}"
        return failure("rejected", "model")
    if status == 408 or status >= 500:
        return failure("server", "model")
    return failure("rejected", "model")


def classify_error_chunk(
    error: Mapping[str, Any], *, model: str | None, secret: str | None = None
) -> Failure:
    """An error that arrived inside a 200 stream counts by its code."""
    code = error.get("code")
    status = code if isinstance(code, int) and 100 <= code <= 599 else None
    if status is None and isinstance(code, str) and code.isdigit():
        status = int(code)
    return classify(status or 502, {"error": error}, model=model, secret=secret, in_stream=True)


# --- messages for the caller -----------------------------------------------------------------


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%H:%M UTC")


def account_message(failure: Failure) -> str:
    """What a person should do about an account-wide failure."""
    if failure.kind == "auth":
        return (
            "OpenRouter rejected the API key (401). Check OPENROUTER_API_KEY or create a new key"
            f" at {KEYS_URL}."
        )
    if failure.kind == "credits":
        return (
            "OpenRouter says the account needs credits (402); a negative balance blocks even free"
            f" models. Add credits at {CREDITS_URL}."
        )
    if failure.kind == "daily_quota":
        reset = failure.reset_at or next_utc_midnight()
        return (
            f"free daily quota used; resets at {_clock(reset)}. OpenRouter allows 50 free requests"
            " a day, or 1000 once 10 USD of credits were ever bought:"
            f" {CREDITS_URL}"
        )
    if failure.kind == "minute_limit":
        wait = failure.retry_after or 60.0
        return (
            f"free models are rate limited for this account (20 requests a minute); try again in"
            f" {wait:.0f} s."
        )
    if failure.kind == "privacy":
        return (
            "OpenRouter's privacy settings block free models for this account: enable"
            " 'Free model publication' (free endpoints that may publish prompts) at"
            f" {PRIVACY_URL}."
        )
    return failure.message


# --- translation to litellm ------------------------------------------------------------------


def to_litellm(exc: BaseException, *, model: str = "auto") -> Exception:
    """Translate one of our errors into the litellm class that makes retry logic right."""
    import httpx
    from litellm import exceptions as litellm

    provider = "freerouter"

    def response(status: int) -> httpx.Response:
        request = httpx.Request("POST", "https://openrouter.ai/api/v1/chat/completions")
        return httpx.Response(status_code=status, request=request)

    if isinstance(exc, ServerKeyMissing):
        return litellm.APIError(
            status_code=500, message=str(exc), llm_provider=provider, model=model
        )
    if isinstance(exc, MissingKeyError):
        return litellm.AuthenticationError(message=str(exc), llm_provider=provider, model=model)
    if isinstance(exc, ConfigurationError):
        return litellm.BadRequestError(message=str(exc), model=model, llm_provider=provider)
    if isinstance(exc, NoCapableModel) and exc.context_only:
        # aider (and a proxy's context_window_fallbacks) act on this class: /drop, /clear.
        return litellm.ContextWindowExceededError(
            message=str(exc), model=model, llm_provider=provider
        )
    if isinstance(exc, (NoCapableModel, RequestRejected)):
        return litellm.BadRequestError(message=str(exc), model=model, llm_provider=provider)
    if isinstance(exc, NoModelAvailable):
        from . import _final as final  # a retry now finds them cooling still, or later spends

        return final.ServiceUnavailableError(
            message=str(exc), llm_provider=provider, model=model, response=response(503)
        )
    if isinstance(exc, CatalogUnavailable):
        return litellm.ServiceUnavailableError(
            message=str(exc), llm_provider=provider, model=model, response=response(503)
        )
    if isinstance(exc, UpstreamError):
        return _failure_to_litellm(exc.failure, str(exc), model, response, final=exc.final)
    if isinstance(exc, AllModelsFailed):
        from . import _final as final  # several models were tried: a retry would only spend

        kinds = {f.kind for f in exc.failures}
        if kinds and kinds <= {"context"}:
            return litellm.ContextWindowExceededError(
                message=str(exc), model=model, llm_provider=provider
            )
        if kinds and kinds <= {"rate_limited"}:
            return final.RateLimitError(message=str(exc), llm_provider=provider, model=model)
        if kinds and kinds <= {"slow", "stalled"}:
            return final.Timeout(message=str(exc), model=model, llm_provider=provider)
        if kinds and kinds <= {"unsupported", "rejected", "moderation", "context", "too_large"}:
            return litellm.BadRequestError(message=str(exc), model=model, llm_provider=provider)
        return final.ServiceUnavailableError(
            message=str(exc), llm_provider=provider, model=model, response=response(503)
        )
    if isinstance(exc, FreeRouterError):
        return litellm.APIError(
            status_code=500, message=str(exc), llm_provider=provider, model=model
        )
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


def _failure_to_litellm(
    failure: Failure, message: str, model: str, response: Any, *, final: bool = False
) -> Exception:
    """litellm's class for ``failure``; ``final``: the no-retry subclass (see _final) where a
    caller retrying by class would retry."""
    from litellm import exceptions as litellm

    from . import _final

    provider = "freerouter"
    kind = failure.kind
    if kind == "auth":
        return litellm.AuthenticationError(message=message, llm_provider=provider, model=model)
    if kind in ("daily_quota", "minute_limit", "rate_limited"):
        # After an account's daily 429 nothing is sent until the reset: never worth a retry.
        spent = kind == "daily_quota" and failure.scope == "account"
        rate_limit = _final.RateLimitError if final or spent else litellm.RateLimitError
        return rate_limit(message=message, llm_provider=provider, model=model)
    if kind == "privacy":
        return litellm.NotFoundError(message=message, model=model, llm_provider=provider)
    if kind == "credits":
        return litellm.BadRequestError(message=message, model=model, llm_provider=provider)
    if kind == "context":
        return litellm.ContextWindowExceededError(
            message=message, model=model, llm_provider=provider
        )
    if kind in ("rejected", "unsupported", "moderation", "too_large"):
        return litellm.BadRequestError(message=message, model=model, llm_provider=provider)
    if kind in ("slow", "stalled"):
        timeout = _final.Timeout if final else litellm.Timeout
        return timeout(message=message, model=model, llm_provider=provider)
    unavailable = _final.ServiceUnavailableError if final else litellm.ServiceUnavailableError
    return unavailable(message=message, llm_provider=provider, model=model, response=response(503))
