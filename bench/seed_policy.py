"""The seed's routing policy (pi-freerouter's README), as a small LiteLLM provider ``seedrouter``.

What the seed does, as its README describes it:

- the free models sorted by provider priority (Groq, Cerebras, Fireworks, Together, Mistral), then
  context window ascending; OpenRouter ids name the model's author, never the serving provider,
  so in practice the order is context ascending (ties by id);
- per request, the first 3 models of that list that are not cooling down are started at once;
  the first real token wins and the other two are aborted;
- only when the whole batch failed is the next batch of 3 started; each model at most once per
  request;
- cooldowns: 429 or 5xx 90 s, no first token within 30 s 15 s, 400/422 90 s; a 30 s idle
  window per chunk once the winner streams.

It runs as a litellm custom provider so that it pays the same caller-side costs as every other
policy in the benchmark. All times are multiplied by ``scale``, like the tier's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import litellm
from litellm.llms.custom_llm import CustomLLM

from litellm_freerouter.sse import Delta, SSEDecoder, is_done, parse_data

BATCH = 3


class _Failed(Exception):
    def __init__(self, kind: str, model: str) -> None:
        super().__init__(f"{model}: {kind}")
        self.kind = kind
        self.model = model


class _Contender:
    def __init__(self, model: str) -> None:
        self.model = model
        self.response: aiohttp.ClientResponse | None = None
        self.decoder = SSEDecoder()
        self.buffered: list[Delta] = []
        self.pending: list[str] = []

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None

    async def next_delta(self, timeout: float) -> Delta | None:
        while True:
            while self.pending:
                raw = self.pending.pop(0)
                if is_done(raw):
                    return None
                delta = parse_data(raw)
                if delta is None:
                    continue
                if delta.error is not None:
                    raise _Failed("server", self.model)
                return delta
            assert self.response is not None
            try:
                data = await asyncio.wait_for(self.response.content.readany(), timeout)
            except asyncio.TimeoutError:
                raise _Failed("slow", self.model) from None
            except (aiohttp.ClientError, ConnectionError):
                raise _Failed("server", self.model) from None
            if not data:
                self.pending.extend(self.decoder.flush())
                if not self.pending:
                    return None
            else:
                self.pending.extend(self.decoder.feed(data))


class SeedRouter(CustomLLM):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self._models: dict[str, list[str]] = {}
        self._cooling: dict[str, dict[str, float]] = {}
        self._session: aiohttp.ClientSession | None = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=15),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _catalogue(self, base: str) -> list[str]:
        if base not in self._models:
            async with self._sess().get(f"{base}/models") as response:
                payload = await response.json()
            free = [
                m
                for m in payload["data"]
                if m["id"].endswith(":free")
                and all(float(v) == 0 for v in (m.get("pricing") or {"x": 1}).values())
            ]
            free.sort(key=lambda m: (m.get("context_length") or 0, m["id"]))
            self._models[base] = [m["id"] for m in free]
        return self._models[base]

    def _cool(self, base: str, model: str, kind: str) -> None:
        seconds = {"rate_limited": 90.0, "server": 90.0, "slow": 15.0, "rejected": 90.0}[kind]
        self._cooling.setdefault(base, {})[model] = time.monotonic() + seconds * self.scale

    async def _start(
        self, contender: _Contender, url: str, headers: dict[str, str], body: dict[str, Any]
    ) -> _Contender:
        deadline = time.monotonic() + 30.0 * self.scale
        try:
            payload = json.dumps(dict(body, model=contender.model, stream=True))
            contender.response = await asyncio.wait_for(
                self._sess().post(url, data=payload, headers=headers), 30.0 * self.scale
            )
        except asyncio.TimeoutError:
            raise _Failed("slow", contender.model) from None
        except (aiohttp.ClientError, ConnectionError):
            raise _Failed("server", contender.model) from None
        status = contender.response.status
        if status != 200:
            contender.close()
            kind = (
                "rate_limited"
                if status == 429
                else ("server" if status >= 500 or status == 408 else "rejected")
            )
            raise _Failed(kind, contender.model)
        while True:
            delta = await contender.next_delta(max(0.0, deadline - time.monotonic()))
            if delta is None:
                raise _Failed("server", contender.model)  # ended without a token
            contender.buffered.append(delta)
            if delta.is_token:
                return contender

    async def _race(self, base: str, key: str, body: dict[str, Any]) -> _Contender:
        order = await self._catalogue(base)
        cooling = self._cooling.setdefault(base, {})
        url = f"{base}/chat/completions"
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        tried: set[str] = set()
        while True:
            now = time.monotonic()
            batch = [m for m in order if m not in tried and cooling.get(m, 0.0) <= now][:BATCH]
            if not batch:
                raise litellm.ServiceUnavailableError(
                    message="seedrouter: every free model failed or is cooling down",
                    llm_provider="seedrouter",
                    model="auto",
                    response=httpx.Response(503, request=httpx.Request("POST", url)),
                )
            tried.update(batch)
            tasks = {
                asyncio.ensure_future(self._start(_Contender(m), url, headers, body)): m
                for m in batch
            }
            contenders: dict[asyncio.Future[_Contender], str] = dict(tasks)
            winner: _Contender | None = None
            try:
                pending = set(tasks)
                while pending and winner is None:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        exc = task.exception()
                        if exc is None:
                            if winner is None:
                                winner = task.result()
                            else:
                                task.result().close()
                        elif isinstance(exc, _Failed):
                            self._cool(base, exc.model, exc.kind)
                        else:
                            self._cool(base, contenders[task], "server")
            finally:
                for task in tasks:
                    if not task.done():
                        task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for task in tasks:
                    won = task.done() and not task.cancelled() and task.exception() is None
                    if won and task.result() is not winner:
                        task.result().close()
            if winner is not None:
                return winner

    async def astreaming(
        self,
        model: str,
        messages: list[Any],
        api_base: str | None,  # type: ignore[override]
        custom_prompt_dict: dict[str, Any],
        model_response: Any,
        print_verbose: Any,
        encoding: Any,
        api_key: str | None,
        logging_obj: Any,
        optional_params: dict[str, Any],
        acompletion: Any = None,
        litellm_params: Any = None,
        logger_fn: Any = None,
        headers: Any = None,
        timeout: Any = None,
        client: Any = None,
    ) -> AsyncIterator[dict[str, Any]]:
        assert api_base is not None and api_key is not None
        body: dict[str, Any] = {"messages": messages}
        winner = await self._race(api_base.rstrip("/"), api_key, body)
        usage = None
        finish = "stop"
        try:
            buffered, winner.buffered = winner.buffered, []
            while True:
                if buffered:
                    delta: Delta | None = buffered.pop(0)
                else:
                    try:
                        delta = await winner.next_delta(30.0 * self.scale)
                    except _Failed as failed:
                        self._cool(api_base.rstrip("/"), winner.model, failed.kind)
                        raise litellm.Timeout(
                            message=f"seedrouter: {winner.model} went silent mid-answer",
                            model="auto",
                            llm_provider="seedrouter",
                        ) from None
                if delta is None:
                    break
                usage = delta.usage or usage
                finish = delta.finish_reason or finish
                if delta.content:
                    yield {
                        "text": delta.content,
                        "tool_use": None,
                        "is_finished": False,
                        "finish_reason": "",
                        "usage": None,
                        "index": 0,
                    }
        finally:
            winner.close()
        yield {
            "text": "",
            "tool_use": None,
            "is_finished": True,
            "finish_reason": finish,
            "usage": usage
            and {
                k: usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")
            },
            "index": 0,
        }


def register(scale: float) -> SeedRouter:
    handler = SeedRouter(scale)
    litellm.custom_provider_map = [
        entry for entry in litellm.custom_provider_map if entry.get("provider") != "seedrouter"
    ] + [{"provider": "seedrouter", "custom_handler": handler}]
    from litellm.utils import custom_llm_setup

    custom_llm_setup()
    return handler
