"""Which free models can serve a request: the library against an oracle written from its rules.

The rules (``requirements.py``'s docstrings, the README's "Right models only"): a request with
a non-empty ``tools`` (or ``functions``) needs tool use, an image part needs image input, an
``input_audio`` part audio input, a ``response_format`` of type ``json_object`` needs JSON mode
or structured outputs, of type ``json_schema`` structured outputs, and the prompt (about 3.5
characters a token, 8 a message) plus the answer's room (``max_tokens``, else
``max_completion_tokens``, when a positive number) must fit the model's context window, the
answer's room its output limit. Unknown capabilities rule nothing out. When no model can serve
a request the error names what is missing; a non-finite token limit is a bad request. Nothing
else about a body's shape may raise.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import litellm
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from litellm_freerouter.catalog import FreeModel
from litellm_freerouter.errors import ConfigurationError, NoCapableModel, to_litellm
from litellm_freerouter.requirements import capable, requirements_of

from .conftest import Upstream, fast
from .strategies import record

IMAGE_TYPES = ("image_url", "input_image", "image")
LIMITS = ("max_tokens", "max_completion_tokens")

# --- the oracle ---------------------------------------------------------------------------------


def text_chars(value: Any) -> int:
    """Characters of prompt text in a message's content or a part's ``text``."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):  # parts: only their text counts, never an image
        return sum(
            text_chars(p.get("text")) if isinstance(p, dict) else text_chars(p) for p in value
        )
    return len(json.dumps(value))  # anything else, as the JSON it is sent as


def prompt_tokens(body: dict[str, Any]) -> int:
    chars = 0
    for message in body.get("messages") or []:
        chars += 8 + text_chars(message.get("content"))
        if message.get("tool_calls"):
            chars += len(json.dumps(message["tool_calls"]))
    if body.get("tools"):
        chars += len(json.dumps(body["tools"]))
    return chars * 2 // 7  # 3.5 characters a token, rounded down, in exact arithmetic


def non_finite_limit(body: dict[str, Any]) -> str | None:
    """The token-limit field holding infinity or NaN, if one does."""
    for name in LIMITS:
        value = body.get(name)
        if type(value) is float and (value != value or value in (math.inf, -math.inf)):
            return name
    return None


def answer_room(body: dict[str, Any]) -> int:
    """Tokens reserved for the answer: the first positive number (not a bool) of the limits."""
    for name in LIMITS:
        value = body.get(name)
        if type(value) in (int, float) and value > 0:
            return int(value) if value == int(value) else int(value) + 1
    return 0


def needs_tools(body: dict[str, Any]) -> bool:
    return any(
        isinstance(body.get(name), list) and len(body[name]) > 0 for name in ("tools", "functions")
    )


def needs_images(body: dict[str, Any]) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") in IMAGE_TYPES
        for message in body.get("messages") or []
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


def parts_of_type(body: dict[str, Any], types: tuple[str, ...]) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") in types
        for message in body.get("messages") or []
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


def needs_structure(body: dict[str, Any]) -> str | None:
    form = body.get("response_format")
    kind = form.get("type") if isinstance(form, dict) else None
    return kind if kind in ("json_object", "json_schema") else None


def what_is_missing(body: dict[str, Any], model: FreeModel) -> str | None:
    """Oracle: the first need ``model`` cannot meet, in the documented order, or None."""
    known = model.supported_parameters
    if needs_tools(body) and known and "tools" not in known:
        return "tool use"
    if needs_images(body) and "image" not in model.input_modalities:
        return "image input"
    if parts_of_type(body, ("input_audio",)) and "audio" not in model.input_modalities:
        return "audio input"
    if parts_of_type(body, ("file", "input_file")) and "file" not in model.input_modalities:
        return "file input"
    form = needs_structure(body)
    offered = (
        {"structured_outputs"}
        if form == "json_schema"
        else {"response_format", "structured_outputs"}
    )
    if form and known and not offered & known:
        return "structured output"
    room = answer_room(body)
    window = prompt_tokens(body) + room
    if model.context_length is not None and 0 < model.context_length < window:
        return f"a context window of {window} tokens"
    if room and model.max_completion_tokens and room > model.max_completion_tokens:
        return f"{room} output tokens"
    return None


# --- structured request bodies ------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("é中文😀👍🏽"), max_size=60)
TEXT_PART = st.builds(
    lambda text: {"type": "text", "text": text},
    TEXT | st.none() | st.integers(-(10**6), 10**6),  # a malformed text too
)
IMAGE_PART = st.sampled_from(IMAGE_TYPES).map(
    lambda kind: {"type": kind, "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
)
OTHER_PART = st.sampled_from(
    [
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "f-1"}},
        {"type": "image_url"},  # an image part with no image is still an image part
    ]
)
CONTENT = st.none() | TEXT | st.lists(TEXT_PART | IMAGE_PART | OTHER_PART | TEXT, max_size=4)
TOOL_CALLS = st.lists(
    st.builds(
        lambda name, arguments: {
            "id": "call_1",
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        },
        TEXT,
        TEXT,
    ),
    max_size=2,
)
MESSAGE = st.one_of(
    st.builds(
        lambda role, c: {"role": role, "content": c}, st.sampled_from(["system", "user"]), CONTENT
    ),
    record(content=st.none() | TEXT, tool_calls=TOOL_CALLS).map(
        lambda fields: {"role": "assistant", **fields}
    ),
    st.builds(lambda c: {"role": "tool", "tool_call_id": "call_1", "content": c}, TEXT),
)
TOOL = st.builds(
    lambda name, description: {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": {"type": "object"}},
    },
    st.sampled_from(["lookup", "run_shell", "天气"]),
    TEXT,
)
RESPONSE_FORMAT = st.sampled_from(
    [
        None,
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
        {"type": "something_new"},
        {},
        "json_object",  # not an object: asks for nothing
    ]
)
TOKEN_LIMIT = st.one_of(
    st.none(),
    st.integers(-50, 400),
    st.just(10**30),  # huge
    st.booleans(),
    st.floats(-50, 400),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e300, 0.5, 128.0]),
    st.sampled_from(["256", "", "lots"]),
)
BODY = record(
    messages=st.lists(MESSAGE, min_size=1, max_size=5),
    tools=st.none() | st.just([]) | st.lists(TOOL, min_size=1, max_size=2),
    tool_choice=st.sampled_from(
        ["auto", "none", "required", {"type": "function", "function": {"name": "lookup"}}]
    ),
    response_format=RESPONSE_FORMAT,
    max_tokens=TOKEN_LIMIT,
    max_completion_tokens=TOKEN_LIMIT,
    temperature=st.floats(0, 2),
)
PARAMETERS = ["tools", "tool_choice", "response_format", "structured_outputs", "max_tokens", "seed"]
MODEL = st.builds(
    FreeModel,
    id=st.sampled_from(["a/a:free", "b/b:free", "c/c:free"]),
    context_length=st.none() | st.integers(1, 300),
    max_completion_tokens=st.none() | st.integers(1, 300),
    supported_parameters=st.frozensets(st.sampled_from(PARAMETERS)),
    input_modalities=st.frozensets(st.sampled_from(["text", "image", "audio", "file"])),
)
MODELS = st.lists(MODEL, max_size=5)


def is_bad_request(error: Exception) -> bool:
    return isinstance(to_litellm(error), litellm.BadRequestError)


@settings(max_examples=400, deadline=None)
@given(BODY, MODELS)
@example(  # a negative limit must not shrink the room a long prompt needs
    {"messages": [{"role": "user", "content": "x" * 3500}], "max_tokens": -(10**6)},
    [FreeModel("small/a:free", context_length=100)],
)
@example(  # tool calls already in the conversation are prompt text
    {
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "x" * 700}}],
            }
        ]
    },
    [FreeModel("small/a:free", context_length=100), FreeModel("big/b:free", context_length=999)],
)
@example(  # exactly full fits, one token over does not (8 + 27 characters: 10 tokens, +5)
    {"messages": [{"role": "user", "content": "x" * 27}], "max_tokens": 5},
    [
        FreeModel("a/a:free", context_length=15, max_completion_tokens=5),
        FreeModel("b/b:free", context_length=14),
        FreeModel("c/c:free", max_completion_tokens=4),
    ],
)
@example(  # json_object is structured output; either parameter name offers it
    {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}},
    [
        FreeModel("a/a:free", supported_parameters=frozenset({"tools"})),
        FreeModel("b/b:free", supported_parameters=frozenset({"structured_outputs"})),
        FreeModel("c/c:free", supported_parameters=frozenset({"response_format"})),
    ],
)
@example(  # a JSON schema needs structured outputs: JSON mode alone is not enough
    {
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}}},
    },
    [
        FreeModel("a/a:free", supported_parameters=frozenset({"response_format"})),
        FreeModel("b/b:free", supported_parameters=frozenset({"structured_outputs"})),
    ],
)
@example(  # the older `functions` needs tool use as `tools` does; audio needs audio input
    {
        "messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "A"}}]}
        ],
        "functions": [{"name": "f", "parameters": {}}],
    },
    [
        FreeModel("a/a:free", supported_parameters=frozenset({"max_tokens"})),
        FreeModel("b/b:free", supported_parameters=frozenset({"tools"})),
        FreeModel(
            "c/c:free",
            supported_parameters=frozenset({"tools"}),
            input_modalities=frozenset({"text", "audio"}),
        ),
    ],
)
@example(  # a text part that is not a string is counted, not a crash
    {"messages": [{"role": "user", "content": [{"type": "text", "text": 12345}]}]},
    [FreeModel("a/a:free", context_length=4)],
)
def test_library_agrees_with_the_oracle_on_every_model(
    body: dict[str, Any], models: list[FreeModel]
) -> None:
    """Each model is admitted or refused exactly as the rules say, for the reason they say; a
    request nothing can serve, or with a non-finite token limit, is a bad request."""
    bad_limit = non_finite_limit(body)
    if bad_limit is not None:
        with pytest.raises(ConfigurationError, match=bad_limit) as raised:
            requirements_of(body)
        assert is_bad_request(raised.value)
        return
    needs = requirements_of(body)
    for model in models:
        assert needs.unmet_by(model) == what_is_missing(body, model), model
    able = [m for m in models if what_is_missing(body, m) is None]
    if able or not models:
        assert capable(models, needs) == able
        return
    with pytest.raises(NoCapableModel) as refused:
        capable(models, needs)
    for model in models:
        assert f"{what_is_missing(body, model)} (" in str(refused.value)
    assert is_bad_request(refused.value)


# --- anything a JSON body can hold ----------------------------------------------------------------

JSON_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: Python's json reads and writes them
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)
KEY = st.sampled_from(
    ["messages", "tools", "response_format", *LIMITS, "content", "type", "text", "tool_calls"]
)
LOOSE_MESSAGE = JSON_VALUE | st.dictionaries(KEY | TEXT, JSON_VALUE | CONTENT, max_size=4)
LOOSE_BODY = st.dictionaries(
    KEY | TEXT, JSON_VALUE | st.lists(LOOSE_MESSAGE, max_size=4) | TOKEN_LIMIT, max_size=6
)


@settings(max_examples=300, deadline=None)
@given(LOOSE_BODY, MODELS)
def test_any_json_body_is_read_or_refused_as_a_bad_request(
    shape: dict[str, Any], models: list[FreeModel]
) -> None:
    """Whatever a proxy client sends, reading it never crashes: the only errors are the
    library's own, both reaching the caller as BadRequestError (a non-finite token limit, or a
    need no model meets), and what it reads is sane."""
    body = json.loads(json.dumps(shape))  # exactly what a proxy parses from the wire
    try:
        needs = requirements_of(body)
    except ConfigurationError as error:
        assert non_finite_limit(body) is not None
        assert is_bad_request(error)
        return
    assert non_finite_limit(body) is None
    assert needs.prompt_tokens >= 0
    assert needs.max_tokens is None or needs.max_tokens > 0
    assert needs.max_tokens == (answer_room(body) or None)
    try:
        able = capable(models, needs)
    except NoCapableModel as error:
        assert models and all(needs.unmet_by(m) is not None for m in models)
        assert is_bad_request(error)
        return
    assert able == [m for m in models if needs.unmet_by(m) is None]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"max_tokens": 1e999}', "max_tokens"),
        ('{"max_tokens": -1e999}', "max_tokens"),
        ('{"max_tokens": NaN}', "max_tokens"),
        ('{"max_tokens": 100, "max_completion_tokens": Infinity}', "max_completion_tokens"),
    ],
)
def test_a_non_finite_token_limit_is_a_bad_request_naming_the_field(raw: str, field: str) -> None:
    """1e999 parses as infinity; neither it nor NaN can be sent on as JSON."""
    with pytest.raises(ConfigurationError, match=f"^{field} must be a finite number") as raised:
        requirements_of(json.loads(raw))
    assert is_bad_request(raised.value)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"max_tokens": math.inf}, "max_tokens must be a finite number, got inf"),
        ({"temperature": math.nan}, "temperature must be a finite number, got nan"),
        (
            {"extra_body": {"provider": {"max_price": {"prompt": -math.inf}}}},
            "provider.max_price.prompt must be a finite number, got -inf",
        ),
    ],
)
def test_a_non_finite_number_reaches_the_caller_as_bad_request(
    upstream: Upstream, extra: dict[str, Any], says: str
) -> None:
    """Through litellm: BadRequestError naming the field, and no model is asked (sent on, the
    body would not be JSON: every model would answer 400 and cool down for it)."""
    upstream.sim.set_models([fast("a/a:free", "hi")])
    with pytest.raises(litellm.BadRequestError, match=re.escape(says)):
        litellm.completion(
            model="freerouter/auto", messages=[{"role": "user", "content": "hi"}], **extra
        )
    assert upstream.sim.called_models() == []
