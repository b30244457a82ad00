"""The simulated free tier served over loopback: the package's simulator, one script per request.

``python bench/tier_server.py --tier tier.json --time-scale 0.1`` prints ``READY <api_base>``.
Besides OpenRouter's routes it serves ``POST /bench/reset`` (a fresh account and clock for the
next policy, optionally with a daily quota) and ``GET /bench/log`` (every chat request with the
request number, model, attempt and what the tier made it do).

Each chat request is played from a :class:`ModelScript` made for it alone, from the seeded
draw of ``(model, request, attempt)``: the stock simulator serves one fixed script per model,
so a context variable hands the per-request script to its handler (see ``_Scripts``).
Per-model rate limits and outages are decided here, on the simulated clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import dataclasses
import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tier import ANSWER, RATE_WINDOW, REQUEST_TAG, Tier, TierModel

from litellm_freerouter.simulator import ModelScript, Simulator, serve_until_signalled

OPENROUTER_FREE = "openrouter/free"

_CURRENT: contextvars.ContextVar[ModelScript | None] = contextvars.ContextVar(
    "bench_tier_script", default=None
)


class _Scripts(dict):  # type: ignore[type-arg]
    """The model table; inside a chat handler it answers with that request's own script."""

    def get(self, key: Any, default: Any = None) -> Any:
        script = _CURRENT.get()
        return script if script is not None else dict.get(self, key, default)

    def __getitem__(self, key: Any) -> Any:
        script = _CURRENT.get()
        return script if script is not None else dict.__getitem__(self, key)


def _base_script(model: TierModel, time_scale: float) -> ModelScript:
    return ModelScript(
        id=model.id,
        context_length=model.context_length,
        chunks=ANSWER,
        chunk_delay=model.chunk_delay,
        keepalives=0,
        # OpenRouter's published first-token latency, on the scaled clock like everything else.
        endpoint_latency_ms=model.published_p50 * time_scale * 1000.0,
        provider_name="SimProvider",
    )


class TierSimulator(Simulator):
    def __init__(self, tier: Tier, time_scale: float) -> None:
        self.tier = tier
        super().__init__([_base_script(m, time_scale) for m in tier.models], time_scale=time_scale)
        self._reset(None)

    def set_models(self, models: Any) -> None:
        self.models = _Scripts({script.id: script for script in models})

    def _reset(self, quota: int | None) -> None:
        self.t0 = time.monotonic()
        self.daily_quota = quota
        self.quota_used = 0
        self.requests = []
        self.attempts: dict[tuple[int, str], int] = {}
        self.windows: dict[str, deque[float]] = {m.id: deque() for m in self.tier.models}
        self.log: list[dict[str, Any]] = []

    def now(self) -> float:
        """Simulated seconds since the last reset."""
        return (time.monotonic() - self.t0) / self.time_scale

    def app(self) -> web.Application:
        app = super().app()
        app.add_routes(
            [web.post("/bench/reset", self._bench_reset), web.get("/bench/log", self._bench_log)]
        )
        return app

    async def _bench_reset(self, request: web.Request) -> web.Response:
        raw = request.query.get("quota")
        self._reset(int(raw) if raw else None)
        return web.json_response({"ok": True})

    async def _bench_log(self, request: web.Request) -> web.Response:
        return web.json_response({"log": self.log, "quota_used": self.quota_used})

    def _decide(
        self, model_id: str, req: int, entry: dict[str, Any]
    ) -> tuple[ModelScript | None, float]:
        """This attempt's script and how long an error waits before it is sent."""
        if model_id == OPENROUTER_FREE:
            model = self.tier.random_model(req, self._next_attempt(req, OPENROUTER_FREE))
            entry["picked"] = model.id
        else:
            found = self.tier.model(model_id)
            if found is None:
                return None, 0.0  # unknown: the stock simulator answers 404
            model = found
        base = dict.__getitem__(self.models, model.id)
        attempt = self._next_attempt(req, model.id)
        entry["attempt"] = attempt
        now = self.now()
        error_delay = 0.15
        if model.down_at(now):
            entry["decision"] = "outage"
            return dataclasses.replace(base, status=503), error_delay
        window = self.windows[model.id]
        while window and window[0] <= now - RATE_WINDOW:
            window.popleft()
        if len(window) >= model.rpm:
            entry["decision"] = "rate_limited"
            # OpenRouter's wording for a model's own per-minute limit (REFERENCE.md).
            return dataclasses.replace(
                base,
                status=429,
                error_message=f"Rate limit exceeded: limit_rpm/{model.id}/sim. High demand for"
                f" {model.id} on OpenRouter - limited to {model.rpm} requests per minute."
                " Please retry shortly.",
            ), error_delay
        window.append(now)
        draw = self.tier.draw(model, req, attempt)
        entry["ttft"] = round(draw.ttft, 4)
        if draw.kind == "error":
            entry["decision"] = f"error:{draw.status}"
            if draw.error_in_stream:
                # A 200, then an error event where the first token should have been.
                return dataclasses.replace(
                    base,
                    first_token_delay=draw.error_delay,
                    error_chunk_after=0,
                    error_code=draw.status,
                ), 0.0
            return dataclasses.replace(base, status=draw.status), draw.error_delay
        if draw.kind == "stall_before":
            entry["decision"] = "stall_before"
            return dataclasses.replace(base, stall_before_first_token=True), 0.0
        entry["decision"] = "ok" if draw.stall_after is None else "stall_after"
        return dataclasses.replace(
            base, first_token_delay=draw.ttft, stall_after_chunks=draw.stall_after
        ), 0.0

    def _next_attempt(self, req: int, model_id: str) -> int:
        attempt = self.attempts.get((req, model_id), 0)
        self.attempts[(req, model_id)] = attempt + 1
        return attempt

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()  # aiohttp keeps it: the stock handler reads it again
        tag = REQUEST_TAG.search(raw)
        try:
            model_id = str(json.loads(raw).get("model", ""))
        except (ValueError, AttributeError):
            model_id = ""
        req = int(tag.group(1)) if tag else -1
        entry: dict[str, Any] = {"req": req, "model": model_id, "start": round(self.now(), 4)}
        self.log.append(entry)
        if self.daily_quota is not None and self.quota_used >= self.daily_quota:
            entry["decision"] = "daily_quota"
            return await super()._chat(request)  # the stock simulator refuses it
        script, delay = self._decide(model_id, req, entry)
        token = _CURRENT.set(script)
        try:
            if delay > 0:
                await asyncio.sleep(delay * self.time_scale)
            response = await super()._chat(request)
            entry.setdefault("result", "done")
            return response
        except asyncio.CancelledError:
            entry["result"] = "client_closed"
            raise
        finally:
            _CURRENT.reset(token)
            entry["end"] = round(self.now(), 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tier", required=True)
    parser.add_argument("--time-scale", type=float, required=True)
    args = parser.parse_args()
    tier = Tier.from_json(json.loads(Path(args.tier).read_text()))
    simulator = TierSimulator(tier, args.time_scale)

    asyncio.run(serve_until_signalled(simulator, backlog=1024))


if __name__ == "__main__":
    main()
