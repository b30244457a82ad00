"""The free-model list: what counts as free, how it is fetched, kept and refreshed."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import events
from .errors import CatalogUnavailable, NoModelAvailable

# The seed's "fastest inference providers first", applied only where the serving provider is
# actually known (from /endpoints data): OpenRouter ids start with the model's author.
PROVIDER_PRIORITY = ("groq", "cerebras", "fireworks", "together", "mistral")


@dataclass(frozen=True, slots=True)
class FreeModel:
    id: str
    name: str = ""
    context_length: int | None = None
    max_completion_tokens: int | None = None
    supported_parameters: frozenset[str] = frozenset()
    input_modalities: frozenset[str] = frozenset({"text"})
    # The serving provider, where known (never inferred from the id).
    provider: str | None = None
    created: int = 0

    @property
    def supports_tools(self) -> bool:
        return "tools" in self.supported_parameters

    @property
    def supports_images(self) -> bool:
        return "image" in self.input_modalities

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "context_length": self.context_length,
            "max_completion_tokens": self.max_completion_tokens,
            "supported_parameters": sorted(self.supported_parameters),
            "input_modalities": sorted(self.input_modalities),
            "provider": self.provider,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FreeModel:
        return cls(
            id=str(raw["id"]),
            name=str(raw.get("name") or ""),
            context_length=_int(raw.get("context_length")),
            max_completion_tokens=_int(raw.get("max_completion_tokens")),
            supported_parameters=frozenset(_strings(raw.get("supported_parameters"))),
            input_modalities=frozenset(_strings(raw.get("input_modalities")) or ("text",)),
            provider=raw.get("provider") if isinstance(raw.get("provider"), str) else None,
            created=_int(raw.get("created")) or 0,
        )


def _int(value: Any) -> int | None:
    """A positive whole number from a listed figure, else None (never an error)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _zero(price: Any) -> bool:
    try:
        return float(price) == 0.0
    except (TypeError, ValueError):
        return False


def is_free(raw: Mapping[str, Any]) -> bool:
    """Free means both: the id ends in ':free' and every listed price is zero."""
    model_id = raw.get("id")
    pricing = raw.get("pricing")
    if not isinstance(model_id, str) or not model_id.endswith(":free"):
        return False
    if not isinstance(pricing, Mapping) or not pricing:
        return False
    return all(_zero(value) for value in pricing.values())


def parse_models(payload: Any) -> list[FreeModel]:
    """The free models of a /models answer; anything malformed is skipped."""
    data = payload.get("data") if isinstance(payload, Mapping) else None
    if not isinstance(data, list):
        raise CatalogUnavailable("the /models answer has no 'data' list")
    models: list[FreeModel] = []
    seen: set[str] = set()
    for raw in data:
        # A model listed twice is raced once (twice would spend two requests on one answer).
        if not isinstance(raw, Mapping) or not is_free(raw) or raw["id"] in seen:
            continue
        top: Mapping[str, Any] = _mapping(raw.get("top_provider"))
        arch: Mapping[str, Any] = _mapping(raw.get("architecture"))
        params = raw.get("supported_parameters")
        modalities = arch.get("input_modalities")
        models.append(
            FreeModel(
                id=raw["id"],
                name=str(raw.get("name") or raw["id"]),
                context_length=_int(raw.get("context_length")) or _int(top.get("context_length")),
                max_completion_tokens=_int(top.get("max_completion_tokens")),
                supported_parameters=frozenset(_strings(params)),
                input_modalities=frozenset(_strings(modalities) or ("text",)),
                created=_int(raw.get("created")) or 0,
            )
        )
        seen.add(raw["id"])
    return models


def _strings(value: Any) -> list[str]:
    """The strings of a listed array (anything else in it, or instead of it, is ignored)."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, (list, tuple)) else []


def cached_models(rows: Iterable[Any]) -> list[FreeModel]:
    """The models of a stored list, skipping any row that is damaged or not a free model (the
    state file is the user's, and may be edited or half-written)."""
    models: list[FreeModel] = []
    seen: set[str] = set()
    for row in rows:
        model_id = row.get("id") if isinstance(row, Mapping) else None
        if not isinstance(model_id, str) or not model_id.endswith(":free") or model_id in seen:
            continue
        try:
            model = FreeModel.from_dict(row)
        except (TypeError, ValueError):
            continue
        models.append(model)
        seen.add(model_id)
    return models


def seed_order(models: Iterable[FreeModel]) -> list[FreeModel]:
    """The seed's ordering, done right: known fast providers first, then context ascending."""

    def key(model: FreeModel) -> tuple[int, int, str]:
        provider = (model.provider or "").lower()
        rank = next(
            (i for i, name in enumerate(PROVIDER_PRIORITY) if provider.startswith(name)),
            len(PROVIDER_PRIORITY),
        )
        return rank, model.context_length or 0, model.id

    return sorted(models, key=key)


class Catalog:
    """Owns the list and the background task that refreshes it (``start``/``aclose``)."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[list[FreeModel]]],
        *,
        refresh_interval: float,
        clock: Callable[[], float] = time.time,
        on_update: Callable[[Sequence[FreeModel]], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self.refresh_interval = refresh_interval
        self._clock = clock
        self._on_update = on_update
        self._models: tuple[FreeModel, ...] | None = None
        self.fetched_at: float | None = None
        self.last_error: str | None = None
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def models(self) -> tuple[FreeModel, ...] | None:
        return self._models

    @property
    def needs_loop(self) -> bool:
        """Whether :meth:`get` would fetch the list or start the refresh task."""
        return self._models is None or (self._task is None and not self._closed)

    def preload(self, models: Sequence[FreeModel], fetched_at: float) -> None:
        """Serve a cached list at once (from persistent state) until a refresh replaces it."""
        if self._models is None:
            self._models = tuple(models)
            self.fetched_at = fetched_at

    def annotate(self, providers: Mapping[str, str]) -> None:
        """Record each model's serving provider, and order the list again by it."""
        if self._models is None:
            return
        self._models = tuple(
            seed_order(
                dataclasses.replace(m, provider=providers.get(m.id, m.provider))
                for m in self._models
            )
        )

    async def get(self) -> tuple[FreeModel, ...]:
        """The current list; fetches it on first use, and starts the refresh task."""
        if self._models is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._models is None:
                    await self.refresh(raise_errors=True)
        self.start()
        assert self._models is not None
        if not self._models:
            raise NoModelAvailable("OpenRouter lists no free models right now")
        return self._models

    def stale(self) -> bool:
        return self.fetched_at is None or self._clock() - self.fetched_at >= self.refresh_interval

    async def refresh(self, *, raise_errors: bool = False) -> bool:
        """Fetch again; a failure keeps the last good list.

        A list with no free model in it counts as a failure too, retried within a minute: after
        a good list that list is kept (one odd answer must not stop every request for an hour);
        before any, requests are told there is none until a fetch finds some.
        """
        try:
            models = await self._fetch()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            if raise_errors and self._models is None:
                said = str(exc) if isinstance(exc, CatalogUnavailable) else self.last_error
                raise CatalogUnavailable(f"could not fetch the free-model list: {said}") from exc
            return False
        if not models:
            self._failed("OpenRouter listed no free models")
            if not self._models:
                self._models = ()
                self.fetched_at = self._clock()
            return False
        self._models = tuple(models)
        self.fetched_at = self._clock()
        self.last_error = None
        events.emit(events.CatalogRefreshed(count=len(models), ok=True))
        if self._on_update is not None:
            self._on_update(self._models)
        return True

    def _failed(self, error: str) -> None:
        self.last_error = error
        events.emit(events.CatalogRefreshed(count=len(self._models or ()), ok=False, error=error))

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="freerouter-catalog-refresh"
            )

    async def _run(self) -> None:
        while not self._closed:
            due = self.refresh_interval
            if self.fetched_at is not None:
                due = self.fetched_at + self.refresh_interval - self._clock()
            if self.last_error is not None:
                # Retry a failed refresh sooner than a full interval.
                due = min(due, 60.0)
            # A floor, so that a tiny interval can never become a busy loop.
            await asyncio.sleep(max(due, 0.05))
            await self.refresh()

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=2)
