"""Reading OpenRouter's server-sent events, and what each chunk means.

The decoder takes arbitrary byte slices (as the network delivers them) and returns the ``data``
payloads of complete events.  :func:`parse_data` turns one payload into a :class:`Delta`, the
only shape the rest of the package reads.  Neither ever raises on bad input: a line that is not
an event is skipped, and a payload that is not a chunk is reported as ``None``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DONE = "[DONE]"


class SSEDecoder:
    """Incremental SSE framing (WHATWG rules, as far as OpenRouter uses them)."""

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the data of every event completed by them."""
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[str] = []
        start = 0
        while True:
            # Lines are cut from one buffer by index: slicing the rest off after each line
            # would copy it once per line (quadratic in a large read of many small events).
            cut = buffer.find(b"\n", start)
            if cut < 0:
                break
            self._line(buffer[start:cut].rstrip(b"\r"), events)
            start = cut + 1
        self._buffer = buffer[start:]
        return events

    def flush(self) -> list[str]:
        """At end of stream: an unterminated last event still counts (servers forget the blank)."""
        events: list[str] = []
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r"), events)
            self._buffer = b""
        self._line(b"", events)
        return events

    def _line(self, raw: bytes, events: list[str]) -> None:
        if not raw:
            if self._data:
                events.append("\n".join(self._data))
                self._data = []
            return
        if raw.startswith(b":"):
            return  # keep-alive comment, e.g. ": OPENROUTER PROCESSING"
        name, _, value = raw.partition(b":")
        if name != b"data":
            return  # event:, id:, retry: and garbage carry nothing we use
        if value.startswith(b" "):
            value = value[1:]
        self._data.append(value.decode("utf-8", errors="replace"))


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Delta:
    """One chunk of a streamed answer, reduced to what routing and litellm need."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    error: dict[str, Any] | None = None

    @property
    def is_token(self) -> bool:
        """Proof that the model is generating: text, a tool call or reasoning."""
        return bool(self.content or self.tool_calls or self.reasoning)

    @property
    def is_answer(self) -> bool:
        """Part of the answer itself (reasoning alone is not)."""
        return bool(self.content or self.tool_calls)


def _usage(raw: Any) -> dict[str, int] | None:
    if not isinstance(raw, dict):
        return None
    out: dict[str, int] = {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out[key] = value
    if not out:
        return None
    out.setdefault("total_tokens", out.get("prompt_tokens", 0) + out.get("completion_tokens", 0))
    return out


def _tool_calls(raw: Any) -> list[ToolCallDelta]:
    calls: list[ToolCallDelta] = []
    if not isinstance(raw, list):
        return calls
    for position, item in enumerate(raw):
        if not isinstance(item, dict):
            continue
        index = item.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            index = position
        raw_function = item.get("function")
        function: dict[str, Any] = raw_function if isinstance(raw_function, dict) else {}
        name = function.get("name") if isinstance(function.get("name"), str) else None
        arguments = function.get("arguments")
        call_id = item.get("id") if isinstance(item.get("id"), str) else None
        args = arguments if isinstance(arguments, str) else ""
        if name or args or call_id:
            calls.append(ToolCallDelta(index=index, id=call_id, name=name or None, arguments=args))
    return calls


def parse_data(data: str) -> Delta | None:
    """One event's data as a Delta; ``None`` for [DONE] and anything that is not a chunk."""
    if data.strip() == DONE:
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    delta = Delta(usage=_usage(obj.get("usage")))
    error = obj.get("error")
    if isinstance(error, dict):
        delta.error = error
    elif error is not None:
        delta.error = {"message": str(error)}
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        inner: Any = choice.get("delta")
        if not isinstance(inner, dict):
            message = choice.get("message")
            inner = message if isinstance(message, dict) else {}
        content = inner.get("content")
        if isinstance(content, str):
            delta.content = content
        reasoning = inner.get("reasoning")
        if isinstance(reasoning, str):
            delta.reasoning = reasoning
        delta.tool_calls = _tool_calls(inner.get("tool_calls"))
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            delta.finish_reason = finish
    if delta.error is None and delta.finish_reason == "error":
        delta.error = {"message": "the model ended its answer with an error", "code": 502}
    return delta


def is_done(data: str) -> bool:
    return data.strip() == DONE
