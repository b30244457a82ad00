"""What a request needs from a model, and which models can give it."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .catalog import FreeModel
from .errors import ConfigurationError, NoCapableModel

# A deliberately generous estimate: about 3.5 characters per token for English and code, so a
# prompt is never reported as fitting when it does not.
CHARS_PER_TOKEN = 3.5


@dataclass(frozen=True, slots=True)
class Requirements:
    tools: bool = False
    images: bool = False
    audio: bool = False
    files: bool = False
    structured_output: bool = False
    json_schema: bool = False  # structured output to a schema, not only JSON mode
    prompt_tokens: int = 0
    max_tokens: int | None = None

    def unmet_by(self, model: FreeModel) -> str | None:
        """Why ``model`` cannot serve this request, or None when it can.

        Checked in this order, the first unmet need is the answer: tool use (``tools`` among the
        model's supported parameters), image input (``image`` among its input modalities),
        audio input (``audio`` among them), file input (``file`` among them), structured
        output (``structured_outputs`` supported for a JSON schema; it or ``response_format``
        for JSON mode), a context window holding the prompt plus the answer's room, and an
        output limit holding the answer's room. A model whose supported parameters are unknown
        (an empty list) is given the benefit of the doubt for tools and structured output; an
        unknown context length or output limit rules nothing out.
        """
        params = model.supported_parameters
        if self.tools and params and "tools" not in params:
            return "tool use"
        if self.images and "image" not in model.input_modalities:
            return "image input"
        if self.audio and "audio" not in model.input_modalities:
            return "audio input"
        if self.files and "file" not in model.input_modalities:
            # For a model that cannot read a file itself OpenRouter parses it, and the parser
            # it picks may be billed (its OCR engine): only models that read files natively.
            return "file input"
        if self.structured_output and params:
            offered = {"structured_outputs"} if self.json_schema else _JSON_MODE
            if not offered & params:
                return "structured output"
        if model.context_length:
            needed = self.prompt_tokens + (self.max_tokens or 0)
            if needed > model.context_length:
                return f"a context window of {needed} tokens"
        limit = model.max_completion_tokens
        if self.max_tokens and limit and self.max_tokens > limit:
            return f"{self.max_tokens} output tokens"
        return None


_JSON_MODE = frozenset({"structured_outputs", "response_format"})


def _has_part(content: Any, types: tuple[str, ...]) -> bool:
    if not isinstance(content, list):
        return False
    return any(isinstance(part, Mapping) and part.get("type") in types for part in content)


def _has_image(content: Any) -> bool:
    return _has_part(content, ("image_url", "input_image", "image"))


def _text_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(
            _text_size(part.get("text")) if isinstance(part, Mapping) else _text_size(part)
            for part in value
        )
    if value is None:
        return 0
    return len(json.dumps(value, default=str))


def estimate_tokens(messages: Sequence[Any], tools: Any = None) -> int:
    """The prompt's size in tokens, at :data:`CHARS_PER_TOKEN` characters a token (rounded down).

    Counted: 8 characters for each message, its content's text (a string as it is; of a list,
    each part's ``text``, images counting nothing; anything else as its JSON), its
    ``tool_calls`` as JSON, and the tool definitions as JSON.
    """
    chars = 0
    for message in messages:
        if isinstance(message, Mapping):
            chars += _text_size(message.get("content")) + 8
            tool_calls = message.get("tool_calls")
            if tool_calls:  # their names and arguments are prompt text too
                chars += len(json.dumps(tool_calls, default=str))
    if tools:
        chars += len(json.dumps(tools, default=str))
    return int(chars / CHARS_PER_TOKEN)


def _answer_room(body: Mapping[str, Any]) -> int | None:
    """The tokens the answer may take: ``max_tokens``, else ``max_completion_tokens``.

    Only a positive number counts (rounded up); a missing, zero, negative, boolean or string
    value reserves nothing and is left for the upstream to judge. A non-finite number cannot
    be sent as JSON at all (``1e999`` in a JSON body reads as infinity): a bad request.
    """
    room: int | None = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigurationError(f"{name} must be a finite number of tokens, got {value}")
        if room is None and value > 0:
            room = math.ceil(value)
    return room


def requirements_of(body: Mapping[str, Any]) -> Requirements:
    """What ``body``, a chat-completions request, needs from a model.

    - tool use: ``tools`` (or the older ``functions``) present and not empty;
    - image input: an ``image_url``, ``input_image`` or ``image`` part in a message's content;
    - audio input: an ``input_audio`` part;
    - file input (a PDF): a ``file`` or ``input_file`` part;
    - structured output: a ``response_format`` of type ``json_object`` or ``json_schema``
      (``text`` needs nothing);
    - the prompt's size, estimated generously by :func:`estimate_tokens`;
    - the answer's room (see :func:`_answer_room`).

    A body of any other shape is read as far as it makes sense and never raises, except for a
    non-finite ``max_tokens`` or ``max_completion_tokens``: :class:`ConfigurationError`, which
    reaches the caller as litellm's ``BadRequestError`` before any model is asked.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = []
    response_format = body.get("response_format")
    form = response_format.get("type") if isinstance(response_format, Mapping) else None
    contents = [m.get("content") for m in messages if isinstance(m, Mapping)]
    return Requirements(
        tools=bool(body.get("tools")) or bool(body.get("functions")),
        images=any(_has_image(content) for content in contents),
        audio=any(_has_part(content, ("input_audio",)) for content in contents),
        files=any(_has_part(content, ("file", "input_file")) for content in contents),
        structured_output=form in ("json_schema", "json_object"),
        json_schema=form == "json_schema",
        prompt_tokens=estimate_tokens(messages, body.get("tools")),
        max_tokens=_answer_room(body),
    )


def capable(models: Iterable[FreeModel], needs: Requirements) -> list[FreeModel]:
    """The models that can serve ``needs``; raises naming what nothing satisfies."""
    models = list(models)
    ok = [m for m in models if needs.unmet_by(m) is None]
    if ok or not models:
        return ok
    reasons: dict[str, int] = {}
    for model in models:
        reason = needs.unmet_by(model) or ""
        reasons[reason] = reasons.get(reason, 0) + 1
    worst = ", ".join(f"{reason} ({count} models lack it)" for reason, count in reasons.items())
    raise NoCapableModel(
        f"no free model can serve this request: it needs {worst}",
        context_only=all(reason.startswith("a context window") for reason in reasons),
    )
