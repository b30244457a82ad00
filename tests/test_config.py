"""Settings: defaults, sources and their order, validation, and a key that never shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from litellm_freerouter.config import DEFAULT_API_BASE, TUNABLES, Settings, load_settings
from litellm_freerouter.errors import ConfigurationError, MissingKeyError


def test_defaults_match_the_documented_contract() -> None:
    """The defaults are the ones the README and the brief promise."""
    s = load_settings(environ={})
    assert (s.race_width, s.first_token_timeout, s.idle_timeout, s.refresh_interval) == (
        3,
        30,
        30,
        3600,
    )
    assert (s.cooldown_rate_limit, s.cooldown_slow, s.cooldown_rejected) == (90, 15, 90)
    assert s.hedge_delay == 0 and s.api_base == DEFAULT_API_BASE and s.api_key is None
    assert s.wait_for_model == 30


def test_every_tunable_reads_its_environment_variable() -> None:
    """Each tunable has a FREEROUTER_* variable of the same name."""
    env = {
        "FREEROUTER_RACE_WIDTH": "2",
        "FREEROUTER_FIRST_TOKEN_TIMEOUT": "5",
        "FREEROUTER_IDLE_TIMEOUT": "7",
        "FREEROUTER_REFRESH_INTERVAL": "60",
        "FREEROUTER_COOLDOWN_RATE_LIMIT": "11",
        "FREEROUTER_COOLDOWN_SLOW": "12",
        "FREEROUTER_COOLDOWN_REJECTED": "13",
        "FREEROUTER_HEDGE_DELAY": "auto",
        "FREEROUTER_QUOTA_RESERVE": "9",
        "FREEROUTER_STATE_DIR": "/tmp/x",
        "FREEROUTER_REDIS_URL": "redis://127.0.0.1:1/0",
        "FREEROUTER_EXPLORE": "0.5",
        "FREEROUTER_RESUME": "0",
        "FREEROUTER_REQUESTS_PER_MINUTE": "0",
        "FREEROUTER_WAIT_FOR_MODEL": "4.5",
        "FREEROUTER_MAX_ATTEMPTS": "8",
    }
    s = load_settings(environ=env)
    assert (s.race_width, s.first_token_timeout, s.idle_timeout, s.refresh_interval) == (
        2,
        5,
        7,
        60,
    )
    assert (s.cooldown_rate_limit, s.cooldown_slow, s.cooldown_rejected) == (11, 12, 13)
    assert (s.hedge_delay, s.quota_reserve, s.state_dir, s.explore) == (
        "auto",
        9,
        Path("/tmp/x"),
        0.5,
    )
    assert s.redis_url == "redis://127.0.0.1:1/0"
    assert s.resume == 0 and s.requests_per_minute == 0 and s.wait_for_model == 4.5
    assert s.max_attempts == 8
    assert {f"FREEROUTER_{t.upper()}" for t in TUNABLES} == set(env)


def test_precedence_arguments_then_params_then_environment() -> None:
    """api_key/api_base arguments beat OPENROUTER_*; litellm_params beat FREEROUTER_*."""
    env = {
        "OPENROUTER_API_KEY": "env-key",
        "OPENROUTER_API_BASE": "http://env/api/v1",
        "FREEROUTER_RACE_WIDTH": "5",
    }
    s = load_settings(
        {"race_width": 2}, api_key="arg-key", api_base="http://arg/api/v1", environ=env
    )
    assert (s.api_key, s.api_base, s.race_width) == ("arg-key", "http://arg/api/v1", 2)
    s = load_settings(environ=env)
    assert (s.api_key, s.api_base, s.race_width) == ("env-key", "http://env/api/v1", 5)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("race_width", "three", "invalid value 'three' for race_width"),
        ("race_width", 0, "race_width must be at least 1"),
        ("first_token_timeout", -1, "first_token_timeout must be a positive number"),
        ("hedge_delay", "sometimes", "invalid value 'sometimes' for hedge_delay"),
        ("cooldown_slow", "nan", "cooldown_slow must be a non-negative number"),
        ("explore", 2, "explore must be between 0 and 1"),
        ("wait_for_model", -1, "wait_for_model must be a non-negative number of seconds"),
        ("resume", -1, "resume must not be negative"),
        ("requests_per_minute", -5, "requests_per_minute must not be negative"),
        ("resume", "twice", "invalid value 'twice' for resume"),
        ("refresh_interval", 0, "refresh_interval must be a positive number of seconds"),
        ("max_attempts", 0, "max_attempts must be at least 1, got 0"),
    ],
)
def test_bad_values_name_the_setting_and_where_it_was_set(
    name: str, value: object, message: str
) -> None:
    """A wrong value is a ConfigurationError naming the setting and where it came from: the
    environment variable, or the litellm_params key / call argument."""
    variable = "FREEROUTER_" + name.upper()
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ={variable: str(value)})
    assert str(info.value).startswith(message), str(info.value)
    assert str(info.value).endswith(f"(set by {variable})")
    with pytest.raises(ConfigurationError) as info:
        load_settings({name: value}, environ={variable: "2"})
    assert str(info.value).startswith(message), str(info.value)
    assert variable not in str(info.value)
    assert str(info.value).endswith(f"(set by {name} in litellm_params or the call's arguments)")


def test_timeouts_can_be_switched_off() -> None:
    """'none' (or 0) means no limit for the two timeouts."""
    s = load_settings(
        environ={"FREEROUTER_FIRST_TOKEN_TIMEOUT": "none", "FREEROUTER_IDLE_TIMEOUT": "0"}
    )
    assert s.first_token_timeout is None and s.idle_timeout is None


def test_missing_key_names_the_variable_and_key_never_shows() -> None:
    """require_key names OPENROUTER_API_KEY; repr and key_id never reveal the key."""
    with pytest.raises(MissingKeyError, match="OPENROUTER_API_KEY"):
        Settings().require_key()
    s = Settings(api_key="sk-or-secret-value")
    assert "sk-or-secret" not in repr(s)
    assert "sk-or-secret" not in s.key_id and len(s.key_id) == 16


def test_blanks_around_the_key_and_endpoint_are_not_part_of_them() -> None:
    """A newline from a secret file or a pasted space around the key or URL is dropped, from
    arguments and the environment alike; blanks inside the key are refused at request time."""
    env = {"OPENROUTER_API_KEY": " sk-or-env\n", "OPENROUTER_API_BASE": "http://h/api/v1\n"}
    s = load_settings(environ=env)
    assert (s.api_key, s.api_base) == ("sk-or-env", "http://h/api/v1")
    assert s.key_id == Settings(api_key="sk-or-env").key_id
    s = load_settings(api_key="\tsk-or-arg ", api_base=" http://a/api/v1", environ=env)
    assert (s.api_key, s.api_base) == ("sk-or-arg", "http://a/api/v1")
    assert load_settings(api_key="  ", environ=env).api_key == "sk-or-env"
    assert load_settings(environ={"OPENROUTER_API_KEY": "\n"}).api_key is None
    for broken in ("sk-or-one\nsk-or-two", "sk-or one", "sk-or-\x00"):
        with pytest.raises(MissingKeyError, match="OPENROUTER_API_KEY") as info:
            Settings(api_key=broken).require_key()
        assert "sk-or" not in str(info.value)


def test_api_base_must_be_a_url() -> None:
    """A typo in the endpoint is caught with the value shown."""
    with pytest.raises(ConfigurationError, match="api_base must be an http"):
        load_settings(api_base="openrouter.ai/api/v1", environ={})


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://", "api_base must be an http.s. URL"),
        ("ftp://openrouter.ai/api/v1", "api_base must be an http.s. URL"),
        ("http://exa mple.com/api/v1", "holds a blank or control character"),
        ("http://a/api/v1?x=1", "must not have a query or fragment"),
        ("http://a/api/v1#top", "must not have a query or fragment"),
        ("https://openrouter.ai/api/v1/chat/completions", "the API root, like https://openr"),
        ("https://openrouter.ai/api/v1/models/", "the API root"),
        ("http://a:port/api/v1", "api_base must be an http.s. URL"),
    ],
)
def test_an_api_base_that_cannot_be_the_api_root_is_refused_up_front(url: str, says: str) -> None:
    """Sent, each of these failed as an outage (every model cooled, a retryable 503); now a
    ConfigurationError (a BadRequestError to the caller) names what is wrong."""
    with pytest.raises(ConfigurationError, match=says):
        load_settings(api_base=url, environ={})


def test_an_api_base_with_a_password_is_refused_without_repeating_it() -> None:
    """aiohttp cannot send a URL's credentials with the Authorization header (every request
    failed locally, as a network error), and errors would print the password."""
    for source in ({"api_base": "http://user:hunter2@a/api/v1"}, {}):
        env = {} if source else {"OPENROUTER_API_BASE": "http://user:hunter2@a/api/v1"}
        with pytest.raises(ConfigurationError, match="must not hold a user name or password"):
            load_settings(environ=env, **source)
        try:
            load_settings(environ=env, **source)
        except ConfigurationError as exc:
            assert "hunter2" not in str(exc)


def test_a_key_that_is_not_ascii_or_not_a_string_is_refused_before_sending() -> None:
    """A key with a typographic dash would be refused by every contender at once; one that is
    not a string failed with an AttributeError."""
    with pytest.raises(MissingKeyError, match="outside ASCII") as info:
        Settings(api_key="sk-or-v1-abc\u2013def").require_key()
    assert "abc" not in str(info.value)
    with pytest.raises(ConfigurationError, match="api_key must be a string, got int"):
        load_settings(api_key=5, environ={})  # type: ignore[arg-type]
