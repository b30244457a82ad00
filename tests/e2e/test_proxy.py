"""The LiteLLM proxy serving freerouter/auto from one config entry, spoken to with the openai SDK.

Each proxy is a real ``litellm --config`` process in front of a fake OpenRouter (a simulator in
this process, so its records and open streams can be checked).  ``example_proxy`` runs
config.example.yaml exactly as shipped; ``shim_proxy`` runs it switched to the 1.81.x shim with
``race_width: 1``, the upstream key and ``api_base`` given as litellm_params, on this
interpreter's litellm and, when ``FREEROUTER_PROXY181_VENV`` names a venv with
``litellm[proxy]==1.81.10`` and this package, on that one too.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from litellm_freerouter.config import TUNABLES, load_settings
from litellm_freerouter.simulator import (
    ModelScript,
    RecordedRequest,
    Simulator,
    SimulatorThread,
    words,
)

from .proxy_harness import (
    EXAMPLE_CONFIG,
    Proxy,
    copy_example_config,
    example_config,
    litellm_script,
    proxy_env,
    write_shim_config,
)

pytestmark = pytest.mark.e2e

MODEL = "freerouter/auto"
MASTER_KEY = "sk-e2e-master-" + secrets.token_hex(12)
UPSTREAM_KEY = "sk-or-e2e-" + secrets.token_hex(12)
PROMPT_TOKENS = 17

# Well inside the example config's idle_timeout (30 s): an upstream stream closed within this
# was closed because the client left, not because the router gave up on a silent model.
DISCONNECT_DEADLINE = 10.0


SWIFT = ModelScript(
    "acme/swift-8b:free",
    first_token_delay=0.2,
    chunks=words("The swift model answers first."),
    prompt_tokens=PROMPT_TOKENS,
)
STEADY = ModelScript(
    "acme/steady-24b:free",
    first_token_delay=1.0,
    chunks=words("A steady model takes its time."),
    prompt_tokens=PROMPT_TOKENS,
)
SLOW = ModelScript(
    "acme/slow-70b:free",
    first_token_delay=1.5,
    chunks=words("The slow model would have said this."),
    prompt_tokens=PROMPT_TOKENS,
)
SCRIPTS = (SWIFT, STEADY, SLOW)
TEXT = {script.id: "".join(script.chunks) for script in SCRIPTS}
PIECES = {script.id: len(script.chunks) for script in SCRIPTS}

# Varied words: litellm aborts a stream that repeats one chunk too often.
LONG = words(" ".join(f"word{i}" for i in range(200)))


@dataclass
class FakeOpenRouter:
    """The fake OpenRouter behind every proxy of this module."""

    sim: Simulator
    thread: SimulatorThread

    def mark(self) -> int:
        return len(self.sim.requests)

    def since(self, mark: int) -> list[RecordedRequest]:
        return self.sim.requests[mark:]

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until no upstream response is open (AssertionError after ``timeout``)."""
        self.thread.call(lambda: self.sim.wait_idle(timeout))

    @contextmanager
    def behaving(self, scripts: Sequence[ModelScript]) -> Iterator[None]:
        """Swap the models' behaviour (same ids, so routers' catalogues stay valid)."""

        async def use(models: Sequence[ModelScript]) -> None:
            self.sim.set_models(models)

        self.thread.call(lambda: use(scripts))
        try:
            yield
        finally:
            self.thread.call(lambda: use(SCRIPTS))


@pytest.fixture(scope="module")
def openrouter() -> Iterator[FakeOpenRouter]:
    """A fake OpenRouter that insists on the upstream key."""
    sim = Simulator(SCRIPTS, api_key=UPSTREAM_KEY)
    with SimulatorThread(sim) as thread:
        yield FakeOpenRouter(sim, thread)


@pytest.fixture(scope="module")
def example_proxy(
    openrouter: FakeOpenRouter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """config.example.yaml as shipped, configured the documented way: through the environment."""
    directory = tmp_path_factory.mktemp("example-proxy")
    env = proxy_env(
        {
            "OPENROUTER_API_KEY": UPSTREAM_KEY,
            "OPENROUTER_API_BASE": openrouter.thread.url,
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "FREEROUTER_STATE_DIR": str(directory / "state"),
        }
    )
    proxy = Proxy(copy_example_config(directory), env, secrets=(MASTER_KEY, UPSTREAM_KEY))
    yield proxy.start()
    proxy.stop()


def _installs() -> list[Any]:
    """This interpreter's litellm, plus a 1.81.x proxy venv when CI provides one."""
    installs = [pytest.param(Path(sys.executable).parent, id="this-litellm")]
    venv = os.environ.get("FREEROUTER_PROXY181_VENV")
    if venv:
        installs.append(pytest.param(Path(venv) / "bin", id="litellm-1.81"))
    return installs


@pytest.fixture(scope="module", params=_installs())
def shim_proxy(
    request: pytest.FixtureRequest,
    openrouter: FakeOpenRouter,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    """The shim config with race_width: 1, and the key and api_base as litellm_params only."""
    directory = tmp_path_factory.mktemp("shim-proxy")
    config = write_shim_config(
        directory,
        {
            "race_width": 1,
            "api_key": "os.environ/E2E_UPSTREAM_KEY",
            "api_base": openrouter.thread.url,
        },
    )
    env = proxy_env(
        {
            "E2E_UPSTREAM_KEY": UPSTREAM_KEY,
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "FREEROUTER_STATE_DIR": str(directory / "state"),
        }
    )
    proxy = Proxy(
        config, env, script=litellm_script(request.param), secrets=(MASTER_KEY, UPSTREAM_KEY)
    )
    yield proxy.start()
    proxy.stop()


@contextmanager
def client_of(proxy: Proxy, api_key: str = MASTER_KEY) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{proxy.url}/v1", api_key=api_key, max_retries=0, timeout=60.0
    ) as client:
        yield client


def ask(text: str) -> Any:
    return [{"role": "user", "content": text}]


def content_of(chunk: Any) -> str:
    return (chunk.choices[0].delta.content or "") if chunk.choices else ""


def stream_once(proxy: Proxy, prompt: str) -> tuple[str, set[str | None], list[Any]]:
    """Text, the freerouter_model values of every chunk, and every chunk."""
    with client_of(proxy) as client:
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=ask(prompt),
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    text = "".join(content_of(chunk) for chunk in chunks)
    winners = {(c.model_extra or {}).get("freerouter_model") for c in chunks}
    return text, winners, chunks


def check_usage(chunks: list[Any], winner: str) -> None:
    with_usage = [i for i, chunk in enumerate(chunks) if chunk.usage is not None]
    assert with_usage == [len(chunks) - 1], "usage comes once, on the last chunk"
    usage = chunks[-1].usage
    assert usage.prompt_tokens == PROMPT_TOKENS
    assert usage.completion_tokens == PIECES[winner]
    assert usage.total_tokens == PROMPT_TOKENS + PIECES[winner]


# What the proxy hands the handler for its own use, never for OpenRouter.
PROXY_ONLY = {"metadata", "max_retries", "api_key", "litellm_call_id", "proxy_server_request"}


def check_upstream_bodies(records: list[RecordedRequest]) -> None:
    for rec in records:
        assert rec.authorized, "the upstream key reached the handler"
        leaked = (set(TUNABLES) | PROXY_ONLY) & set(rec.body)
        assert not leaked, f"sent upstream: {leaked}"
        assert rec.body["messages"], rec.body


# --- the example config, as shipped ------------------------------------------------------------


def test_example_config_litellm_params_are_all_known() -> None:
    """Every litellm_params key of the example is litellm's own or a freerouter tunable."""
    (entry,) = example_config()["model_list"]
    assert entry["model_name"] == MODEL
    extras = set(entry["litellm_params"]) - {"model", "api_key", "api_base"}
    assert extras <= set(TUNABLES), extras - set(TUNABLES)
    assert entry["litellm_params"]["api_key"] == "os.environ/OPENROUTER_API_KEY"
    # It shows every tunable, as the README says: the optional ones as comments.
    text = EXAMPLE_CONFIG.read_text()
    assert [t for t in TUNABLES if not re.search(rf"^\s+#? ?{t}: ", text, re.M)] == []


def test_example_config_leaves_every_tunable_to_the_environment() -> None:
    """A key set in the config beats FREEROUTER_<NAME>; the example sets none, so the
    README's advice (e.g. FREEROUTER_HEDGE_DELAY=auto) reaches a proxy run from it."""
    (entry,) = example_config()["model_list"]
    environ = {"FREEROUTER_HEDGE_DELAY": "auto", "FREEROUTER_RACE_WIDTH": "2"}
    settings = load_settings(entry["litellm_params"], environ=environ)
    assert (settings.hedge_delay, settings.race_width) == ("auto", 2)
    assert set(entry["litellm_params"]) & set(TUNABLES) == set()


def test_streamed_completion(example_proxy: Proxy, openrouter: FakeOpenRouter) -> None:
    """A stream through the proxy: the fastest model's text, its id in each chunk, usage last."""
    mark = openrouter.mark()
    text, winners, chunks = stream_once(example_proxy, "Stream a short answer.")
    assert winners == {SWIFT.id}
    assert text == TEXT[SWIFT.id]
    assert {chunk.model for chunk in chunks} == {MODEL}
    check_usage(chunks, SWIFT.id)
    openrouter.wait_idle()
    records = openrouter.since(mark)
    # The example's race_width: 3 races all three; the losers are hung up on.
    assert sorted(rec.model for rec in records) == sorted(TEXT)
    assert {rec.model: rec.outcome for rec in records} == {
        SWIFT.id: "ok",
        STEADY.id: "client_closed",
        SLOW.id: "client_closed",
    }
    check_upstream_bodies(records)


def test_non_streamed_completion(example_proxy: Proxy, openrouter: FakeOpenRouter) -> None:
    """A whole answer through the proxy: text, usage and freerouter_model in the JSON."""
    mark = openrouter.mark()
    with client_of(example_proxy) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=ask("Answer in one go."),
        )
        response = raw.parse()
    assert raw.http_response.json()["freerouter_model"] == SWIFT.id
    assert (response.model_extra or {})["freerouter_model"] == SWIFT.id
    assert response.model == MODEL
    assert response.choices[0].message.content == TEXT[SWIFT.id]
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert response.usage.prompt_tokens == PROMPT_TOKENS
    assert response.usage.completion_tokens == PIECES[SWIFT.id]
    openrouter.wait_idle()
    check_upstream_bodies(openrouter.since(mark))


def test_client_disconnect_closes_the_upstream_stream(
    example_proxy: Proxy, openrouter: FakeOpenRouter
) -> None:
    """A client hanging up mid-stream makes the proxy close the winner's upstream at once."""
    stalling = [replace(s, chunks=LONG, stall_after_chunks=2) for s in SCRIPTS]
    with openrouter.behaving(stalling):
        mark = openrouter.mark()
        with client_of(example_proxy) as client:
            stream = client.chat.completions.create(
                model=MODEL,
                messages=ask("Tell me a very long story."),
                stream=True,
            )
            with stream:
                first = next(chunk for chunk in stream if content_of(chunk))
            # Leaving ``with stream`` closed the connection while the model was mid-answer.
        winner = (first.model_extra or {})["freerouter_model"]
        assert content_of(first) == LONG[0]
        openrouter.wait_idle(DISCONNECT_DEADLINE)
        outcomes = {rec.model: rec.outcome for rec in openrouter.since(mark)}
    assert outcomes[winner] == "client_closed"
    assert set(outcomes.values()) == {"client_closed"}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"model": MODEL}, id="no-messages"),
        pytest.param({"model": MODEL, "messages": "hello"}, id="messages-a-string"),
        pytest.param({"model": MODEL, "messages": []}, id="messages-empty"),
        pytest.param({"model": MODEL, "messages": ask("hi"), "race_width": 0}, id="bad-tunable"),
    ],
)
def test_malformed_request_is_refused_and_the_proxy_keeps_serving(
    example_proxy: Proxy, openrouter: FakeOpenRouter, body: dict[str, Any]
) -> None:
    """A malformed request gets a 4xx without reaching upstream; the next request succeeds."""
    mark = openrouter.mark()
    response = httpx.post(
        f"{example_proxy.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=60.0,
    )
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()
    assert UPSTREAM_KEY not in response.text
    if "race_width" in body:
        assert "race_width" in response.json()["error"]["message"]
    assert openrouter.since(mark) == []
    text, winners, _ = stream_once(example_proxy, "Still there?")
    assert winners == {SWIFT.id}
    assert text == TEXT[SWIFT.id]


@pytest.mark.parametrize("key", ["sk-not-the-master-key", "wrong", ""])
def test_wrong_key_is_refused_before_upstream(
    example_proxy: Proxy, openrouter: FakeOpenRouter, key: str
) -> None:
    """Only holders of the master key (or a virtual key) may spend the OpenRouter quota."""
    mark = openrouter.mark()
    response = httpx.post(
        f"{example_proxy.url}/v1/chat/completions",
        json={"model": MODEL, "messages": ask("hi")},
        headers={"Authorization": f"Bearer {key}"} if key else {},
        timeout=60.0,
    )
    # Without a database, litellm 1.108 answers an unknown sk- key with 400 "No connected db",
    # and a missing header with a 500 (it looks for prisma); refused either way.
    assert response.status_code >= 400, response.text
    assert openrouter.since(mark) == []


def uncomment_hedged_entry(text: str) -> str:
    """config.example.yaml with its commented-out freerouter/hedged entry switched on, as the
    comment above it says to."""
    lines = text.splitlines(keepends=True)
    start = lines.index("  # - model_name: freerouter/hedged\n")
    end = start + 1
    while lines[end].startswith("  #   "):
        end += 1
    entry = ["  " + line[4:] for line in lines[start:end]]
    return "".join(lines[:start] + entry + lines[end:])


@pytest.fixture(scope="module")
def hedged_proxy(
    openrouter: FakeOpenRouter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """The example config with its freerouter/hedged entry uncommented."""
    directory = tmp_path_factory.mktemp("hedged-proxy")
    config = directory / "config.yaml"
    config.write_text(uncomment_hedged_entry(EXAMPLE_CONFIG.read_text()), encoding="utf-8")
    env = proxy_env(
        {
            "OPENROUTER_API_KEY": UPSTREAM_KEY,
            "OPENROUTER_API_BASE": openrouter.thread.url,
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "FREEROUTER_STATE_DIR": str(directory / "state"),
        }
    )
    proxy = Proxy(config, env, secrets=(MASTER_KEY, UPSTREAM_KEY))
    yield proxy.start()
    proxy.stop()


def test_the_examples_hedged_entry_asks_one_model_where_auto_races(
    hedged_proxy: Proxy, openrouter: FakeOpenRouter
) -> None:
    """Uncommented, the example's second entry serves freerouter/hedged: from empty state the
    first-ranked model answers alone (an unmeasured model gets 6.6 s before a hedge; the
    slowest here answers in 1.5 s), while freerouter/auto on the same proxy races all three."""
    names = [
        entry["model_name"]
        for entry in yaml.safe_load(hedged_proxy.config.read_text())["model_list"]
    ]
    assert names == [MODEL, "freerouter/hedged"]
    openrouter.wait_idle()
    mark = openrouter.mark()
    with client_of(hedged_proxy) as client:
        reply = client.chat.completions.create(model="freerouter/hedged", messages=ask("hedged"))
    (sent,) = openrouter.since(mark)
    assert reply.model_extra["freerouter_model"] == sent.model
    assert reply.choices[0].message.content == TEXT[sent.model]
    mark = openrouter.mark()
    with client_of(hedged_proxy) as client:
        reply = client.chat.completions.create(model=MODEL, messages=ask("raced"))
    assert sorted(rec.model for rec in openrouter.since(mark)) == sorted(TEXT)
    assert reply.model_extra["freerouter_model"] == SWIFT.id


# --- the 1.81.x shim, with tunables in litellm_params ------------------------------------------


def test_shim_config_streams_and_completes(shim_proxy: Proxy, openrouter: FakeOpenRouter) -> None:
    """custom_handler: freerouter_shim.handler with the shim beside config.yaml serves both ways."""
    mark = openrouter.mark()
    text, winners, chunks = stream_once(shim_proxy, "Through the shim, please.")
    (winner,) = winners
    assert winner in TEXT
    assert text == TEXT[winner]
    check_usage(chunks, winner)
    with client_of(shim_proxy) as client:
        response = client.chat.completions.create(
            model=MODEL,
            messages=ask("And once more, whole."),
        )
    winner = (response.model_extra or {})["freerouter_model"]
    assert response.choices[0].message.content == TEXT[winner]
    assert response.usage is not None
    assert response.usage.completion_tokens == PIECES[winner]
    openrouter.wait_idle()
    # The key and api_base came from litellm_params alone: no OPENROUTER_* in this proxy's env.
    check_upstream_bodies(openrouter.since(mark))


def test_config_race_width_takes_effect(shim_proxy: Proxy, openrouter: FakeOpenRouter) -> None:
    """race_width: 1 in the config's litellm_params: every request calls exactly one model."""
    for attempt in range(3):
        mark = openrouter.mark()
        with client_of(shim_proxy) as client:
            response = client.chat.completions.create(
                model=MODEL,
                messages=ask(f"Question number {attempt}."),
            )
        openrouter.wait_idle()
        records = openrouter.since(mark)
        assert [rec.model for rec in records] == [(response.model_extra or {})["freerouter_model"]]
        assert response.choices[0].message.content == TEXT[records[0].model]
        assert records[0].outcome == "ok"
        check_upstream_bodies(records)


# --- last: what every proxy of this module printed ------------------------------------------------


def check_no_key_in_output(proxy: Proxy) -> None:
    output = proxy.log_path.read_text(encoding="utf-8", errors="replace")
    assert "Application startup complete" in output
    assert UPSTREAM_KEY not in output
    assert MASTER_KEY not in output


def test_example_proxy_output_never_shows_a_key(example_proxy: Proxy) -> None:
    """Neither the OpenRouter key nor the master key appears in the example proxy's output."""
    check_no_key_in_output(example_proxy)


def test_hedged_proxy_output_never_shows_a_key(hedged_proxy: Proxy) -> None:
    """Neither the OpenRouter key nor the master key appears in the hedged proxy's output."""
    check_no_key_in_output(hedged_proxy)


def test_shim_proxy_output_never_shows_a_key(shim_proxy: Proxy) -> None:
    """Neither the OpenRouter key nor the master key appears in the shim proxy's output."""
    check_no_key_in_output(shim_proxy)


def test_client_cannot_override_config_tunables(
    example_proxy: Proxy, openrouter: FakeOpenRouter
) -> None:
    """A tunable in a client's request body is refused: only the proxy's config sets them."""
    mark = openrouter.mark()
    with client_of(example_proxy) as client, pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL, messages=ask("Race them all!"), extra_body={"race_width": 1}
        )
    assert "race_width" in refused.value.message
    assert openrouter.since(mark) == []


def test_a_proxy_started_without_the_openrouter_key_says_so_as_a_server_error(
    openrouter: FakeOpenRouter, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """config.example.yaml on a proxy whose operator forgot OPENROUTER_API_KEY: a client
    with a good key gets a 500 naming the variable the operator must set, not a 401 that
    blames its own key; nothing reaches OpenRouter."""
    directory = tmp_path_factory.mktemp("keyless-proxy")
    env = proxy_env(
        {
            "OPENROUTER_API_BASE": openrouter.thread.url,
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "FREEROUTER_STATE_DIR": str(directory / "state"),
        }
    )
    env.pop("OPENROUTER_API_KEY", None)
    proxy = Proxy(copy_example_config(directory), env, secrets=(MASTER_KEY,)).start()
    try:
        mark = openrouter.mark()
        with client_of(proxy) as client, pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model=MODEL, messages=ask("anyone there?"))
        assert failed.value.status_code == 500
        assert "its operator must set OPENROUTER_API_KEY" in str(failed.value)
        assert openrouter.since(mark) == []
    finally:
        proxy.stop()
