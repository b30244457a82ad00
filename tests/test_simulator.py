"""The simulator must speak OpenRouter's wire format faithfully: these tests pin it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from litellm_freerouter.simulator import (
    ModelScript,
    Simulator,
    SimulatorThread,
    demo_models,
)

CHAT = "/api/v1/chat/completions"


def chat_body(model: str, *, stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        **extra,
    }


def sse_events(text: str) -> list[str]:
    """The events of an SSE body, without the blank-line separators."""
    assert text.endswith("\n\n"), "every event must be terminated by a blank line"
    return text[:-2].split("\n\n")


def data_objects(events: list[str]) -> list[dict[str, Any]]:
    return [json.loads(e[len("data: ") :]) for e in events if e.startswith("data: {")]


def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
    return [
        {
            "index": 0,
            "delta": delta,
            "finish_reason": finish,
            "native_finish_reason": finish,
            "logprobs": None,
        }
    ]


async def client_for(aiohttp_client: AiohttpClient, sim: Simulator) -> TestClient[Any, Any]:
    return await aiohttp_client(sim.app())


async def stream_text(client: TestClient[Any, Any], model: str) -> str:
    async with client.post(CHAT, json=chat_body(model)) as resp:
        assert resp.status == 200
        return await resp.text()


async def test_models_lists_catalogue_with_free_and_paid_pricing(
    aiohttp_client: AiohttpClient,
) -> None:
    """GET /models returns OpenRouter's catalogue shape, zero pricing only for free models."""
    sim = Simulator(
        [
            ModelScript("acme/fast-7b:free", context_length=8192, max_completion_tokens=1024),
            ModelScript("acme/pro-70b", free=False, input_modalities=("text", "image")),
        ]
    )
    client = await client_for(aiohttp_client, sim)
    async with client.get("/api/v1/models") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        data = (await resp.json())["data"]
    free, paid = data
    assert set(free) >= {
        "id",
        "canonical_slug",
        "name",
        "created",
        "context_length",
        "pricing",
        "architecture",
        "top_provider",
        "per_request_limits",
        "supported_parameters",
        "expiration_date",
    }
    assert free["id"] == "acme/fast-7b:free"
    assert free["pricing"] == {"prompt": "0", "completion": "0", "request": "0", "image": "0"}
    assert free["architecture"] == {
        "input_modalities": ["text"],
        "output_modalities": ["text"],
        "modality": "text->text",
        "tokenizer": "Other",
    }
    assert free["top_provider"] == {
        "context_length": 8192,
        "max_completion_tokens": 1024,
        "is_moderated": False,
    }
    assert free["context_length"] == 8192
    assert "tools" in free["supported_parameters"]
    assert free["per_request_limits"] is None and free["expiration_date"] is None
    assert float(paid["pricing"]["prompt"]) > 0 and float(paid["pricing"]["completion"]) > 0
    assert paid["architecture"]["modality"] == "text+image->text"
    assert sim.models_fetches == 1


async def test_models_failure_and_no_auth_needed(aiohttp_client: AiohttpClient) -> None:
    """GET /models is public, and models_status makes it fail with a JSON error."""
    sim = Simulator([ModelScript("acme/a:free")], api_key="sk-or-right")
    client = await client_for(aiohttp_client, sim)
    async with client.get("/api/v1/models") as resp:
        assert resp.status == 200
    sim.models_status = 503
    async with client.get("/api/v1/models") as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == 503
    assert sim.models_fetches == 2


async def test_endpoints_report_latency_and_404(aiohttp_client: AiohttpClient) -> None:
    """The endpoints route reports p50 latency for known models and a JSON 404 otherwise."""
    sim = Simulator(
        [
            ModelScript("acme/fast-7b:free", endpoint_latency_ms=250.0, provider_name="Acme"),
            ModelScript("acme/quiet-3b:free"),
        ]
    )
    client = await client_for(aiohttp_client, sim)
    async with client.get("/api/v1/models/acme/fast-7b:free/endpoints") as resp:
        assert resp.status == 200
        data = (await resp.json())["data"]
    assert data["id"] == "acme/fast-7b:free"
    (endpoint,) = data["endpoints"]
    assert endpoint["provider_name"] == "Acme"
    assert endpoint["status"] == 0
    assert endpoint["uptime_last_30m"] == 99.0
    assert endpoint["latency_last_30m"]["p50"] == 250.0
    assert set(endpoint["latency_last_30m"]) == {"p50", "p75", "p90", "p99"}
    async with client.get("/api/v1/models/acme/quiet-3b:free/endpoints") as resp:
        assert (await resp.json())["data"]["endpoints"][0]["latency_last_30m"] is None
    async with client.get("/api/v1/models/acme/nope/endpoints") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == 404


async def test_stream_exact_events(aiohttp_client: AiohttpClient) -> None:
    """A streamed answer: role chunk, content, finish chunk, usage chunk, then [DONE]."""
    sim = Simulator([ModelScript("acme/fast-7b:free", chunks=("Hi", " there"), prompt_tokens=5)])
    client = await client_for(aiohttp_client, sim)
    async with client.post(CHAT, json=chat_body("acme/fast-7b:free")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        text = await resp.text()
    events = sse_events(text)
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    chunks = data_objects(events)
    assert len(chunks) == len(events) - 1
    assert [c["choices"] for c in chunks] == [
        choice({"role": "assistant", "content": ""}),
        choice({"role": "assistant", "content": "Hi"}),
        choice({"role": "assistant", "content": " there"}),
        choice({}, "stop"),
        [],
    ]
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert all("usage" not in c for c in chunks[:-1])
    first = chunks[0]
    assert first["id"].startswith("gen-")
    assert isinstance(first["created"], int)
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert c["model"] == "acme/fast-7b:free"
        assert c["provider"] == "SimProvider"
        assert c["id"] == first["id"]
    (rec,) = sim.requests
    assert rec.outcome == "ok" and rec.ended is not None and rec.ended >= rec.started
    assert rec.body["stream"] is True
    assert sim.open_streams == 0 and sim.peak_open_streams == 1


async def test_keepalive_comments_and_garbage_precede_first_token(
    aiohttp_client: AiohttpClient,
) -> None:
    """Keep-alive comments and malformed lines come after the role chunk, before content."""
    sim = Simulator([ModelScript("acme/a:free", keepalives=2, malformed_lines=4, chunks=("x",))])
    client = await client_for(aiohttp_client, sim)
    async with client.post(CHAT, json=chat_body("acme/a:free")) as resp:
        raw = await resp.read()
    events = raw.split(b"\n\n")
    assert events[1:3] == [b": OPENROUTER PROCESSING"] * 2
    assert events[3:7] == [b"data: {not json", b"data: ", b"event: x", b"\xff\xfe\x00 stray bytes"]
    assert b'"content":"x"' in events[7]


async def test_no_role_chunk_when_disabled(aiohttp_client: AiohttpClient) -> None:
    """role_chunk=False makes the first event carry real content."""
    sim = Simulator([ModelScript("acme/a:free", role_chunk=False, chunks=("Yo",))])
    client = await client_for(aiohttp_client, sim)
    chunks = data_objects(sse_events(await stream_text(client, "acme/a:free")))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Yo"}


async def test_tool_call_fragments(aiohttp_client: AiohttpClient) -> None:
    """Tool calls stream as a header delta then 2-3 argument fragments, finishing tool_calls."""
    args = '{"city": "Paris", "unit": "C"}'
    sim = Simulator(
        [
            ModelScript(
                "acme/tools:free",
                chunks=(),
                tool_calls=({"id": "call_1", "name": "get_weather", "arguments": args},),
            )
        ]
    )
    client = await client_for(aiohttp_client, sim)
    chunks = data_objects(sse_events(await stream_text(client, "acme/tools:free")))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    tool_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert tool_deltas[0] == {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    fragments = tool_deltas[1:]
    assert 2 <= len(fragments) <= 3
    assert all(set(f) == {"index", "function"} for f in fragments)
    assert "".join(f["function"]["arguments"] for f in fragments) == args
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == len(tool_deltas)


async def test_reasoning_deltas_precede_content(aiohttp_client: AiohttpClient) -> None:
    """Reasoning pieces arrive as delta.reasoning with reasoning_details, before content."""
    sim = Simulator([ModelScript("acme/think:free", reasoning=("Hmm", "..."), chunks=("42",))])
    client = await client_for(aiohttp_client, sim)
    chunks = data_objects(sse_events(await stream_text(client, "acme/think:free")))
    deltas = [c["choices"][0]["delta"] for c in chunks[1:3]]
    assert deltas[0] == {
        "role": "assistant",
        "content": "",
        "reasoning": "Hmm",
        "reasoning_details": [
            {"type": "reasoning.text", "text": "Hmm", "format": "unknown", "index": 0}
        ],
    }
    assert deltas[1]["reasoning"] == "..."
    assert chunks[3]["choices"][0]["delta"] == {"role": "assistant", "content": "42"}


async def test_error_chunk_ends_stream(aiohttp_client: AiohttpClient) -> None:
    """error_chunk_after sends OpenRouter's mid-stream error event and ends without [DONE]."""
    sim = Simulator(
        [
            ModelScript(
                "acme/flaky:free",
                chunks=("a", "b", "c"),
                error_chunk_after=1,
                error_code="server_error",
                error_message="Provider disconnected",
            )
        ]
    )
    client = await client_for(aiohttp_client, sim)
    events = sse_events(await stream_text(client, "acme/flaky:free"))
    assert "data: [DONE]" not in events
    chunks = data_objects(events)
    assert chunks[1]["choices"][0]["delta"]["content"] == "a"
    last = chunks[-1]
    assert last["error"] == {"code": "server_error", "message": "Provider disconnected"}
    assert last["choices"] == [{"delta": {}, "finish_reason": "error", "index": 0}]
    assert sim.requests[0].outcome == "error_chunk"


async def test_status_error_body_and_headers(aiohttp_client: AiohttpClient) -> None:
    """A non-200 script answers at once with OpenRouter's JSON error, metadata and headers."""
    raw = "acme/busy:free is temporarily rate-limited upstream."
    sim = Simulator(
        [
            ModelScript(
                "acme/busy:free",
                status=429,
                error_message="Provider returned error",
                error_metadata={"raw": raw, "provider_name": "Acme"},
                error_headers={"Retry-After": "120"},
                headers_delay=30.0,
            ),
            ModelScript("acme/down:free", status=503),
        ]
    )
    client = await client_for(aiohttp_client, sim)
    async with client.post(CHAT, json=chat_body("acme/busy:free")) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "120"
        assert await resp.json() == {
            "error": {
                "code": 429,
                "message": "Provider returned error",
                "metadata": {"raw": raw, "provider_name": "Acme"},
            }
        }
    async with client.post(CHAT, json=chat_body("acme/down:free")) as resp:
        assert resp.status == 503
        error = (await resp.json())["error"]
        assert error["code"] == 503 and error["message"]
    async with client.post(CHAT, json=chat_body("acme/unknown:free")) as resp:
        assert resp.status == 404
        assert await resp.json() == {
            "error": {"code": 404, "message": "No endpoints found for acme/unknown:free."}
        }
    assert [r.outcome for r in sim.requests] == ["status:429", "status:503", "status:404"]
    assert sim.called_models() == ["acme/busy:free", "acme/down:free", "acme/unknown:free"]
    assert sim.calls_for("acme/busy:free") == 1


async def test_daily_quota_429_resets_at_next_utc_midnight(aiohttp_client: AiohttpClient) -> None:
    """Every POST counts, failed ones too; past the quota comes free-models-per-day 429."""
    sim = Simulator([ModelScript("acme/a:free")], daily_quota=2)
    client = await client_for(aiohttp_client, sim)
    assert (await stream_text(client, "acme/a:free")).endswith("data: [DONE]\n\n")
    async with client.post(CHAT, json=chat_body("acme/missing:free")) as resp:
        assert resp.status == 404
    async with client.post(CHAT, json=chat_body("acme/a:free")) as resp:
        assert resp.status == 429
        body = await resp.json()
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
    midnight = tomorrow.replace(hour=0, minute=0, second=0, microsecond=0)
    assert body["user_id"]
    error = body["error"]
    assert error["code"] == 429
    assert error["message"].startswith("Rate limit exceeded: free-models-per-day.")
    assert error["metadata"]["provider_name"] is None
    headers = error["metadata"]["headers"]
    assert headers["X-RateLimit-Limit"] == "2"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Reset"]) == int(midnight.timestamp() * 1000)
    async with client.get("/api/v1/key") as resp:
        key = (await resp.json())["data"]
    assert key["is_free_tier"] is True
    assert key["free_model_daily_requests"] == {"limit": 2, "remaining": 0, "used": 2}


async def test_key_omits_quota_when_unset(aiohttp_client: AiohttpClient) -> None:
    """Without daily_quota, /key has no free_model_daily_requests field."""
    client = await client_for(aiohttp_client, Simulator())
    async with client.get("/api/v1/key") as resp:
        data = (await resp.json())["data"]
    assert data["label"] == "sim" and "free_model_daily_requests" not in data


async def test_auth_401_and_key_never_recorded(aiohttp_client: AiohttpClient) -> None:
    """A wrong bearer gets 401; the right one streams; the key is never stored."""
    sim = Simulator([ModelScript("acme/a:free")], api_key="sk-or-right")
    client = await client_for(aiohttp_client, sim)
    wrong = {"Authorization": "Bearer sk-or-wrong", "X-Title": "tests"}
    async with client.post(CHAT, json=chat_body("acme/a:free"), headers=wrong) as resp:
        assert resp.status == 401
        assert await resp.json() == {"error": {"code": 401, "message": "No auth credentials found"}}
    async with client.get("/api/v1/key", headers=wrong) as resp:
        assert resp.status == 401
    right = {"Authorization": "Bearer sk-or-right"}
    async with client.post(CHAT, json=chat_body("acme/a:free"), headers=right) as resp:
        assert resp.status == 200
        await resp.read()
    assert [r.authorized for r in sim.requests] == [False, True]
    assert sim.requests[0].headers["X-Title"] == "tests"
    for rec in sim.requests:
        assert all(k.lower() != "authorization" for k in rec.headers)
        assert "sk-or" not in repr(rec)


async def test_non_streaming_completion(aiohttp_client: AiohttpClient) -> None:
    """Without stream, a full chat.completion arrives with message, finish_reason and usage."""
    sim = Simulator(
        [
            ModelScript(
                "acme/a:free",
                chunks=("Hel", "lo"),
                tool_calls=({"id": "call_9", "name": "f", "arguments": '{"x": 1}'},),
            )
        ]
    )
    client = await client_for(aiohttp_client, sim)
    async with client.post(CHAT, json=chat_body("acme/a:free", stream=False)) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["object"] == "chat.completion"
    (only,) = body["choices"]
    assert only["finish_reason"] == "tool_calls"
    message = only["message"]
    assert message["role"] == "assistant" and message["content"] == "Hello"
    assert message["tool_calls"] == [
        {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    ]
    assert body["usage"]["prompt_tokens"] == 11
    assert body["usage"]["total_tokens"] == 11 + body["usage"]["completion_tokens"]


async def test_empty_stream(aiohttp_client: AiohttpClient) -> None:
    """empty=True ends with [DONE] and no content, tool call or reasoning."""
    sim = Simulator([ModelScript("acme/mute:free", empty=True, reasoning=("r",))])
    client = await client_for(aiohttp_client, sim)
    events = sse_events(await stream_text(client, "acme/mute:free"))
    assert events[-1] == "data: [DONE]"
    deltas = [c["choices"][0]["delta"] for c in data_objects(events) if c["choices"]]
    assert not any(d.get("content") or d.get("reasoning") or d.get("tool_calls") for d in deltas)


async def test_client_disconnect_during_stall_is_counted(aiohttp_client: AiohttpClient) -> None:
    """Closing the connection mid-stall ends the handler: closed_by_client counts it."""
    sim = Simulator([ModelScript("acme/stuck:free", stall_before_first_token=True, keepalives=1)])
    client = await client_for(aiohttp_client, sim)
    resp = await client.post(CHAT, json=chat_body("acme/stuck:free"))
    assert resp.status == 200
    assert b'"role":"assistant"' in await resp.content.readline()
    assert await resp.content.readline() == b"\n"
    assert await resp.content.readline() == b": OPENROUTER PROCESSING\n"
    assert sim.open_streams == 1
    with pytest.raises(AssertionError, match="1 chat stream"):
        await sim.wait_idle(timeout=0.05)
    resp.close()
    await sim.wait_idle()
    assert sim.open_streams == 0
    assert sim.closed_by_client == 1
    assert sim.requests[0].outcome == "client_closed"


async def test_held_first_token_waits_for_its_gate(aiohttp_client: AiohttpClient) -> None:
    """hold_first_token keeps the first token back until the gate is set (from any thread);
    the stream is open meanwhile, and the rest of the answer follows as scripted."""
    gate = threading.Event()
    sim = Simulator([ModelScript("acme/held:free", chunks=("Yo",), hold_first_token=gate)])
    client = await client_for(aiohttp_client, sim)
    async with client.post(CHAT, json=chat_body("acme/held:free")) as resp:
        assert b'"role":"assistant"' in await resp.content.readline()
        assert await resp.content.readline() == b"\n"
        token = asyncio.ensure_future(resp.content.readline())
        done, _ = await asyncio.wait([token], timeout=0.2)
        assert not done and sim.open_streams == 1
        threading.Thread(target=gate.set).start()
        assert b'"content":"Yo"' in await token
        rest = await resp.read()
    assert rest.endswith(b"data: [DONE]\n\n")
    assert sim.requests[0].outcome == "ok"


async def test_stall_after_chunks_then_disconnect(aiohttp_client: AiohttpClient) -> None:
    """stall_after_chunks sends that many chunks, then nothing until the client leaves."""
    sim = Simulator([ModelScript("acme/half:free", chunks=("a", "b", "c"), stall_after_chunks=2)])
    client = await client_for(aiohttp_client, sim)
    resp = await client.post(CHAT, json=chat_body("acme/half:free"))
    lines = [await resp.content.readline() for _ in range(6)]
    assert b'"content":"b"' in lines[4]
    assert sim.requests[0].outcome == "stalled"
    resp.close()
    await sim.wait_idle()
    assert sim.closed_by_client == 1


async def test_drop_after_chunks_aborts_connection(aiohttp_client: AiohttpClient) -> None:
    """drop_after_chunks cuts the connection mid-stream: the client sees a payload error."""
    sim = Simulator([ModelScript("acme/crash:free", chunks=("a", "b", "c"), drop_after_chunks=1)])
    client = await client_for(aiohttp_client, sim)
    async with client.post(CHAT, json=chat_body("acme/crash:free")) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    await sim.wait_idle()
    assert sim.requests[0].outcome == "dropped"
    assert sim.closed_by_client == 0


async def test_first_token_waits_for_the_other_requests(aiohttp_client: AiohttpClient) -> None:
    """first_token_after_requests holds the first token until that many chat requests (this
    one included) were recorded since set_models, so every contender of a race is counted."""
    sim = Simulator(
        [
            ModelScript("acme/gated:free", chunks=("late",), first_token_after_requests=2),
            ModelScript("acme/other:free", chunks=("other",)),
        ]
    )
    client = await client_for(aiohttp_client, sim)
    gated = asyncio.create_task(stream_text(client, "acme/gated:free"))
    await sim.wait_requests(1)
    # Nothing else would stop the gated answer, so it would be done well within this.
    done, _ = await asyncio.wait({gated}, timeout=0.3)
    assert not done and sim.requests[0].outcome == "pending"
    assert '"content":"other"' in await stream_text(client, "acme/other:free")
    assert '"content":"late"' in await gated
    assert sim.requests[0].ended is not None and sim.requests[0].ended > sim.requests[1].started
    # The count starts again at set_models: one request is not two.
    sim.set_models(
        [ModelScript("acme/gated:free", chunks=("again",), first_token_after_requests=2)]
    )
    again = asyncio.create_task(stream_text(client, "acme/gated:free"))
    await sim.wait_requests(3)
    done, _ = await asyncio.wait({again}, timeout=0.3)
    assert not done
    assert '"content":"again"' in await stream_text(client, "acme/gated:free")
    assert '"content":"again"' in await again
    await sim.wait_idle()


async def test_a_held_first_token_ends_when_the_client_leaves(
    aiohttp_client: AiohttpClient,
) -> None:
    """A request held for others that never come ends when its client hangs up."""
    sim = Simulator([ModelScript("acme/gated:free", first_token_after_requests=5)])
    client = await client_for(aiohttp_client, sim)
    resp = await client.post(CHAT, json=chat_body("acme/gated:free"))
    assert b'"role":"assistant"' in await resp.content.readline()
    resp.close()
    await sim.wait_idle()
    assert sim.closed_by_client == 1
    assert [r.outcome for r in sim.requests] == ["client_closed"]


async def test_wait_requests_fails_when_too_few_arrive() -> None:
    sim = Simulator([])
    with pytest.raises(AssertionError, match="0 of 1 chat request"):
        await sim.wait_requests(1, timeout=0.05)


async def test_time_scale_shrinks_delays(aiohttp_client: AiohttpClient) -> None:
    """Scripted delays are multiplied by time_scale."""
    sim = Simulator(
        [ModelScript("acme/slow:free", headers_delay=50.0, first_token_delay=50.0)],
        time_scale=0.001,
    )
    client = await client_for(aiohttp_client, sim)
    start = time.monotonic()
    await stream_text(client, "acme/slow:free")
    elapsed = time.monotonic() - start
    assert 0.09 <= elapsed < 5.0


async def test_concurrent_streams_peak(aiohttp_client: AiohttpClient) -> None:
    """peak_open_streams counts chat responses in progress at the same time."""
    sim = Simulator([ModelScript("acme/a:free", first_token_delay=0.2)])
    client = await client_for(aiohttp_client, sim)
    await asyncio.gather(*(stream_text(client, "acme/a:free") for _ in range(3)))
    assert sim.peak_open_streams == 3
    assert sim.open_streams == 0
    assert sim.calls_for("acme/a:free") == 3


async def test_simulator_thread_serves_plain_client() -> None:
    """SimulatorThread serves from a background thread to an ordinary aiohttp session."""
    sim = Simulator([ModelScript("acme/a:free", chunks=("thread", "ed"))])
    with SimulatorThread(sim) as thread:
        assert thread.url.startswith("http://127.0.0.1:") and thread.url.endswith("/api/v1")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{thread.url}/models") as resp:
                assert (await resp.json())["data"][0]["id"] == "acme/a:free"
            async with session.post(
                f"{thread.url}/chat/completions", json=chat_body("acme/a:free")
            ) as resp:
                text = await resp.text()
        thread.call(sim.wait_idle)
    assert '"content":"thread"' in text and text.endswith("data: [DONE]\n\n")
    assert sim.open_streams == 0


@pytest.mark.parametrize(
    ("script", "outcome"),
    [
        (ModelScript("acme/stuck:free", stall_before_first_token=True), "stalled"),
        (ModelScript("acme/stuck:free", first_token_after_requests=5), "server_shutdown"),
    ],
    ids=["stall", "held-first-token"],
)
def test_simulator_thread_stop_releases_stalls(script: ModelScript, outcome: str) -> None:
    """Stopping the thread ends a stalled stream, or one whose first token waits for other
    requests, at once instead of waiting for the client."""
    sim = Simulator([script])
    thread = SimulatorThread(sim).start()

    async def open_stalled_stream() -> bytes:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{thread.url}/chat/completions", json=chat_body(script.id)) as resp,
        ):
            first = await resp.content.readline()
            thread.stop()
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
            return first

    start = time.monotonic()
    assert b'"role":"assistant"' in asyncio.run(open_stalled_stream())
    assert time.monotonic() - start < 5.0
    assert sim.open_streams == 0
    assert sim.requests[0].outcome == outcome


def test_demo_models_are_varied() -> None:
    """The demo set has free author/slug:free ids, one paid model and no repeated chunks."""
    models = demo_models()
    assert 6 <= len(models) <= 10
    paid = [m for m in models if not m.free]
    assert len(paid) == 1 and not paid[0].id.endswith(":free")
    for m in models:
        assert "/" in m.id
        if m.free:
            assert m.id.endswith(":free")
        # Prose repeats a few words; a chunk sent over and over would look fake.
        assert max(Counter(m.chunks).values()) <= 3
    assert any(m.reasoning for m in models)
    assert any(m.stall_before_first_token for m in models)
    assert {m.status for m in models} >= {200, 429, 503}
    assert min(m.context_length for m in models) <= 8192
