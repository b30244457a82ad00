"""What a request needs from a model, and which models can give it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .catalog import FreeModel
from .errors import NoCapableModel

# A deliberately generous estimate: about 3.5 characters per token for English and code, so a
# prompt is never reported as fitting when it does not.
CHARS_PER_TOKEN = 3.5


@dataclass(frozen=True, slots=True)
class Requirements:
    tools: bool = False
    images: bool = False
    structured_output: bool = False
    prompt_tokens: int = 0
    max_tokens: int | None = None

    def unmet_by(self, model: FreeModel) -> str | None:
        """Why ``model`` cannot serve this request, or None when it can."""
        params = model.supported_parameters
        if self.tools and params and "tools" not in params:
            return "tool use"
        if self.images and "image" not in model.input_modalities:
            return "image input"
        if (
            self.structured_output
            and params
            and not ({"structured_outputs", "response_format"} & params)
        ):
            return "structured output"
        if model.context_length:
            needed = self.prompt_tokens + (self.max_tokens or 0)
            if needed > model.context_length:
                return f"a context window of {needed} tokens"
        limit = model.max_completion_tokens
        if self.max_tokens and limit and self.max_tokens > limit:
            return f"{self.max_tokens} output tokens"
        return None


def _has_image(content: Any) -> bool:
    if not isinstance(content, list):
        return False
    return any(
        isinstance(part, Mapping) and part.get("type") in ("image_url", "input_image", "image")
        for part in content
    )


def _text_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(
            len(part.get("text") or "") if isinstance(part, Mapping) else _text_size(part)
            for part in value
        )
    if value is None:
        return 0
    return len(json.dumps(value, default=str))


def estimate_tokens(messages: Sequence[Any], tools: Any = None) -> int:
    chars = 0
    for message in messages:
        if isinstance(message, Mapping):
            chars += _text_size(message.get("content")) + 8
            if message.get("tool_calls"):
                chars += _text_size(message.get("tool_calls"))
    if tools:
        chars += len(json.dumps(tools, default=str))
    return int(chars / CHARS_PER_TOKEN)


def requirements_of(body: Mapping[str, Any]) -> Requirements:
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = []
    response_format = body.get("response_format")
    structured = isinstance(response_format, Mapping) and response_format.get("type") in (
        "json_schema",
        "json_object",
    )
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    return Requirements(
        tools=bool(body.get("tools")),
        images=any(isinstance(m, Mapping) and _has_image(m.get("content")) for m in messages),
        structured_output=structured,
        prompt_tokens=estimate_tokens(messages, body.get("tools")),
        max_tokens=int(max_tokens) if isinstance(max_tokens, (int, float)) else None,
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
    raise NoCapableModel(f"no free model can serve this request: it needs {worst}")
