"""The SSE decoder and chunk parser: exact framing, and no crash or invented token on any input."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_freerouter.sse import SSEDecoder, parse_data


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


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_any_bytes_any_split_never_crash_and_split_does_not_matter(
    data: bytes, cuts: list[int]
) -> None:
    """Arbitrary bytes never crash the decoder, and how they are split never changes the events."""
    points = sorted({min(c, len(data)) for c in cuts})
    parts = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert decode_all(parts) == decode_all([data])
    for event in decode_all(parts):
        parse_data(event)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_text_without_a_token_field_never_yields_a_token(text: str) -> None:
    """Tokens come only from content, reasoning or tool-call fields: junk never invents one."""
    payload = json.dumps({"choices": [{"delta": {"role": "assistant", "junk": text}}]})
    for event in decode_all([b"data: " + payload.encode() + b"\n\n", text.encode()]):
        delta = parse_data(event)
        assert (
            delta is None
            or not delta.is_token
            or "content" in event
            or "reasoning" in event
            or "tool_calls" in event
        )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=10), st.data())
def test_content_survives_any_split(pieces: list[str], data: st.DataObject) -> None:
    """The text of a stream is reassembled exactly however the network slices it."""
    raw = (
        b"".join(
            b"data: " + json.dumps({"choices": [{"delta": {"content": p}}]}).encode() + b"\n\n"
            for p in pieces
        )
        + b"data: [DONE]\n\n"
    )
    cut = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
    points = sorted(set(cut))
    parts = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    text = "".join(d.content for e in decode_all(parts) if (d := parse_data(e)) is not None)
    assert text == "".join(pieces)
