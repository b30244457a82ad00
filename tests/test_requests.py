"""Request shapes and error mapping with aioresponses: what is sent upstream, and how."""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import litellm
import pytest
from aiohttp import ClientResponse
from aioresponses import CallbackResult, aioresponses

from .conftest import KEY

BASE = "http://openrouter.test/api/v1"
MODELS = {
    "data": [
        {
            "id": "a/one:free",
            "context_length": 4096,
            "pricing": {"prompt": "0", "completion": "0"},
            "supported_parameters": ["tools", "max_tokens", "temperature"],
            "architecture": {"input_modalities": ["text"]},
        },
        {"id": "b/paid", "context_length": 4096, "pricing": {"prompt": "0.1", "completion": "0.2"}},
    ]
}


class Response(ClientResponse):
    """aioresponses 0.7.9 predates aiohttp 3.14's required ``stream_writer`` argument."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0, buffer_size=0))
        super().__init__(*args, **kwargs)


class Mock(aioresponses):
    def add(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("response_class", Response)
        super().add(*args, **kwargs)


def sse(*texts: str) -> str:
    events = [json.dumps({"choices": [{"delta": {"content": t}}]}) for t in texts]
    return "".join(f"data: {e}\n\n" for e in events) + "data: [DONE]\n\n"


@pytest.fixture
def mocked(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.setenv("OPENROUTER_API_BASE", BASE)
    with Mock() as m:
        m.get(f"{BASE}/models", payload=MODELS, repeat=True)
        m.get(f"{BASE}/key", payload={"data": {}}, repeat=True)
        yield m


def sent(m: Any) -> tuple[dict[str, Any], dict[str, str]]:
    for (method, url), calls in m.requests.items():
        if method == "POST" and str(url).endswith("/chat/completions"):
            call = calls[-1]
            return json.loads(call.kwargs["data"]), dict(call.kwargs["headers"])
    raise AssertionError("no POST was sent")


def test_body_carries_messages_and_parameters_not_tunables(mocked: Any) -> None:
    """The upstream body has the model id, messages and caller parameters; tunables stay home."""
    mocked.post(f"{BASE}/chat/completions", body=sse("ok"), content_type="text/event-stream")
    litellm.completion(
        model="freerouter/auto",
        messages=[{"role": "user", "content": "hi"}],
        temperature=0,
        max_tokens=50,
        stop=["\n"],
        race_width=1,
        idle_timeout=5,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
    )
    body, headers = sent(mocked)
    assert body["model"] == "a/one:free"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["stream"] is True
    assert (body["temperature"], body["max_tokens"], body["stop"]) == (0, 50, ["\n"])
    assert body["tools"][0]["function"]["name"] == "f"
    assert "race_width" not in body and "idle_timeout" not in body
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["X-OpenRouter-Title"] == "litellm-freerouter"
    assert "HTTP-Referer" in headers


def test_extra_body_is_merged(mocked: Any) -> None:
    """extra_body fields reach OpenRouter (e.g. its reasoning switch)."""
    mocked.post(f"{BASE}/chat/completions", body=sse("ok"), content_type="text/event-stream")
    litellm.completion(
        model="freerouter/auto",
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"reasoning": {"effort": "low"}},
    )
    body, _ = sent(mocked)
    assert body["reasoning"] == {"effort": "low"}


def test_an_empty_tool_list_is_left_out_with_its_tool_choice(mocked: Any) -> None:
    """litellm turns tools it cannot read into []; some providers refuse an empty list, and
    tool_choice without tools, so neither is sent (the request asks for no tool use)."""
    mocked.post(f"{BASE}/chat/completions", body=sse("ok"), content_type="text/event-stream")
    litellm.completion(
        model="freerouter/auto",
        messages=[{"role": "user", "content": "hi"}],
        tools=[],
        tool_choice="auto",
    )
    body, _ = sent(mocked)
    assert "tools" not in body and "tool_choice" not in body


def call(path: str, **kwargs: Any) -> None:
    """litellm.completion or acompletion, streamed or whole (``path``: sync-whole ...
    async-streamed), drained."""

    async def drain_async() -> None:
        response = await litellm.acompletion(stream=path.endswith("streamed"), **kwargs)
        if path.endswith("streamed"):
            async for _ in response:
                pass

    if path.startswith("async"):
        asyncio.run(drain_async())
        return
    response = litellm.completion(stream=path.endswith("streamed"), **kwargs)
    if path.endswith("streamed"):
        for _ in response:
            pass


PATHS = ["sync-whole", "sync-streamed", "async-whole", "async-streamed"]


@pytest.mark.parametrize("path", PATHS)
def test_extra_headers_reach_openrouter_and_a_title_replaces_freerouters(
    mocked: Any, path: str
) -> None:
    """The caller's extra_headers go with the request; a title set under either of
    OpenRouter's names stands for both (else OpenRouter would credit freerouter); the key and
    framing stay freerouter's."""
    mocked.post(f"{BASE}/chat/completions", body=sse("ok"), content_type="text/event-stream")
    call(
        path,
        model="freerouter/auto",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-title": "My App", "X-Trace": "42", "X-Unset": None},
    )
    _, headers = sent(mocked)
    assert headers["x-title"] == "My App" and headers["X-OpenRouter-Title"] == "My App"
    assert "X-Title" not in headers  # one title header per name, not the caller's and ours
    assert headers["X-Trace"] == "42"
    assert "X-Unset" not in headers
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["Accept"] == "text/event-stream"
    assert headers["HTTP-Referer"].startswith("https://")


def test_extra_headers_in_a_routers_litellm_params_reach_openrouter(mocked: Any) -> None:
    """The proxy's way: extra_headers in a model entry's litellm_params (litellm.Router, which
    the proxy runs) reach OpenRouter like a caller's."""
    mocked.post(f"{BASE}/chat/completions", body=sse("ok"), content_type="text/event-stream")
    entry = {"model": "freerouter/auto", "extra_headers": {"X-Title": "Team proxy"}}
    router = litellm.Router(model_list=[{"model_name": "free", "litellm_params": entry}])
    router.completion(model="free", messages=[{"role": "user", "content": "hi"}])
    _, headers = sent(mocked)
    assert headers["X-Title"] == headers["X-OpenRouter-Title"] == "Team proxy"


@pytest.mark.parametrize(
    ("extra_headers", "says"),
    [
        ({"Authorization": f"Bearer {KEY}"}, "cannot set Authorization: .* OPENROUTER_API_KEY"),
        ({"content-type": "text/plain"}, "cannot set content-type: freerouter sets it itself"),
        ({"Proxy-Authorization": "Basic x"}, "cannot set Proxy-Authorization"),
        ({"X-Bad Name": "1"}, "'X-Bad Name' is not an HTTP header name"),
        ({"X-Count": 3}, r"extra_headers\['X-Count'\] must be a string, got int"),
        ({"X-Secret": f"{KEY}\r\nX-Injected: 1"}, "holds a line break, control or non-ASCII"),
        ({"X-Name": "Zoë"}, "holds a line break, control or non-ASCII"),
        ({"Accept-Encoding": "br"}, "cannot set Accept-Encoding: freerouter sets it itself"),
        ({"X-Big": "x" * 9000}, "extra_headers take 9009 bytes; freerouter sends at most 8192"),
    ],
)
@pytest.mark.parametrize("path", PATHS)
def test_extra_headers_aiohttp_could_not_send_are_refused_without_their_values(
    mocked: Any, extra_headers: dict[str, Any], says: str, path: str
) -> None:
    """A header freerouter must set, or one no HTTP client can send, is a BadRequestError
    before anything is sent (sent, it would fail every model as if OpenRouter were down); the
    message never repeats a value, which may be a secret."""
    with pytest.raises(litellm.BadRequestError, match=says) as caught:
        call(
            path,
            model="freerouter/auto",
            messages=[{"role": "user", "content": "x"}],
            extra_headers=extra_headers,
        )
    assert KEY not in str(caught.value)
    assert posts(mocked) == 0


@pytest.mark.parametrize(
    ("status", "payload", "error", "text"),
    [
        (
            401,
            {"error": {"code": 401, "message": "No auth credentials found"}},
            litellm.AuthenticationError,
            "OPENROUTER_API_KEY",
        ),
        (
            429,
            {
                "error": {
                    "code": 429,
                    "message": "Rate limit exceeded: free-models-per-day",
                    "metadata": {"headers": {"X-RateLimit-Reset": "4102444800000"}},
                }
            },
            litellm.RateLimitError,
            "free daily quota used; resets at 00:00 UTC",
        ),
        (
            404,
            {"error": {"code": 404, "message": "No endpoints found matching your data policy"}},
            litellm.NotFoundError,
            "settings/privacy",
        ),
        (
            400,
            {"error": {"code": 400, "message": "maximum context length is 10 tokens"}},
            litellm.ContextWindowExceededError,
            "context",
        ),
    ],
)
def test_upstream_statuses_map_to_litellm_errors(
    mocked: Any, status: int, payload: dict[str, Any], error: type[Exception], text: str
) -> None:
    """Each upstream status reaches a non-streamed caller as the matching litellm error."""
    mocked.post(f"{BASE}/chat/completions", status=status, payload=payload)
    with pytest.raises(error, match=re.escape(text)):
        litellm.completion(model="freerouter/auto", messages=[{"role": "user", "content": "hi"}])


def test_daily_quota_is_remembered_without_sending(mocked: Any) -> None:
    """After a free-models-per-day 429, later calls fail at once and send nothing."""
    calls: list[int] = []

    def answer(url: Any, **kwargs: Any) -> CallbackResult:
        calls.append(1)
        return CallbackResult(
            status=429,
            response_class=Response,
            payload={
                "error": {
                    "code": 429,
                    "message": "Rate limit exceeded: free-models-per-day",
                    "metadata": {"headers": {"X-RateLimit-Reset": "4102444800000"}},
                }
            },
        )

    mocked.post(f"{BASE}/chat/completions", callback=answer, repeat=True)
    for _ in range(3):
        with pytest.raises(litellm.RateLimitError, match="free daily quota used"):
            litellm.completion(
                model="freerouter/auto",
                messages=[{"role": "user", "content": "x"}],
                api_base=BASE + "/",
            )
    assert len(calls) == 1


def test_invalid_tunable_is_a_clear_bad_request(mocked: Any) -> None:
    """A bad tunable value names the setting and where it was set; nothing is sent."""
    with pytest.raises(
        litellm.BadRequestError,
        match=r"'lots' for race_width \(set by race_width in litellm_params or the call's",
    ):
        litellm.completion(
            model="freerouter/auto", messages=[{"role": "user", "content": "x"}], race_width="lots"
        )
    with pytest.raises(litellm.BadRequestError, match="race_width must be at least 1"):
        litellm.completion(
            model="freerouter/auto", messages=[{"role": "user", "content": "x"}], race_width=0
        )


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {}}}]


def posts(m: Any) -> int:
    return sum(
        len(calls)
        for (method, url), calls in m.requests.items()
        if method == "POST" and str(url).endswith("/chat/completions")
    )


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"models": ["openai/gpt-4o"]}, "models cannot be sent through freerouter:"),
        ({"extra_body": {"models": ["openai/gpt-4o"], "route": "fallback"}}, "models, route"),
        ({"extra_body": {"plugins": [{"id": "web"}]}}, "plugins cannot be sent"),
        ({"web_search_options": {"search_context_size": "low"}}, "web_search_options"),
        ({"n": 2}, "n must be 1"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs are not supported"),
        ({"max_tokens": 0}, "max_tokens must be a whole number of tokens, at least 1, got 0"),
        ({"max_tokens": -5}, "max_tokens must be a whole number of tokens, at least 1, got -5"),
        ({"max_tokens": 1.5}, "max_tokens must be a whole number of tokens, at least 1, got 1.5"),
        ({"n": True}, "n must be 1"),
        ({"n": 1.0}, "n must be 1"),
        # OpenRouter's server tools (they call other models, or are billed) and presets.
        (
            {"tools": [{"type": "openrouter:advisor", "parameters": {"model": "x/paid"}}]},
            "tools.0. is of type 'openrouter:advisor': only function tools .* billed",
        ),
        ({"extra_body": {"tools": [{"type": "openrouter:web_search"}]}}, "only function tools"),
        ({"extra_body": {"preset": "free-then-paid"}}, "preset cannot be sent through freerouter"),
        (
            {"tools": TOOLS, "extra_body": {"tool_choice": {"type": "openrouter:web_search"}}},
            "tool_choice of type 'openrouter:web_search' cannot be sent",
        ),
        # What every model would refuse alike: each would spend a request and cool down.
        ({"tool_choice": "required"}, "tool_choice is required, but no tools were given"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice names the function 'g', which is not among the tools",
        ),
        ({"tools": [{"type": "function", "function": {}}]}, r"tools\[0\].function.name"),
        ({"temperature": "hot"}, "temperature must be a number from 0 to 2, got 'hot'"),
        ({"top_p": 2}, "top_p must be a number from 0 to 1, got 2"),
        ({"seed": "abc"}, "seed must be a whole number, got 'abc'"),
        ({"stop": 5}, "stop must be a string or a list of strings, got 5"),
        ({"response_format": {"type": "bogus"}}, "response_format.type must be text, json_o"),
        ({"response_format": {"type": "json_schema"}}, "needs a json_schema object"),
        ({"extra_body": ["reasoning"]}, "extra_body must be a dict .*, got list"),
        ({"extra_body": {"messages": []}}, "extra_body cannot hold messages"),
        ({"extra_body": {"race_width": 10}}, "race_width in extra_body would go to OpenRouter"),
        ({"messages": [{"role": "bogus", "content": "x"}]}, r"messages\[0\].role must be one of"),
        ({"messages": [{"role": "user", "content": "hi \ud800"}]}, "cannot be sent as JSON"),
        ({"temperature": Decimal("0.5")}, "temperature must be a number"),
        ({"logit_bias": {"1": Decimal("1")}}, "cannot be sent as JSON"),
        ({"timeout": -1}, "timeout must be a positive number of seconds, got -1"),
        ({"racewidth": 2}, "racewidth is not a parameter freerouter knows: did you mean race_w"),
        ({"first_token_timout": 5}, "did you mean first_token_timeout"),
        ({"timeout": float("nan")}, "timeout must be a positive number of seconds, got nan"),
    ],
)
def test_a_request_that_would_reach_past_free_or_lose_something_is_refused(
    mocked: Any, extra: dict[str, Any], says: str
) -> None:
    """OpenRouter's own fallbacks (maybe paid), billed web search, more than one answer,
    logprobs nobody returns, a token limit below 1: a clear BadRequestError, nothing sent."""
    extra.setdefault("messages", [{"role": "user", "content": "x"}])
    with pytest.raises(litellm.BadRequestError, match=says):
        litellm.completion(model="freerouter/auto", **extra)
    assert posts(mocked) == 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_unknown_freerouter_model_is_refused_naming_the_real_ones(
    mocked: Any, stream: bool
) -> None:
    """A mistyped model name is a BadRequestError that names both models, before anything is
    fetched or sent (not a silent freerouter/auto)."""
    with pytest.raises(litellm.BadRequestError) as caught:
        response = litellm.completion(
            model="freerouter/atuo", messages=[{"role": "user", "content": "x"}], stream=stream
        )
        for _ in response:
            pass
    message = str(caught.value)
    assert "unknown model freerouter/atuo" in message
    assert "freerouter/auto" in message and "freerouter/hedged" in message
    assert mocked.requests == {}
