"""Error classification (REFERENCE.md's table), messages, and the mapping to litellm's classes."""

from __future__ import annotations

import re
import time

import litellm
import pytest

from litellm_freerouter.errors import (
    AllModelsFailed,
    Failure,
    MissingKeyError,
    NoCapableModel,
    NoModelAvailable,
    StreamStalled,
    UpstreamError,
    account_message,
    classify,
    classify_error_chunk,
    next_utc_midnight,
    to_litellm,
)


def body(message: str, **metadata: object) -> dict[str, object]:
    error: dict[str, object] = {"code": 0, "message": message}
    if metadata:
        error["metadata"] = metadata
    return {"error": error}


@pytest.mark.parametrize(
    ("status", "payload", "kind", "scope"),
    [
        (
            429,
            body(
                "Rate limit exceeded: free-models-per-day. Add 10 credits",
                headers={"X-RateLimit-Reset": f"{next_utc_midnight() * 1000:.0f}"},
            ),
            "daily_quota",
            "account",
        ),
        (429, body("Rate limit exceeded: free-models-per-min."), "minute_limit", "account"),
        (
            429,
            body("Provider returned error", raw="x/y:free is temporarily rate-limited upstream"),
            "rate_limited",
            "model",
        ),
        (429, body("limit_rpm/x/y: high demand, 8 requests per minute"), "rate_limited", "model"),
        (
            400,
            body(
                "This endpoint's maximum context length is 8192 tokens. However, you requested"
                " about 9000 tokens"
            ),
            "context",
            "request",
        ),
        (404, body("No endpoints found that support tool use"), "unsupported", "request"),
        (404, body("No endpoints found that support image input"), "unsupported", "request"),
        (
            404,
            body("No endpoints found matching your data policy (Free model publication)"),
            "privacy",
            "account",
        ),
        (404, body("No endpoints found for x/y:free."), "gone", "model"),
        (401, body("No auth credentials found"), "auth", "account"),
        (402, body("Insufficient credits"), "credits", "account"),
        (403, body("flagged", reasons=["violence"]), "moderation", "request"),
        (408, body("Timeout"), "server", "model"),
        (502, body("Bad gateway"), "server", "model"),
        (503, "not json at all", "server", "model"),
        (422, body("Unprocessable"), "rejected", "model"),
        (400, body("Invalid parameter"), "rejected", "model"),
    ],
)
def test_classification_by_scope(status: int, payload: object, kind: str, scope: str) -> None:
    """Every row of the error table gets its kind and scope."""
    failure = classify(status, payload, model="x/y:free")
    assert (failure.kind, failure.scope) == (kind, scope)


def test_daily_reset_is_read_from_epoch_milliseconds() -> None:
    """X-RateLimit-Reset in ms becomes an epoch-seconds reset time and an HH:MM UTC message."""
    reset = next_utc_midnight() + 14 * 3600 + 13 * 60  # tomorrow, 14:13 UTC
    failure = classify(
        429, body("free-models-per-day", headers={"X-RateLimit-Reset": f"{reset * 1000:.0f}"})
    )
    assert failure.reset_at == reset
    message = account_message(failure)
    assert "free daily quota used; resets at 14:13 UTC" in message
    assert "10 USD" in message


def test_retry_after_takes_the_longest_hint() -> None:
    """Retry-After, metadata.retry_after_seconds and availability.retry_after: the longest wins."""
    payload = {
        "error": {
            "message": "busy",
            "metadata": {"retry_after_seconds": 40},
            "availability": {"code": "x", "retryable": True, "retry_after": 75},
        }
    }
    failure = classify(429, payload, {"Retry-After": "30"})
    assert failure.retry_after == 75
    assert classify(503, body("x"), {"retry-after": "12"}).retry_after == 12


@pytest.mark.parametrize("raw", ["inf", "Infinity", "nan", "-5", "1e999", "soon", ""])
def test_a_wait_hint_that_is_no_number_of_seconds_is_ignored(raw: str) -> None:
    """Retry-After: inf (or nan, a negative, an overflow) is no hint: the usual cooldown holds."""
    assert classify(429, body("busy"), {"Retry-After": raw}).retry_after is None
    assert (
        classify(
            429,
            body(
                "busy",
                retry_after_seconds=float(raw or 0) if raw in ("inf", "nan", "1e999") else raw,
            ),
        ).retry_after
        is None
    )
    quota = classify(429, body("free-models-per-day", headers={"X-RateLimit-Reset": raw}))
    assert quota.reset_at == next_utc_midnight()  # as when no reset is given


def test_absurd_waits_are_capped() -> None:
    """A wait hint is taken for a day at most, and a reset further than two days ahead, or
    already past, is not believed (the next UTC midnight is taken, as when none is given)."""
    assert classify(429, body("busy"), {"Retry-After": "1e12"}).retry_after == 86400
    far = str(int((time.time() + 30 * 86400) * 1000))
    past = str(int((time.time() - 60) * 1000))
    for reset in (far, past, "60"):
        assert (
            classify(
                429, body("free-models-per-day", headers={"X-RateLimit-Reset": reset})
            ).reset_at
            == next_utc_midnight()
        )


def test_error_chunk_code_as_number_or_string() -> None:
    """An in-stream error's code may be a number or a string; both classify."""
    assert (
        classify_error_chunk({"code": 429, "message": "Provider returned error"}, model="m").kind
        == "rate_limited"
    )
    assert classify_error_chunk({"code": "502", "message": "boom"}, model="m").kind == "server"
    assert (
        classify_error_chunk({"code": "server_error", "message": "boom"}, model="m").kind
        == "server"
    )


def test_privacy_message_says_which_setting() -> None:
    """The data-policy stop names the OpenRouter privacy setting to change."""
    failure = classify(404, body("No endpoints found matching your data policy"))
    assert "openrouter.ai/settings/privacy" in account_message(failure)
    assert "Free model publication" in account_message(failure)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (MissingKeyError("set OPENROUTER_API_KEY"), litellm.AuthenticationError),
        (NoCapableModel("needs tools"), litellm.BadRequestError),
        (NoModelAvailable("all cooling"), litellm.ServiceUnavailableError),
        (StreamStalled(Failure("stalled", "model", "quiet", "m")), litellm.Timeout),
        (UpstreamError(Failure("auth", "account", "bad key")), litellm.AuthenticationError),
        (UpstreamError(Failure("daily_quota", "account", "used")), litellm.RateLimitError),
        (UpstreamError(Failure("privacy", "account", "policy")), litellm.NotFoundError),
        (UpstreamError(Failure("credits", "account", "pay")), litellm.BadRequestError),
        (
            AllModelsFailed([Failure("context", "request", "too long", "m")]),
            litellm.ContextWindowExceededError,
        ),
        (AllModelsFailed([Failure("rate_limited", "model", "busy", "m")]), litellm.RateLimitError),
        (AllModelsFailed([Failure("slow", "model", "slow", "m")]), litellm.Timeout),
        (
            AllModelsFailed(
                [
                    Failure("server", "model", "down", "m"),
                    Failure("rate_limited", "model", "busy", "n"),
                ]
            ),
            litellm.ServiceUnavailableError,
        ),
    ],
)
def test_mapping_to_litellm(error: Exception, expected: type[Exception]) -> None:
    """Each of our errors becomes the litellm class that makes callers' retries right."""
    mapped = to_litellm(error)
    assert isinstance(mapped, expected)
    assert str(error) in str(mapped)


def test_all_failed_summarises_each_model() -> None:
    """The all-failed message lists the models and why each failed."""
    error = AllModelsFailed(
        [
            Failure("server", "model", "down", "a:free", 502),
            Failure("slow", "model", "no token", "b:free"),
        ]
    )
    assert "a:free: 502 server (down)" in str(error)
    assert "b:free: slow (no token)" in str(error)


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        (
            "Rate limit exceeded: limit_rpm/google/m:free/abc. High demand for google/m:free on"
            " OpenRouter - limited to 1 requests per minute. Please retry shortly.",
            1,
        ),
        ("limit_rpm/x/y: high demand, 8 requests per minute", 8),
        ("Provider returned error", None),
    ],
)
def test_a_models_own_per_minute_limit_is_read(text: str, limit: int | None) -> None:
    """A model's 429 that states its per-minute limit carries it; other 429s do not."""
    failure = classify(429, body(text), model="m")
    assert (failure.kind, failure.scope, failure.limit_rpm) == ("rate_limited", "model", limit)


@pytest.mark.parametrize("kind", ["auth", "credits", "daily_quota", "minute_limit", "privacy"])
def test_a_link_in_an_error_is_never_followed_by_a_bracket(kind: str) -> None:
    """aider offers to open each URL in an error, trimming '.', ',' and quotes but not ')':
    a link just before a closing bracket would open the wrong page."""
    from litellm_freerouter.config import Settings

    messages = [account_message(Failure(kind, "account", "x"))]
    with pytest.raises(MissingKeyError) as missing:
        Settings().require_key()
    messages.append(str(missing.value))
    for message in messages:
        assert "https://" in message or kind == "minute_limit"
        assert not re.search(r"https://\S*\)", message), message
