"""What freerouter refuses to send, and why: checks on a request before any model is asked.

A request OpenRouter would refuse from every model costs a daily free request per model asked
and cools each of them down for every other caller; one that reaches past the free model
freerouter picked (OpenRouter's own fallbacks, server tools, presets) could be billed. Each
check returns what is wrong in words a caller can act on, or None; the provider raises it as a
``ConfigurationError`` (litellm's ``BadRequestError``) before anything is sent. Values are
never repeated in a message about headers or keys: they may be secrets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from .config import TUNABLES

# Headers freerouter must set itself: the key (one per router, whose quota it counts), how the
# request is framed and answered, and hop-by-hop headers of the connection.
_OWN_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "content-type",
        "content-length",
        "content-encoding",
        "accept",
        "accept-encoding",
        "host",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Servers commonly refuse a request whose headers pass 8 KiB (431), from every model alike.
MAX_HEADER_BYTES = 8192


def caller_headers(headers: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """The caller's headers to send upstream (litellm's ``extra_headers``), checked: a header
    aiohttp cannot send fails every model of the race as if OpenRouter were unreachable."""
    from .errors import ConfigurationError

    if not headers:
        return ()
    if not isinstance(headers, Mapping):
        raise ConfigurationError(
            f"extra_headers must map header names to strings, got {type(headers).__name__}"
        )
    checked: list[tuple[str, str]] = []
    for name, value in headers.items():
        if value is None:  # the OpenAI client's way of leaving a header out
            continue
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ConfigurationError(f"extra_headers: {name!r} is not an HTTP header name")
        if name.lower() in _OWN_HEADERS:
            why = (
                "the key goes in api_key or OPENROUTER_API_KEY"
                if name.lower() == "authorization"
                else "it frames the request and its connection"
            )
            raise ConfigurationError(
                f"extra_headers cannot set {name}: freerouter sets it itself ({why})"
            )
        if not isinstance(value, str):
            raise ConfigurationError(
                f"extra_headers[{name!r}] must be a string, got {type(value).__name__}"
            )
        if any(not (ch.isascii() and ch.isprintable()) for ch in value):
            raise ConfigurationError(
                f"extra_headers[{name!r}] holds a line break, control or non-ASCII character"
            )
        checked.append((name, value))
    size = sum(len(name) + len(value) + 4 for name, value in checked)
    if size > MAX_HEADER_BYTES:
        raise ConfigurationError(
            f"extra_headers take {size} bytes; freerouter sends at most {MAX_HEADER_BYTES}"
            " (servers refuse larger headers, from every model alike)"
        )
    return tuple(checked)


def extra_body_problem(extra: Any) -> str | None:
    """What is wrong with litellm's ``extra_body`` (merged into the upstream body), if anything."""
    if extra is None:
        return None
    if not isinstance(extra, Mapping):
        return (
            f"extra_body must be a dict of fields for OpenRouter's request, got"
            f" {type(extra).__name__}"
        )
    if "messages" in extra:
        return "extra_body cannot hold messages: pass them as messages"
    settings = [name for name in TUNABLES if name in extra]
    if settings:
        return (
            f"{', '.join(settings)} in extra_body would go to OpenRouter, not to freerouter:"
            " pass it as a keyword argument (or in litellm_params)"
        )
    return None


# OpenRouter request keys that could reach past the free model freerouter picked: `models`
# (with `route`) are fallbacks tried on any error, and may be paid; web search plugins are
# billed per result; a preset can hold fallback models and server tools.
_PAID_PATHS = ("models", "route", "plugins", "web_search_options", "preset")

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TOOL_CHOICES = frozenset({"none", "auto", "required"})
# OpenRouter's documented ranges; a value outside them is refused by every provider alike.
_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
    "repetition_penalty": (0.0, 2.0),
    "min_p": (0.0, 1.0),
    "top_a": (0.0, 1.0),
}


def misspelt_setting(body: Mapping[str, Any]) -> str | None:
    """A body key that looks like a mistyped freerouter setting (``racewidth=2``): sent, it
    would go to OpenRouter, which ignores what it does not know, and the setting would silently
    keep its default."""
    import difflib

    for name in body:
        if name in TUNABLES or not isinstance(name, str):
            continue
        close = difflib.get_close_matches(name, TUNABLES, n=1, cutoff=0.8)
        if close:
            return f"{name} is not a parameter freerouter knows: did you mean {close[0]}?"
    return None


def body_problem(body: Mapping[str, Any]) -> str | None:
    """What is wrong with an upstream request body freerouter must not send as it is, if
    anything (checked in the order below; the first problem is the answer)."""
    try:
        found = _non_finite(body)
    except RecursionError:
        return "the request is nested too deeply to be sent as JSON"
    checks = (misspelt_setting, _paid, _messages, _tools, _numbers, _response_format, _encodable)
    for check in checks:
        if found is not None:
            return found
        found = check(body)
    return found


def _paid(body: Mapping[str, Any]) -> str | None:
    paid = [key for key in _PAID_PATHS if body.get(key) is not None]
    if paid:
        return (
            f"{', '.join(paid)} cannot be sent through freerouter: OpenRouter would"
            " reach past the free model it picked (fallback models may be paid, web search"
            " is billed); freerouter itself falls back among free models"
        )
    return None


def _messages(body: Mapping[str, Any]) -> str | None:
    for i, message in enumerate(body.get("messages") or ()):
        if not isinstance(message, Mapping):
            return f"messages[{i}] must be a message object, got {type(message).__name__}"
        role = message.get("role")
        if role not in _ROLES:
            return f"messages[{i}].role must be one of {', '.join(sorted(_ROLES))}, got {role!r}"
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                    return f"messages[{i}].content[{j}] must be a part object with a type"
        elif content is not None and not isinstance(content, str):
            return (
                f"messages[{i}].content must be text or a list of parts, got"
                f" {type(content).__name__}"
            )
    return None


def _tools(body: Mapping[str, Any]) -> str | None:
    tools = body.get("tools")
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            return f"tools must be a list of function tools, got {type(tools).__name__}"
        for i, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, Mapping) else None
            if kind != "function":
                server = isinstance(kind, str) and kind.startswith("openrouter:")
                return (
                    f"tools[{i}] is of type {kind!r}: only function tools can be sent through"
                    " freerouter"
                    + (
                        " (OpenRouter's server tools call other models or are billed)"
                        if server
                        else ""
                    )
                )
            function = tool.get("function")
            name = function.get("name") if isinstance(function, Mapping) else None
            if not isinstance(name, str) or not name:
                return f"tools[{i}].function.name must be a non-empty string"
            names.add(name)
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            return f"tool_choice must be none, auto, required or a function, got {choice!r}"
        if choice == "required" and not names:
            return "tool_choice is required, but no tools were given"
        return None
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    if kind != "function":
        return f"tool_choice of type {kind!r} cannot be sent through freerouter"
    function = choice.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    if name not in names:
        return f"tool_choice names the function {name!r}, which is not among the tools"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(body: Mapping[str, Any]) -> str | None:
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        return f"n must be 1: freerouter returns one answer per request, got n={n!r}"
    if body.get("logprobs") or body.get("top_logprobs"):
        return "logprobs are not supported by freerouter: its answers never carry them"
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value) or not value >= 1 or value != int(value):
            return f"{name} must be a whole number of tokens, at least 1, got {value!r}"
    for name, (low, high) in _RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value) or not low <= value <= high:
            return f"{name} must be a number from {low:g} to {high:g}, got {value!r}"
    for name in ("seed", "top_k"):
        value = body.get(name)
        if value is not None and (not _is_number(value) or value != int(value)):
            return f"{name} must be a whole number, got {value!r}"
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        return f"stop must be a string or a list of strings, got {stop!r}"
    return None


def _response_format(body: Mapping[str, Any]) -> str | None:
    form = body.get("response_format")
    if form is None:
        return None
    kind = form.get("type") if isinstance(form, Mapping) else None
    if kind not in ("text", "json_object", "json_schema"):
        return f"response_format.type must be text, json_object or json_schema, got {kind!r}"
    if kind == "json_schema" and not isinstance(form.get("json_schema"), Mapping):
        return "response_format of type json_schema needs a json_schema object (with its schema)"
    return None


def _encodable(body: Mapping[str, Any]) -> str | None:
    from .race import encode_body

    try:
        encode_body(body)
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        return f"the request cannot be sent as JSON: {exc}"
    except RecursionError:
        return "the request is nested too deeply to be sent as JSON"
    return None


def _non_finite(value: Any, path: str = "") -> str | None:
    """What is wrong where a request body holds a NaN or an infinite number, if it does."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} must be a finite number, got {value}"
    if isinstance(value, Mapping):
        items: Any = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for where, inner in items:
        found = _non_finite(inner, where)
        if found is not None:
            return found
    return None
