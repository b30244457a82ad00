"""The SSE decoder and chunk parser: exact framing, and no crash or invented token on any input."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_freerouter.sse import SSEDecoder, parse_data

from .strategies import record


def decode_all(parts: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    events: list[str] = []
    for part in parts:
        events.extend(decoder.feed(part))
    return events + decoder.flush()


def test_frames_comments_crlf_and_multiline_data() -> None:
    """Comments are skipped, CRLF works, multi-line data joins with newlines."""
    raw = b': OPENROUTER PROCESSING\r\n\r\ndata: {"a": 1}\r\n\r\nevent: x\ndata: l1\ndata: l2\n\n'
    assert decode_all([raw]) == ['{"a": 1}', "l1\nl2"]


def test_unterminated_last_event_counts_at_end() -> None:
    """An event without its blank line still arrives when the stream ends."""
    assert decode_all([b"data: [DONE]"]) == ["[DONE]"]


def test_parse_content_reasoning_tools_usage_error() -> None:
    """A chunk's content, reasoning, tool-call fragments, usage and error are all read."""
    chunk = {
        "choices": [
            {
                "delta": {
                    "content": "hi",
                    "reasoning": "hm",
                    "tool_calls": [
                        {"index": 1, "id": "c1", "function": {"name": "f", "arguments": "{"}}
                    ],
                },
                "finish_reason": None,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    delta = parse_data(json.dumps(chunk))
    assert delta is not None
    assert (delta.content, delta.reasoning) == ("hi", "hm")
    assert [(c.index, c.id, c.name, c.arguments) for c in delta.tool_calls] == [(1, "c1", "f", "{")]
    assert delta.usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    error = parse_data(
        json.dumps(
            {
                "error": {"code": 429, "message": "x"},
                "choices": [{"delta": {}, "finish_reason": "error"}],
            }
        )
    )
    assert error is not None and error.error == {"code": 429, "message": "x"}


def test_role_only_and_empty_deltas_are_not_tokens() -> None:
    """An empty role delta and a keep-alive are not tokens; [DONE] and junk are not chunks."""
    role = parse_data('{"choices":[{"delta":{"role":"assistant","content":""}}]}')
    assert role is not None and not role.is_token
    assert parse_data("[DONE]") is None
    assert parse_data("{not json") is None
    assert parse_data("[1, 2]") is None


# --- properties --------------------------------------------------------------------------------

# Text as OpenRouter streams it: raw UTF-8 (the upstream sends ensure_ascii=False JSON), with
# plenty of multi-byte characters (accents, CJK, emoji with modifiers, a line separator) so
# that byte splits cut characters in half.
WIDE = "é中文字😀🦀👍🏽ü\u2028\u00a0"
TEXT = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(WIDE), max_size=20)
# Junk that talks about tokens without being one.
TOKENISH = st.sampled_from(
    [
        "content",
        "reasoning",
        "tool_calls",
        '{"choices":[{"delta":{"content":"fake"}}]}',
        'data: {"choices":[{"delta":{"content":"fake"}}]}',
    ]
)
KEYS = st.sampled_from(
    [
        "content",
        "reasoning",
        "tool_calls",
        "delta",
        "message",
        "choices",
        "function",
        "name",
        "arguments",
        "id",
        "index",
        "role",
        "finish_reason",
        "usage",
        "error",
        "junk",
    ]
) | st.text(max_size=6)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
    | TOKENISH,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)


def mostly(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """``strategy`` five times in six, any JSON value otherwise (``one_of`` would weigh them
    alike: it drops repeated branches)."""
    return st.sampled_from([True] * 5 + [False]).flatmap(lambda usual: strategy if usual else JSON)


FUNCTION = record(name=mostly(TEXT), arguments=mostly(TEXT))
TOOL_CALL = record(index=JSON, id=mostly(TEXT), type=st.just("function"), function=FUNCTION)
DELTA = record(
    role=st.just("assistant") | JSON,
    content=mostly(TEXT),
    reasoning=mostly(TEXT),
    tool_calls=mostly(st.lists(mostly(TOOL_CALL), max_size=3)),
    junk=TEXT | TOKENISH | JSON,
    refusal=JSON,
)
CHOICE = mostly(
    record(
        delta=mostly(DELTA),
        message=mostly(DELTA),
        finish_reason=st.sampled_from([None, "stop", "tool_calls"]) | JSON,
        index=JSON,
    )
)
CHUNK = mostly(
    record(
        id=TEXT,
        choices=mostly(st.lists(CHOICE, min_size=1, max_size=2)),
        usage=JSON,
        provider=TEXT,
        content=TEXT | TOKENISH,  # in the wrong place: not a token
        junk=JSON,
    )
)


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    """``raw`` cut at every position in ``cuts``: the pieces always join back to ``raw``."""
    points = sorted({min(max(c, 0), len(raw)) for c in cuts})
    parts = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    assert b"".join(parts) == raw
    return parts


def answer_of(chunk: object) -> dict[str, object] | None:
    """Oracle: the message a chunk carries, by OpenAI's streaming format: the first choice's
    ``delta``, or its ``message`` (a non-streamed answer) when there is no delta object."""
    if not isinstance(chunk, dict):
        return None
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    for key in ("delta", "message"):
        inner = choices[0].get(key)
        if isinstance(inner, dict):
            return inner
    return None


def oracle_text(chunk: object, field: str) -> str:
    """Oracle: a content or reasoning token is exactly a string in that field of the answer."""
    answer = answer_of(chunk)
    value = answer.get(field) if answer is not None else None
    return value if isinstance(value, str) else ""


def oracle_has_tool_fragment(chunk: object) -> bool:
    """Oracle: a tool-call fragment is an object in the answer's ``tool_calls`` list with a
    non-empty string id, or a function object with a non-empty string name or arguments."""
    answer = answer_of(chunk)
    calls = answer.get("tool_calls") if answer is not None else None
    if not isinstance(calls, list):
        return False
    for call in calls:
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        said = [call.get("id")]
        if isinstance(function, dict):
            said += [function.get("name"), function.get("arguments")]
        if any(isinstance(value, str) and value for value in said):
            return True
    return False


def reference_events(raw: bytes) -> list[str]:
    """Oracle: the framing the decoder documents, done on the whole input at once. Lines end
    at LF (a CR before it belongs to the line ending), ``:`` lines are comments, only ``data``
    fields count (one leading space dropped), a blank line or the end of input ends an event,
    and the data of one event joins with newlines."""
    events: list[str] = []
    data: list[str] = []
    for line in [*raw.decode("utf-8", errors="replace").split("\n"), ""]:
        line = line.rstrip("\r")
        if not line:
            if data:
                events.append("\n".join(data))
            data = []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value[1:] if value.startswith(" ") else value)
    return events


def strings_in(value: object) -> set[str]:
    """Every string anywhere in a decoded JSON value, keys included."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return set().union(*(strings_in(v) for v in value))
    if isinstance(value, dict):
        return set(value) | set().union(*(strings_in(v) for v in value.values()))
    return set()


def carried_strings(events: list[str]) -> set[str]:
    carried: set[str] = set()
    for event in events:
        try:
            carried |= strings_in(json.loads(event))
        except ValueError:
            pass
    return carried


# Pieces arbitrary bytes are made of: raw bytes, and enough SSE and chunk syntax (split
# multi-byte characters too) that some inputs really carry tokens.
SYNTAX = st.sampled_from(
    [
        b"data: ",
        b"data:",
        b"\n",
        b"\r\n",
        b"\n\n",
        b"\r",
        b": OPENROUTER PROCESSING\n",
        b"event: x\n",
        b"dataset: ",
        b"Data: ",
        b" data: ",
        b'{"choices":[{"delta":{"content":"',
        b'"}}]}',
        b"[DONE]",
    ]
)
SCRAPS = st.binary(max_size=12) | st.sampled_from(
    [b"hi", "中😀".encode(), "😀".encode()[:2], "😀".encode()[2:], b"\xff", b"\\u00e9", b'"']
)
# An event-shaped run whose token text is arbitrary bytes: valid JSON only sometimes.
EVENTISH = st.builds(
    lambda opening, middle, closing: opening + b"".join(middle) + closing,
    st.sampled_from(
        [
            b'data: {"choices":[{"delta":{"content":"',
            b'\n\ndata: {"choices":[{"delta":{"content":"',
            b'data: {"choices":[{"delta":{"reasoning":"',
            b'data:{"choices":[{"message":{"content":"',
            b'data: {"choices":[{"delta":{"tool_calls":[{"id":"',
            b'data: {"junk":"',
        ]
    ),
    st.lists(SCRAPS, max_size=3),
    st.sampled_from([b'"}}]}\n\n', b'"}]}}]}\r\n\r\n', b'"}}]}', b'"}}]}\n']),
)
FRAGMENT = st.sampled_from([SCRAPS, SYNTAX, EVENTISH, EVENTISH]).flatmap(lambda kind: kind)


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAGMENT, max_size=24), st.lists(st.integers(0, 400), max_size=8))
def test_any_bytes_any_split_frame_exactly_and_never_invent_tokens(
    fragments: list[bytes], cuts: list[int]
) -> None:
    """Arbitrary bytes, however split, frame exactly as the documented rules say, never crash
    the parser, and yield no token text that the input's data did not literally carry."""
    raw = b"".join(fragments)
    events = decode_all(split(raw, cuts))
    assert events == reference_events(raw)
    carried = carried_strings(events)
    for event in events:
        delta = parse_data(event)
        if delta is None:
            continue
        said = [delta.content, delta.reasoning]
        said += [t for c in delta.tool_calls for t in (c.id, c.name, c.arguments) if t]
        for text in said:
            assert text == "" or text in carried


@settings(max_examples=400, deadline=None)
@given(CHUNK, st.sampled_from([b"\n\n", b"\r\n\r\n"]), st.lists(st.integers(0, 600), max_size=6))
def test_tokens_are_exactly_what_the_chunk_carries(
    chunk: object, end: bytes, cuts: list[int]
) -> None:
    """Whatever a chunk holds, its content and reasoning are exactly the strings in those
    fields of its answer, a tool call is reported only when one is really there, and junk that
    merely mentions "content" (as text, a key or a misplaced field) is never a token."""
    raw = b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + end
    events = decode_all(split(raw, cuts))
    assert len(events) == 1
    delta = parse_data(events[0])
    if not isinstance(chunk, dict):
        assert delta is None
        return
    assert delta is not None
    assert delta.content == oracle_text(chunk, "content")
    assert delta.reasoning == oracle_text(chunk, "reasoning")
    assert bool(delta.tool_calls) == oracle_has_tool_fragment(chunk)
    assert delta.is_token == bool(
        delta.content or delta.reasoning or oracle_has_tool_fragment(chunk)
    )


def content_event(text: str, extra: dict[str, object], eol: bytes) -> bytes:
    chunk = {"id": "gen-1", "choices": [{"index": 0, "delta": {"content": text}}], **extra}
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + eol + eol


# Lines that carry no content, each a whole block (a data line ends its own event).
NOT_JSON = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n") | st.sampled_from(WIDE),
    max_size=20,
).filter(lambda t: not t.strip().startswith(("{", "[", '"')))


def garbage(eol: bytes) -> st.SearchStrategy[bytes]:
    quiet = [
        {"choices": [{"delta": {"role": "assistant"}}]},
        {"choices": [{"delta": {"content": None}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
        {"choices": "content", "content": "not here"},
        {"error": None, "junk": {"content": "nested too deep"}},
    ]
    return st.one_of(
        st.just(b": OPENROUTER PROCESSING" + eol),
        st.just(eol),
        st.just(b"event: message" + eol),
        st.just(b"id: 7" + eol + b"retry: 100" + eol),
        TEXT.map(lambda t: b"x-unknown: " + json.dumps(t).encode() + eol),
        # A chunk with content, but in a field other than ``data``: not part of the answer.
        st.sampled_from([b"dataset", b"Data", b" data", b"event", b"id"]).map(
            lambda name: name + b': {"choices": [{"delta": {"content": "fake"}}]}' + eol + eol
        ),
        st.just(b'data: {"choices": [{"delta": {"content": "cut' + eol + eol),
        NOT_JSON.map(lambda t: b"data: " + t.encode() + eol + eol),
        st.sampled_from(quiet).map(
            lambda c: b"data: " + json.dumps(c, ensure_ascii=False).encode() + eol + eol
        ),
    )


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_content_comes_back_exactly_amid_garbage_and_any_split(data: st.DataObject) -> None:
    """Real content chunks interleaved with comments, blank lines, malformed JSON, non-JSON
    data and unknown fields, cut anywhere (inside multi-byte characters too), give back
    exactly the streamed text, in order."""
    eol = data.draw(st.sampled_from([b"\n", b"\r\n"]))
    pieces = data.draw(st.lists(TEXT, min_size=1, max_size=8))
    extra = st.fixed_dictionaries({}, optional={"provider": TEXT, "x_junk": JSON})
    blocks: list[bytes] = []
    for piece in pieces:
        blocks += data.draw(st.lists(garbage(eol), max_size=3))
        blocks.append(content_event(piece, data.draw(extra), eol))
    blocks += data.draw(st.lists(garbage(eol), max_size=3))
    raw = b"".join(blocks) + b"data: [DONE]" + eol + eol
    parts = split(raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    text = "".join(d.content for e in decode_all(parts) if (d := parse_data(e)) is not None)
    assert text == "".join(pieces)


def test_every_cut_through_multibyte_text() -> None:
    """Cutting the stream at every byte, inside each UTF-8 sequence too, loses nothing."""
    text = "é中😀👍🏽"
    raw = content_event(text, {}, b"\n") + b"data: [DONE]\n\n"
    assert "😀".encode() in raw  # raw UTF-8 on the wire, as OpenRouter sends it
    for cut in range(len(raw) + 1):
        for second in range(cut, len(raw) + 1, 5):
            events = decode_all([raw[:cut], raw[cut:second], raw[second:]])
            delta = parse_data(events[0])
            assert delta is not None and delta.content == text
            assert events[1:] == ["[DONE]"]
