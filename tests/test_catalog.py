"""The free-model list: what counts as free, ordering, first fetch, refresh and its failures."""

from __future__ import annotations

import asyncio
from typing import Any

import litellm
import pytest
from aiohttp import web

from litellm_freerouter.catalog import (
    Catalog,
    FreeModel,
    cached_models,
    is_free,
    parse_models,
    seed_order,
)
from litellm_freerouter.errors import CatalogUnavailable, NoModelAvailable
from litellm_freerouter.simulator import ModelScript

from .conftest import Upstream, env_router, fast

FREE = {"prompt": "0", "completion": "0", "request": "0", "image": "0"}


def test_free_means_suffix_and_zero_prices() -> None:
    """Both conditions are required: a ':free' id and every price zero."""
    assert is_free({"id": "a/b:free", "pricing": FREE})
    assert not is_free({"id": "a/b:free", "pricing": {**FREE, "completion": "0.000001"}})
    assert not is_free({"id": "a/b", "pricing": FREE})
    assert not is_free({"id": "a/b:free"})
    assert not is_free({"id": "a/b:free", "pricing": {"prompt": "free"}})


def test_parse_skips_malformed_entries() -> None:
    """Broken entries are skipped, good ones kept with their capabilities."""
    payload = {
        "data": [
            "junk",
            {"id": 5},
            {"id": "x/paid", "pricing": {"prompt": "1"}},
            {
                "id": "x/ok:free",
                "pricing": FREE,
                "context_length": 8192,
                "supported_parameters": ["tools", 3],
                "architecture": {"input_modalities": ["text", "image"]},
                "top_provider": {"max_completion_tokens": 1024},
            },
        ]
    }
    [model] = parse_models(payload)
    assert model.id == "x/ok:free" and model.context_length == 8192
    assert model.supports_tools and model.supports_images and model.max_completion_tokens == 1024
    with pytest.raises(CatalogUnavailable):
        parse_models({"nope": []})


def test_odd_figures_skip_a_field_or_an_entry_never_the_list() -> None:
    """An infinite or non-ASCII-digit figure is no figure; a field of the wrong type is ignored;
    a model listed twice is kept once (raced twice, one answer would spend two requests)."""
    payload = {
        "data": [
            {"id": "x/inf:free", "pricing": FREE, "context_length": float("inf"), "created": 1e999},
            {"id": "x/sup:free", "pricing": FREE, "context_length": "²", "created": "١٢"},
            {
                "id": "x/types:free",
                "pricing": FREE,
                "supported_parameters": 5,
                "architecture": {"input_modalities": "image"},
                "top_provider": [],
            },
            {"id": "x/twice:free", "pricing": FREE, "context_length": 1000},
            {"id": "x/twice:free", "pricing": FREE, "context_length": 9999},
        ]
    }
    models = {m.id: m for m in parse_models(payload)}
    assert list(models) == ["x/inf:free", "x/sup:free", "x/types:free", "x/twice:free"]
    assert models["x/inf:free"].context_length is None and models["x/inf:free"].created == 0
    assert models["x/sup:free"].context_length is None and models["x/sup:free"].created == 0
    assert models["x/types:free"].supported_parameters == frozenset()
    assert models["x/types:free"].input_modalities == frozenset({"text"})
    assert models["x/twice:free"].context_length == 1000


def test_a_damaged_stored_list_skips_its_bad_rows() -> None:
    """The stored list is the user's file: rows that are damaged, repeated or not free models
    are skipped, the rest kept."""
    good = FreeModel("a/ok:free", context_length=4096, supported_parameters=frozenset({"tools"}))
    rows = [
        good.as_dict(),
        {"name": "no id"},
        "junk",
        {"id": "a/paid"},
        {"id": "a/odd:free", "supported_parameters": [["unhashable"]], "provider": 7},
        good.as_dict(),
    ]
    models = cached_models(rows)
    assert [m.id for m in models] == ["a/ok:free", "a/odd:free"]
    assert models[0] == good
    assert models[1].supported_parameters == frozenset() and models[1].provider is None


async def test_an_empty_list_is_a_failed_refresh() -> None:
    """A refresh that lists no free model keeps the last good list and is retried soon, not
    after a whole interval; before any list, requests hear there is none."""
    answers: list[list[FreeModel]] = [[FreeModel("a/a:free")], [], []]

    async def fetch() -> list[FreeModel]:
        return answers.pop(0)

    catalog = Catalog(fetch, refresh_interval=3600)
    assert [m.id for m in await catalog.get()] == ["a/a:free"]
    assert await catalog.refresh() is False
    assert [m.id for m in await catalog.get()] == ["a/a:free"]
    assert catalog.last_error == "OpenRouter listed no free models"
    await catalog.aclose()

    empty = Catalog(fetch, refresh_interval=3600)
    with pytest.raises(NoModelAvailable, match="no free models"):
        await empty.get()
    assert empty.last_error == "OpenRouter listed no free models"
    await empty.aclose()


def test_seed_order_uses_provider_only_where_known() -> None:
    """Known fast providers lead; otherwise context window ascending (ids carry no provider)."""
    models = [
        FreeModel("groq-like/name:free", context_length=100),  # an author, not a provider
        FreeModel("b/big:free", context_length=9000),
        FreeModel("c/fast:free", context_length=50000, provider="Groq"),
        FreeModel("d/small:free", context_length=2000),
        FreeModel("e/cere:free", context_length=1000, provider="Cerebras"),
    ]
    assert [m.id for m in seed_order(models)] == [
        "c/fast:free",
        "e/cere:free",
        "groq-like/name:free",
        "d/small:free",
        "b/big:free",
    ]


async def test_refresh_failure_keeps_the_last_good_list() -> None:
    """A failed refresh keeps the list; a later one replaces it; the task refreshes on its own."""
    calls = 0
    second = asyncio.Event()
    lists = [[FreeModel("a/a:free")], RuntimeError("down"), [FreeModel("b/b:free")]]

    async def fetch() -> list[FreeModel]:
        nonlocal calls
        item = lists[min(calls, len(lists) - 1)]
        calls += 1
        if calls == 3:
            second.set()
        if isinstance(item, Exception):
            raise item
        return item

    catalog = Catalog(fetch, refresh_interval=0.01)
    assert [m.id for m in await catalog.get()] == ["a/a:free"]
    assert await catalog.refresh() is False
    assert [m.id for m in catalog.models or ()] == ["a/a:free"]
    await asyncio.wait_for(second.wait(), 5)  # the background task fetched again by itself
    await catalog.aclose()
    assert [m.id for m in catalog.models or ()] == ["b/b:free"]


async def test_the_background_refresh_goes_on_after_its_own_failures() -> None:
    """/models down at a scheduled refresh, twice: the list is kept, and the task keeps
    trying on its own until a fetch succeeds."""
    fetched = asyncio.Event()
    answers: list[Any] = [
        [FreeModel("a/a:free")],
        RuntimeError("down"),
        RuntimeError("still down"),
        [FreeModel("b/b:free")],
    ]
    seen: list[list[str] | None] = []

    async def fetch() -> list[FreeModel]:
        answer = answers[min(len(seen), len(answers) - 1)]
        seen.append(None if isinstance(answer, Exception) else [m.id for m in answer])
        if len(seen) == len(answers):
            fetched.set()
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    catalog = Catalog(fetch, refresh_interval=0.01)
    assert [m.id for m in await catalog.get()] == ["a/a:free"]  # starts the background task
    await asyncio.wait_for(fetched.wait(), 5)
    await catalog.aclose()
    assert seen[:4] == [["a/a:free"], None, None, ["b/b:free"]]
    assert [m.id for m in catalog.models or ()] == ["b/b:free"]


async def test_first_fetch_failure_is_a_clear_error() -> None:
    """With no list at all, a failed fetch says the list could not be fetched."""

    async def fetch() -> list[FreeModel]:
        raise OSError("connection refused")

    catalog = Catalog(fetch, refresh_interval=3600)
    with pytest.raises(CatalogUnavailable, match="could not fetch the free-model list"):
        await catalog.get()
    await catalog.aclose()


def test_fetched_on_first_request_not_at_import(upstream: Upstream) -> None:
    """The list is fetched by the first request, once, not at import or registration."""
    import litellm_freerouter

    litellm_freerouter.register()
    assert upstream.sim.models_fetches == 0
    upstream.sim.set_models([fast("a/a:free", "hi")])
    for _ in range(3):
        litellm.completion(model="freerouter/auto", messages=[{"role": "user", "content": "x"}])
    assert upstream.sim.models_fetches == 1


def test_no_free_models_is_a_clear_error(upstream: Upstream) -> None:
    """A catalogue without free models fails the call saying so."""
    upstream.sim.set_models([ModelScript("paid/a", free=False)])
    with pytest.raises(litellm.ServiceUnavailableError, match="no free models"):
        litellm.completion(model="freerouter/auto", messages=[{"role": "user", "content": "x"}])
    assert upstream.sim.requests == []


def test_models_endpoint_down_at_start(upstream: Upstream) -> None:
    """If /models fails on first use the caller hears so, with the status."""
    upstream.sim.models_status = 503
    with pytest.raises(litellm.ServiceUnavailableError, match="503"):
        litellm.completion(model="freerouter/auto", messages=[{"role": "user", "content": "x"}])


def test_refresh_keeps_health(upstream: Upstream) -> None:
    """A refreshed list keeps what was learned: a cooling model stays cooling."""
    from litellm_freerouter import engine

    upstream.sim.set_models(
        [
            ModelScript("bad/a:free", context_length=10, status=503),
            fast("ok/b:free", "fine", context_length=20),
        ]
    )
    # One contender at a time, bad/a first (the smaller context): its 503 is always met.
    litellm.completion(
        model="freerouter/auto", messages=[{"role": "user", "content": "x"}], race_width=1
    )
    router = env_router()
    assert router.health.cooling_for("bad/a:free") > 0
    assert engine.get_engine().submit(router.catalog.refresh()).result(5) is True
    assert upstream.sim.models_fetches == 2
    assert router.health.cooling_for("bad/a:free") > 0


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('{"error": {"message": "Service down for maintenance", "code": 503}}', "(Service down"),
        ("<html>Bad gateway</html>\n<body>nginx</body>", "(<html>Bad gateway</html>)"),
        ("", None),
    ],
    ids=["openrouter-json", "html", "empty"],
)
async def test_models_failure_says_what_the_endpoint_said(
    aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch, body: str, says: str | None
) -> None:
    """A failed first fetch quotes the endpoint's own message (or its first line), briefly."""

    async def models(_request: web.Request) -> web.Response:
        return web.Response(status=503, text=body)

    app = web.Application()
    app.router.add_get("/api/v1/models", models)
    server = await aiohttp_server(app)
    base = str(server.make_url("/api/v1"))
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-test")
    with pytest.raises(litellm.ServiceUnavailableError) as caught:
        await litellm.acompletion(
            model="freerouter/auto", api_base=base, messages=[{"role": "user", "content": "x"}]
        )
    said = str(caught.value)
    assert f"could not fetch the free-model list: GET {base}/models answered 503" in said
    if says is None:
        assert said.rstrip().endswith("answered 503"), said
    else:
        assert says in said, said
    assert "nginx" not in said
