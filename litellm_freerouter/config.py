"""Settings and where they come from.

Every tunable has three sources, strongest first: a key in LiteLLM's ``litellm_params`` (or a
keyword argument to ``litellm.completion``), the ``FREEROUTER_*`` environment variable, and the
default.  This is the only module that reads the environment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigurationError, MalformedKeyError, MissingKeyError

DEFAULT_API_BASE = "https://openrouter.ai/api/v1"
APP_URL = "https://github.com/litellm-freerouter/litellm-freerouter"
APP_TITLE = "litellm-freerouter"
ENV_PREFIX = "FREEROUTER_"


def _default_state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("litellm-freerouter", appauthor=False))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything one request needs to know; validated on construction."""

    api_key: str | None = field(default=None, repr=False)
    api_base: str = DEFAULT_API_BASE
    race_width: int = 3
    first_token_timeout: float | None = 30.0
    idle_timeout: float | None = 30.0
    refresh_interval: float = 3600.0
    cooldown_rate_limit: float = 90.0
    cooldown_slow: float = 15.0
    cooldown_rejected: float = 90.0
    # When every model that could serve a request is cooling down (or has failed it) and one
    # returns within this many seconds, the request waits for it instead of failing (0: never).
    wait_for_model: float = 30.0
    # 0 starts every contender at once; "auto" hedges on each model's measured first-token time.
    hedge_delay: float | str = 0.0
    # Below this many remaining daily free requests, the race narrows to one contender.
    quota_reserve: int = 5
    # OpenRouter's account-wide limit on free requests a minute: the race narrows so that every
    # process sharing the state stays under it together (0: no pacing).
    requests_per_minute: int = 20
    state_dir: Path | None = None
    redis_url: str | None = field(default=None, repr=False)
    # Probability that a never-measured model is moved into the batch to get measured.
    explore: float = 0.1
    # How many times an answer whose model fails after its first token is carried on by another
    # model (0: the failure ends the answer with an error).
    resume: int = 2
    # Upstream requests one request may send at most, failed contenders replaced included
    # (never fewer than race_width): a request every model fails stops there, not after
    # spending a day's quota on the whole catalogue.
    max_attempts: int = 6
    # The caller's own HTTP headers for OpenRouter (litellm's ``extra_headers``), checked by
    # the provider: sent with every upstream request, over freerouter's attribution headers.
    extra_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.race_width < 1:
            raise ConfigurationError(
                f"race_width must be at least 1, got {self.race_width}", setting="race_width"
            )
        for name in ("first_token_timeout", "idle_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds or none", setting=name
                )
        if not (self.refresh_interval > 0 and math.isfinite(self.refresh_interval)):
            raise ConfigurationError(
                "refresh_interval must be a positive number of seconds (how often the"
                " free-model list is fetched again)",
                setting="refresh_interval",
            )
        for name in (
            "cooldown_rate_limit",
            "cooldown_slow",
            "cooldown_rejected",
            "wait_for_model",
        ):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigurationError(
                    f"{name} must be a non-negative number of seconds", setting=name
                )
        if isinstance(self.hedge_delay, str):
            if self.hedge_delay != "auto":
                raise ConfigurationError(
                    "hedge_delay must be a number of seconds or 'auto'", setting="hedge_delay"
                )
        elif not (self.hedge_delay >= 0 and math.isfinite(self.hedge_delay)):
            raise ConfigurationError(
                "hedge_delay must be a non-negative number or 'auto'", setting="hedge_delay"
            )
        if self.quota_reserve < 0:
            raise ConfigurationError("quota_reserve must not be negative", setting="quota_reserve")
        if self.max_attempts < 1:
            raise ConfigurationError(
                f"max_attempts must be at least 1, got {self.max_attempts}", setting="max_attempts"
            )
        if self.resume < 0:
            raise ConfigurationError("resume must not be negative", setting="resume")
        if self.requests_per_minute < 0:
            raise ConfigurationError(
                "requests_per_minute must not be negative", setting="requests_per_minute"
            )
        if not 0 <= self.explore <= 1:
            raise ConfigurationError("explore must be between 0 and 1", setting="explore")
        if not isinstance(self.api_key, (str, type(None))):
            raise ConfigurationError(f"api_key must be a string, got {type(self.api_key).__name__}")
        wrong = api_base_problem(self.api_base)
        if wrong is not None:
            raise ConfigurationError(wrong)

    @property
    def base(self) -> str:
        return self.api_base.rstrip("/")

    @property
    def key_id(self) -> str:
        """A stable, non-reversible name for the key, for keying account state."""
        if not self.api_key:
            return "anonymous"
        return hashlib.sha256(self.api_key.encode(errors="surrogatepass")).hexdigest()[:16]

    def require_key(self) -> str:
        if not self.api_key:
            raise MissingKeyError(
                "No OpenRouter API key: set OPENROUTER_API_KEY, or pass api_key=...; create"
                " one for free at https://openrouter.ai/keys"
            )
        if _blank_or_control(self.api_key):
            # Never sent: it could not go into a header, and every model would seem unreachable.
            raise MalformedKeyError(
                "The OpenRouter API key has a space or control character inside it (pasted with"
                " another line?): check OPENROUTER_API_KEY or api_key=..."
            )
        if not self.api_key.isascii():
            # OpenRouter's keys are ASCII: sent, it would be refused by every model at once.
            raise MalformedKeyError(
                "The OpenRouter API key has a character outside ASCII inside it (a typographic"
                " quote or dash, pasted from a document?): check OPENROUTER_API_KEY or"
                " api_key=..."
            )
        return self.api_key

    def resolved_state_dir(self) -> Path:
        return self.state_dir if self.state_dir is not None else _default_state_dir()


TUNABLES: tuple[str, ...] = tuple(
    f.name
    for f in dataclasses.fields(Settings)
    if f.name not in ("api_key", "api_base", "extra_headers")
)


def _convert(name: str, raw: Any) -> Any:
    """Turn a string or YAML value into the field's type, with an error naming the setting."""
    try:
        if name in ("race_width", "quota_reserve", "resume", "requests_per_minute", "max_attempts"):
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if name in ("first_token_timeout", "idle_timeout"):
            if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "0")):
                return None
            value = float(raw)
            return None if value == 0 else value
        if name == "hedge_delay":
            if isinstance(raw, str) and raw.strip().lower() == "auto":
                return "auto"
            return float(raw)
        if name == "state_dir":
            return None if raw in (None, "") else Path(str(raw)).expanduser()
        if name == "redis_url":
            return None if raw in (None, "") else str(raw)
        return float(raw)
    except (TypeError, ValueError):
        raise ConfigurationError(f"invalid value {raw!r} for {name}", setting=name) from None


def _litellm_param(name: str) -> str:
    return f"{name} in litellm_params or the call's arguments"


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    api_key: str | None = None,
    api_base: str | None = None,
    environ: Mapping[str, str] | None = None,
    override_source: Callable[[str], str] = _litellm_param,
) -> Settings:
    """Settings from explicit arguments, ``overrides`` (litellm_params), then the environment.

    A bad value is a :class:`ConfigurationError` that says where it was set:
    ``override_source(name)`` for an override, else the environment variable.
    """
    env = os.environ if environ is None else environ
    overrides = overrides or {}
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    try:
        for name in TUNABLES:
            if overrides.get(name) is not None:
                origin[name] = override_source(name)
                values[name] = _convert(name, overrides[name])
            elif (raw := env.get(ENV_PREFIX + name.upper())) not in (None, ""):
                origin[name] = ENV_PREFIX + name.upper()
                values[name] = _convert(name, raw)
        settings = _settings(values, api_key, api_base, env)
    except ConfigurationError as exc:
        where = origin.get(exc.setting or "")
        if where is None:
            raise
        raise ConfigurationError(f"{exc} (set by {where})", setting=exc.setting) from None
    return settings


def _settings(
    values: dict[str, Any], api_key: str | None, api_base: str | None, env: Mapping[str, str]
) -> Settings:
    # Blanks around a key or URL (a newline from a secret file, a pasted space) are not part of
    # it; a key sent with them would fail as if every model were unreachable.
    values["api_key"] = _stripped(api_key) or _stripped(env.get("OPENROUTER_API_KEY")) or None
    values["api_base"] = (
        _stripped(api_base) or _stripped(env.get("OPENROUTER_API_BASE")) or DEFAULT_API_BASE
    )
    return Settings(**values)


def api_base_problem(url: Any) -> str | None:
    """What is wrong with ``url`` as OpenRouter's API root (where /models and
    /chat/completions are found), if anything; a password in it is never repeated."""
    from urllib.parse import urlsplit

    if not isinstance(url, str):
        return f"api_base must be a URL, got {type(url).__name__}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        parts = None
    if parts is not None and (parts.username is not None or parts.password is not None):
        return (
            "api_base must not hold a user name or password: the key goes in api_key or"
            " OPENROUTER_API_KEY"
        )
    shown = repr(url)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return f"api_base must be an http(s) URL, like {DEFAULT_API_BASE}, got {shown}"
    if _blank_or_control(url):
        return f"api_base holds a blank or control character: {shown}"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return f"api_base must not have a query or fragment: {shown}"
    if parts.path.rstrip("/").endswith(("/chat/completions", "/models")):
        return (
            f"api_base is the API root, like {DEFAULT_API_BASE}, not an endpoint under it:"
            f" got {shown}"
        )
    return None


def _blank_or_control(text: str) -> bool:
    """Whether ``text`` holds a blank or a control character (a key or URL never does: one
    pasted with another line, or a space, cannot go into a request line or header)."""
    return any(ch.isspace() or not ch.isprintable() for ch in text)


def _stripped(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


def autoload_disabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get("FREEROUTER_DISABLE_AUTOLOAD", "").strip().lower() in ("1", "true", "yes", "on")
