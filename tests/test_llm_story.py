"""The LLM side: the simulator, the client and its errors, the health check, stories and keyframes.

Everything talks to a real :class:`LLMSimulator` (or a tiny aiohttp app) over real sockets. No
sleeps: the slow and hanging faults are bounded by the client's own timeouts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
from aiohttp import web
from PIL import Image

from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.llm import (
    LLMClient,
    LLMError,
    check_health,
    normalize_llm_url,
)
from pytest_gemdirect.names import slug
from pytest_gemdirect.net import REFUSED, RESET, classify_connection_error
from pytest_gemdirect.schemas_io import load_schema
from pytest_gemdirect.sim.faults import FaultPlan
from pytest_gemdirect.sim.llm import DEFAULT_MODEL, LLMSimulator, create_llm_app
from pytest_gemdirect.sim.server import ServerThread
from pytest_gemdirect.story import (
    StoryError,
    fallback_story,
    llm_story,
    make_story,
    normalize_story,
    parse_story_text,
    render_keyframes,
    request_schema,
    story_hash,
)
from pytest_gemdirect.story.from_llm import _FATAL_KINDS

STORY_SCHEMA = load_schema("story.schema.json")
SECRET = "sk-gemdirect-very-secret-0123"

MakeSim = Callable[..., LLMSimulator]
MakeClient = Callable[..., LLMClient]


@pytest.fixture
def make_sim() -> Iterator[MakeSim]:
    started: list[LLMSimulator] = []

    def make(*faults: str, **kwargs: Any) -> LLMSimulator:
        sim = LLMSimulator(faults=FaultPlan.parse(faults), **kwargs).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    clients: list[LLMClient] = []

    def make(url: str, **kwargs: Any) -> LLMClient:
        client = LLMClient(url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def chat_bodies(sim: LLMSimulator) -> list[dict[str, Any]]:
    return [r["body"] for r in sim.requests if r["path"] == "/v1/chat/completions"]


def post_chat(sim: LLMSimulator, body: dict[str, Any]) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        return session.post(sim.url + "/v1/chat/completions", json=body, timeout=10)


def story_request(
    text: str, *, seed: int = 1, response_format: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": text}],
        "seed": seed,
        "temperature": 0.3,
    }
    if response_format is not None:
        body["response_format"] = response_format
    return body


# ---------------------------------------------------------------------------------------- URLs
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1234",
        "http://127.0.0.1:1234/",
        "http://127.0.0.1:1234/v1",
        "http://127.0.0.1:1234/v1/",
        "http://127.0.0.1:1234/v1/chat/completions",
        "http://127.0.0.1:1234/v1/models",
        "127.0.0.1:1234",
    ],
)
def test_every_url_form_gives_the_same_endpoints(url: str) -> None:
    ep = normalize_llm_url(url)
    assert ep.base == "http://127.0.0.1:1234"
    assert ep.v1 == "http://127.0.0.1:1234/v1"
    assert ep.models == "http://127.0.0.1:1234/v1/models"
    assert ep.chat == "http://127.0.0.1:1234/v1/chat/completions"
    assert ep.lmstudio_models == "http://127.0.0.1:1234/api/v0/models"


def test_a_proxy_path_prefix_is_kept_and_credentials_are_redacted() -> None:
    ep = normalize_llm_url("https://user:pw@llm.example/lmstudio/v1/chat/completions")
    assert ep.chat == "https://user:pw@llm.example/lmstudio/v1/chat/completions"
    assert ep.lmstudio_models == "https://user:pw@llm.example/lmstudio/api/v0/models"
    assert ep.display == "https://***@llm.example/lmstudio"


@pytest.mark.parametrize(
    "url", ["", "ftp://127.0.0.1:1234", "http://", "http://h:99999", "http://h:1/v1?x=1"]
)
def test_bad_urls_are_llm_errors_naming_the_url_setting(url: str) -> None:
    with pytest.raises(LLMError) as info:
        normalize_llm_url(url)
    assert info.value.kind == "invalid_url"
    assert info.value.setting == "--llm-url"
    assert "invalid URL" in str(info.value) and "--llm-url" in str(info.value)


@pytest.mark.parametrize("suffix", ["", "/v1", "/v1/chat/completions"])
def test_the_client_reaches_the_simulator_through_every_url_form(
    make_sim: MakeSim, make_client: MakeClient, suffix: str
) -> None:
    sim = make_sim()
    client = make_client(sim.url + suffix)
    assert client.list_models() == [DEFAULT_MODEL, "gemdirect-sim-13b"]
    assert client.chat(
        [{"role": "user", "content": "Say OK"}], model=DEFAULT_MODEL, seed=1, temperature=0
    ).content


# ---------------------------------------------------------------------------------------- simulator
def test_simulator_lists_models_in_openai_and_lmstudio_shapes(make_sim: MakeSim) -> None:
    sim = make_sim()
    models = requests.get(sim.url + "/v1/models", timeout=5).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [DEFAULT_MODEL, "gemdirect-sim-13b"]
    assert all(m["object"] == "model" for m in models["data"])
    rest = requests.get(sim.url + "/api/v0/models", timeout=5).json()
    first = rest["data"][0]
    assert first["id"] == DEFAULT_MODEL and first["state"] == "loaded" and first["type"] == "llm"
    assert {"publisher", "arch", "compatibility_type", "quantization", "max_context_length"} <= set(first)
    assert rest["data"][1]["state"] == "not-loaded"
    one = requests.get(sim.url + f"/api/v0/models/{DEFAULT_MODEL}", timeout=5).json()
    assert one == first


def test_simulator_chat_completion_shape(make_sim: MakeSim) -> None:
    sim = make_sim()
    answer = post_chat(sim, story_request("Reply with the single word OK.")).json()
    assert answer["object"] == "chat.completion"
    assert answer["id"].startswith("chatcmpl-")
    assert answer["model"] == DEFAULT_MODEL
    (choice,) = answer["choices"]
    assert choice["message"] == {"role": "assistant", "content": "OK"}
    assert choice["finish_reason"] == "stop"
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_a_model_that_is_not_listed_gets_lmstudios_error(make_sim: MakeSim) -> None:
    sim = make_sim()
    body = story_request("hi")
    body["model"] = "llama-9000"
    response = post_chat(sim, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(
        'Invalid model identifier "llama-9000". Please specify a valid downloaded model'
    )
    assert DEFAULT_MODEL in error["message"]


def test_response_format_rejections_read_like_the_servers(make_sim: MakeSim) -> None:
    lmstudio = make_sim(formats=("json_schema", "text"))
    answer = post_chat(lmstudio, story_request("Write a story", response_format={"type": "json_object"}))
    assert answer.status_code == 400
    assert answer.json() == {"error": "'response_format.type' must be 'json_schema' or 'text'"}
    no_schema = make_sim("llm-reject-json-schema")
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "story", "strict": True, "schema": request_schema(2)},
    }
    rejected = post_chat(no_schema, story_request("Write a story", response_format=fmt))
    assert rejected.status_code == 400 and rejected.json()["error"]["param"] == "response_format"
    assert post_chat(no_schema, story_request("Write a story", response_format={"type": "json_object"})).ok


def test_scene_count_comes_from_the_schema_then_the_text_then_three(make_sim: MakeSim) -> None:
    sim = make_sim()
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "story", "strict": True, "schema": request_schema(5)},
    }
    pinned = post_chat(sim, story_request("Write a story in 2 scenes", response_format=fmt)).json()
    from_text = post_chat(sim, story_request("Write a story in 4 scenes")).json()
    default = post_chat(sim, story_request("Write a story", response_format={"type": "json_object"})).json()
    assert len(json.loads(pinned["choices"][0]["message"]["content"])["scenes"]) == 5
    assert len(json.loads(from_text["choices"][0]["message"]["content"])["scenes"]) == 4
    assert len(json.loads(default["choices"][0]["message"]["content"])["scenes"]) == 3
    for content in (pinned, from_text, default):
        jsonschema.validate(json.loads(content["choices"][0]["message"]["content"]), STORY_SCHEMA)


def test_simulated_stories_are_deterministic_per_seed(make_sim: MakeSim) -> None:
    sim, other_seed = make_sim(seed=42), make_sim(seed=43)
    fmt = {"type": "json_object"}

    def content(target: LLMSimulator, seed: int) -> str:
        answer = post_chat(target, story_request("Write a story in 3 scenes", seed=seed, response_format=fmt))
        return answer.json()["choices"][0]["message"]["content"]

    first = content(sim, 1)
    assert content(sim, 1) == first  # same request, same bytes
    assert content(sim, 2) != first  # another request seed
    assert content(other_seed, 1) != first  # another simulator seed


def test_llm_down_refuses_connections_and_the_app_alone_drops_them(make_sim: MakeSim) -> None:
    sim = make_sim("llm-down")
    with pytest.raises(requests.ConnectionError) as info:
        requests.get(sim.url + "/v1/models", timeout=5)
    assert classify_connection_error(info.value) == "connection_refused"
    with ServerThread(create_llm_app(faults=FaultPlan.parse(["llm-down"]))) as server:
        with pytest.raises(requests.ConnectionError) as dropped:
            requests.get(server.url + "/v1/models", timeout=5)
    assert classify_connection_error(dropped.value) == RESET


def test_a_hanging_completion_times_out_and_does_not_delay_stop(make_client: MakeClient) -> None:
    sim = LLMSimulator(faults=FaultPlan.parse(["llm-timeout"])).start()
    try:
        client = make_client(sim.url, timeout_s=0.3)
        assert client.list_models()  # the server answers; the model hangs
        with pytest.raises(LLMError) as info:
            client.chat([{"role": "user", "content": "hi"}], model=DEFAULT_MODEL, seed=1, temperature=0)
        assert info.value.kind == "timeout" and info.value.setting == "--llm-timeout"
        assert "timeout" in str(info.value) and "0.3 s" in str(info.value)
    finally:
        sim.stop()  # returns although the hanging completion's handler never finished
    with pytest.raises(LLMError) as after:
        make_client(sim.url, timeout_s=5).list_models()
    assert after.value.kind in (REFUSED, RESET)  # nothing serves there now


# ---------------------------------------------------------------------------------------- client errors
def test_connection_refused_on_a_closed_port(make_client: MakeClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}")
    with pytest.raises(LLMError) as info:
        client.list_models()
    error = info.value
    assert error.kind == "connection_refused" and error.setting == "--llm-url"
    assert f"http://127.0.0.1:{port}/v1/models" in str(error)
    assert "connection refused" in str(error) and "--llm-url" in str(error)


def test_an_unknown_host_is_a_dns_error(make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # The resolver answers at once (no dependence on this machine's DNS servers being reachable).
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "gemdirect-no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    client = make_client("http://gemdirect-no-such-host.invalid:1234", timeout_s=5)
    with pytest.raises(LLMError) as info:
        client.list_models()
    assert info.value.kind == "dns"
    assert "DNS" in str(info.value) and "gemdirect-no-such-host.invalid" in str(info.value)


@pytest.fixture
def odd_server() -> Iterator[str]:
    """Answers that are not an OpenAI server's: HTML, a key echoed back, a redirect."""

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>Router login</body></html>", content_type="text/html")

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"error": f"bad token {request.headers.get('Authorization')}"}, status=401)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("https://elsewhere.example/v1/models")

    app = web.Application()
    app.router.add_get("/html/v1/models", html)
    app.router.add_get("/echo/v1/models", echo)
    app.router.add_get("/redirect/v1/models", redirect)
    with ServerThread(app) as server:
        yield server.url


def test_a_non_json_answer_says_so(odd_server: str, make_client: MakeClient) -> None:
    with pytest.raises(LLMError) as info:
        make_client(odd_server + "/html").list_models()
    error = info.value
    assert error.kind == "non_json" and error.setting == "--llm-url"
    assert "non-JSON answer" in str(error) and "text/html" in str(error) and "Router login" in str(error)


def test_an_http_error_carries_status_and_body_excerpt(make_sim: MakeSim, make_client: MakeClient) -> None:
    sim = make_sim("llm-500")
    with pytest.raises(LLMError) as info:
        make_client(sim.url).chat(
            [{"role": "user", "content": "hi"}], model=DEFAULT_MODEL, seed=1, temperature=0
        )
    error = info.value
    assert error.kind == "http" and error.status == 500
    assert "HTTP 500" in str(error) and "simulated llm-500" in str(error)
    assert "simulated llm-500" in (error.body or "")
    assert str(error).startswith(f"LLM HTTP error at {sim.url}/v1/chat/completions")


def test_a_redirect_is_reported_not_followed(odd_server: str, make_client: MakeClient) -> None:
    with pytest.raises(LLMError) as info:
        make_client(odd_server + "/redirect").list_models()
    assert info.value.status == 302 and "https://elsewhere.example/v1/models" in str(info.value)


def test_the_deadline_bounds_a_request_and_names_its_setting(
    make_sim: MakeSim, make_client: MakeClient
) -> None:
    sim = make_sim("llm-timeout")
    client = make_client(sim.url, timeout_s=30)
    with pytest.raises(LLMError) as info:
        client.chat(
            [{"role": "user", "content": "hi"}],
            model=DEFAULT_MODEL,
            seed=1,
            temperature=0,
            deadline=Deadline(0.3, setting="story_deadline"),
        )
    # the caller's deadline (0.3 s) bound the request, not the client's 30 s: the error says which
    assert info.value.kind == "timeout" and info.value.setting == "--story-deadline"
    assert "within 0.3 s" in str(info.value)
    with pytest.raises(LLMError, match="spent before sending"):
        client.list_models(deadline=Deadline(0))


def test_the_api_key_is_a_bearer_token_and_never_shown(
    make_sim: MakeSim, make_client: MakeClient, odd_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = make_sim(api_key=SECRET)
    client = make_client(sim.url, api_key=SECRET)
    assert client.list_models()
    assert all(r["headers"].get("Authorization") == f"Bearer {SECRET}" for r in sim.requests)
    assert SECRET not in repr(client) and "***" in repr(client)
    wrong = make_client(sim.url, api_key="not-the-key")
    with pytest.raises(LLMError) as info:
        wrong.list_models()
    assert info.value.status == 401 and info.value.setting == "--llm-api-key"
    echoed = make_client(odd_server + "/echo", api_key=SECRET)
    with pytest.raises(LLMError) as echo_info:
        echoed.list_models()
    for text in (str(echo_info.value), repr(echo_info.value), echo_info.value.body or "", caplog.text):
        assert SECRET not in text
    assert "Bearer ***" in str(echo_info.value)


def test_errors_survive_pickling() -> None:
    error = LLMError("http", "boom", "http://h/v1/models", "--llm-url", status=500, body="x")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.kind, clone.status, clone.body, str(clone)) == ("http", 500, "x", str(error))
    story_error = pickle.loads(pickle.dumps(StoryError("why", 2, attempt_log=["1 a", "2 b"])))
    assert str(story_error) == "why (after 2 attempts)" and story_error.attempt_log == ["1 a", "2 b"]


# ---------------------------------------------------------------------------------------- health
def test_health_lists_picks_the_first_model_and_times_two_completions(
    make_sim: MakeSim, make_client: MakeClient
) -> None:
    sim = make_sim("llm-slow-first", slow_first_s=0.4)
    health = check_health(make_client(sim.url), model=None, timeout_s=10)
    assert health.models == [DEFAULT_MODEL, "gemdirect-sim-13b"]
    assert (health.model, health.model_source) == (DEFAULT_MODEL, "first listed")
    assert health.lmstudio_rest is True and health.model_state == "loaded" and health.loaded is True
    assert health.first_latency_s >= 0.4 > health.second_latency_s
    assert health.first_reply == "OK"
    data = health.to_dict()
    assert json.loads(json.dumps(data)) == data


def test_health_reports_a_configured_model_that_is_not_loaded(
    make_sim: MakeSim, make_client: MakeClient
) -> None:
    sim = make_sim()
    health = check_health(make_client(sim.url), model="gemdirect-sim-13b", timeout_s=10)
    assert (health.model, health.model_source, health.loaded) == ("gemdirect-sim-13b", "configured", False)
    assert any("not-loaded" in note for note in health.notes)


def test_health_without_lmstudio_rest(make_sim: MakeSim, make_client: MakeClient) -> None:
    sim = make_sim(lmstudio_rest=False)
    client = make_client(sim.url)
    assert client.lmstudio_model_state(DEFAULT_MODEL) is None
    with_rest = make_client(make_sim().url)
    assert with_rest.lmstudio_model_state(DEFAULT_MODEL) == "loaded"
    assert with_rest.lmstudio_model_state("gemdirect-sim-13b") == "not-loaded"
    assert with_rest.lmstudio_model_state("unknown") is None
    health = check_health(client, model=None, timeout_s=10)
    assert (health.lmstudio_rest, health.model_state, health.loaded) == (False, None, None)


def test_health_names_the_offered_models_for_an_unknown_model(
    make_sim: MakeSim, make_client: MakeClient
) -> None:
    sim = make_sim()
    with pytest.raises(LLMError) as info:
        check_health(make_client(sim.url), model="llama-9000", timeout_s=10)
    error = info.value
    assert error.kind == "model_not_found" and error.setting == "--llm-model"
    assert "'llama-9000'" in str(error) and DEFAULT_MODEL in str(error) and "gemdirect-sim-13b" in str(error)


def test_health_fails_on_a_server_error(make_sim: MakeSim, make_client: MakeClient) -> None:
    sim = make_sim("llm-500")
    with pytest.raises(LLMError) as info:
        check_health(make_client(sim.url), model=None, timeout_s=10)
    assert info.value.status == 500


# ---------------------------------------------------------------------------------------- LLM story
def test_llm_story_sends_what_lmstudio_documents(make_sim: MakeSim, make_client: MakeClient) -> None:
    sim = make_sim()
    story = llm_story(
        make_client(sim.url), scene_count=4, model=DEFAULT_MODEL, seed=7, temperature=0.35, max_attempts=3
    )
    (body,) = chat_bodies(sim)
    assert body["model"] == DEFAULT_MODEL
    assert body["temperature"] == 0.35 and body["seed"] == 7 and body["stream"] is False
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert all(isinstance(m["content"], str) and m["content"] for m in body["messages"])
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert set(fmt["json_schema"]) == {"name", "strict", "schema"} and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["scenes"]["minItems"] == schema["properties"]["scenes"]["maxItems"] == 4
    assert "metadata" not in schema["properties"]
    jsonschema.validate(story, STORY_SCHEMA)
    assert [s["id"] for s in story["scenes"]] == ["scene-001", "scene-002", "scene-003", "scene-004"]
    meta = story["metadata"]
    assert (meta["mode"], meta["request_form"], meta["attempts"], meta["model"]) == (
        "llm",
        "json_schema",
        1,
        DEFAULT_MODEL,
    )
    assert meta["story_hash"] == story_hash(story)


@pytest.mark.parametrize(
    ("faults", "options", "form", "attempts", "logged"),
    [
        (["llm-reject-json-schema"], {}, "json_object", 2, "rejected"),
        (["llm-json-object-only"], {}, "json_object", 2, "rejected"),
        ([], {"formats": ("text",), "plain_fenced": True}, "plain", 3, "removed the code fence"),
        (["llm-control-chars"], {}, "json_schema", 1, "raw control character"),
    ],
)
def test_llm_story_steps_down_and_repairs(
    make_sim: MakeSim,
    make_client: MakeClient,
    faults: list[str],
    options: dict[str, Any],
    form: str,
    attempts: int,
    logged: str,
) -> None:
    sim = make_sim(*faults, **options)
    story = llm_story(make_client(sim.url), scene_count=3, model=DEFAULT_MODEL, seed=1, temperature=0.2)
    jsonschema.validate(story, STORY_SCHEMA)
    assert story["metadata"]["request_form"] == form
    assert story["metadata"]["attempts"] == attempts == len(chat_bodies(sim))
    assert logged in " ".join(story["metadata"]["attempt_log"])
    assert all("\n" not in s["visual_prompt"] and "\t" not in s["motion_prompt"] for s in story["scenes"])
    sent_forms = [(b.get("response_format") or {}).get("type") for b in chat_bodies(sim)]
    assert sent_forms == ["json_schema", "json_object", None][: len(sent_forms)]


def test_a_truncated_answer_is_detected_and_retried_with_more_tokens(
    make_sim: MakeSim, make_client: MakeClient
) -> None:
    sim = make_sim("llm-truncated")
    with pytest.raises(StoryError) as info:
        llm_story(make_client(sim.url), scene_count=3, model=DEFAULT_MODEL, seed=1, temperature=0.2)
    assert info.value.attempts == 3
    assert "cut off at the token limit" in str(info.value) and "finish_reason 'length'" in str(info.value)
    budgets = [b["max_tokens"] for b in chat_bodies(sim)]
    assert budgets == sorted(budgets) and budgets[0] < budgets[-1]


def test_garbage_is_retried_with_a_correction_then_given_up(
    make_sim: MakeSim, make_client: MakeClient
) -> None:
    sim = make_sim("llm-garbage")
    with pytest.raises(StoryError) as info:
        llm_story(
            make_client(sim.url), scene_count=3, model=DEFAULT_MODEL, seed=1, temperature=0.2, max_attempts=2
        )
    assert info.value.attempts == 2 and "not JSON" in str(info.value)
    second_prompt = chat_bodies(sim)[1]["messages"][-1]["content"]
    assert "could not be used" in second_prompt


def test_server_errors_are_retried_a_bounded_number_of_times(
    make_sim: MakeSim, make_client: MakeClient
) -> None:
    sim = make_sim("llm-500")
    with pytest.raises(StoryError) as info:
        llm_story(make_client(sim.url), scene_count=3, model=DEFAULT_MODEL, seed=1, temperature=0.2)
    assert info.value.attempts == 3 == len(chat_bodies(sim))
    assert "HTTP 500" in str(info.value) and len(info.value.attempt_log) == 3


@pytest.mark.parametrize(
    ("faults", "model", "phrase"),
    [(["llm-down"], DEFAULT_MODEL, "connection refused"), ([], "nope", "Invalid model identifier")],
)
def test_hopeless_errors_are_not_retried(
    make_sim: MakeSim, make_client: MakeClient, faults: list[str], model: str, phrase: str
) -> None:
    sim = make_sim(*faults)
    with pytest.raises(StoryError) as info:
        llm_story(make_client(sim.url), scene_count=3, model=model, seed=1, temperature=0.2)
    assert info.value.attempts == 1 and phrase in str(info.value)


def test_hanging_llm_is_bounded_by_timeout_and_deadline(make_sim: MakeSim, make_client: MakeClient) -> None:
    sim = make_sim("llm-timeout")
    with pytest.raises(StoryError) as info:
        llm_story(
            make_client(sim.url, timeout_s=0.2),
            scene_count=3,
            model=DEFAULT_MODEL,
            seed=1,
            temperature=0.2,
            max_attempts=2,
        )
    assert info.value.attempts == 2 and "timeout" in str(info.value)
    with pytest.raises(StoryError) as deadline_info:
        llm_story(
            make_client(sim.url, timeout_s=30),
            scene_count=3,
            model=DEFAULT_MODEL,
            seed=1,
            temperature=0.2,
            deadline=Deadline(0.3, setting="llm_timeout"),
        )
    # the 0.3 s deadline, not the client's 30 s, ended it: the story names the deadline or its spending
    assert "deadline" in str(deadline_info.value) or "spent" in str(deadline_info.value)


# ---------------------------------------------------------------------------------------- make_story
def test_auto_mode_uses_a_healthy_llm(make_sim: MakeSim, make_client: MakeClient) -> None:
    sim = make_sim()
    client = make_client(sim.url)
    health = check_health(client, model="gemdirect-sim-13b", timeout_s=10)
    story = make_story("auto", client=client, health=health, scene_count=3, seed=5, temperature=0.4)
    jsonschema.validate(story, STORY_SCHEMA)
    meta = story["metadata"]
    assert (meta["mode"], meta["requested_mode"], meta["fallback_reason"]) == ("llm", "auto", None)
    assert (meta["model"], meta["seed"], meta["temperature"]) == ("gemdirect-sim-13b", 5, 0.4)
    assert meta["latency_s"] is not None and meta["latency_s"] >= 0


@pytest.mark.parametrize(
    ("fault", "phrase"),
    [
        ("llm-garbage", "not JSON"),
        ("llm-truncated", "cut off"),
        ("llm-500", "HTTP 500"),
        ("llm-down", "connection refused"),
        ("llm-timeout", "timeout"),
    ],
)
def test_auto_mode_falls_back_and_records_why(
    make_sim: MakeSim, make_client: MakeClient, fault: str, phrase: str
) -> None:
    sim = make_sim(fault)
    story = make_story(
        "auto",
        client=make_client(sim.url, timeout_s=0.3),
        scene_count=2,
        seed=9,
        temperature=0.3,
        max_attempts=2,
    )
    jsonschema.validate(story, STORY_SCHEMA)
    meta = story["metadata"]
    assert (meta["mode"], meta["requested_mode"]) == ("fallback", "auto")
    assert meta["fallback_reason"].startswith("LLM story failed") and phrase in meta["fallback_reason"]
    content = {k: v for k, v in story.items() if k != "metadata"}
    assert content == fallback_story(2, 9)


def test_auto_mode_with_an_unhealthy_llm_falls_back_without_asking(make_client: MakeClient) -> None:
    story = make_story(
        "auto", client=None, unhealthy_reason="LLM health: connection refused", scene_count=3, seed=1
    )
    jsonschema.validate(story, STORY_SCHEMA)
    assert story["metadata"]["fallback_reason"] == "LLM not healthy: LLM health: connection refused"
    assert story["metadata"]["attempts"] == 0


def test_fallback_mode_and_llm_mode_failures() -> None:
    story = make_story("fallback", scene_count=3, seed=3)
    jsonschema.validate(story, STORY_SCHEMA)
    meta = story["metadata"]
    assert (meta["mode"], meta["requested_mode"], meta["fallback_reason"], meta["model"]) == (
        "fallback",
        "fallback",
        None,
        None,
    )
    with pytest.raises(StoryError, match="story mode is llm"):
        make_story("llm", client=None, scene_count=3, seed=3)
    with pytest.raises(ValueError):
        make_story("sometimes", scene_count=3)


def test_llm_mode_raises_when_the_story_fails(make_sim: MakeSim, make_client: MakeClient) -> None:
    sim = make_sim("llm-garbage")
    with pytest.raises(StoryError) as info:
        make_story("llm", client=make_client(sim.url), scene_count=2, seed=1, max_attempts=1)
    assert info.value.attempts == 1


def test_fallback_story_is_deterministic_and_valid() -> None:
    one = fallback_story(5, 11)
    assert fallback_story(5, 11) == one and fallback_story(5, 12) != one
    jsonschema.validate(one, STORY_SCHEMA)
    assert [s["id"] for s in one["scenes"]] == [f"scene-{n:03d}" for n in range(1, 6)]
    assert story_hash(one) == story_hash(fallback_story(5, 11)) != story_hash(fallback_story(5, 12))
    for bad in (0, 100, True):
        with pytest.raises(ValueError):
            fallback_story(bad, 1)


# ---------------------------------------------------------------------------------------- parsing
def test_lenient_parsing_of_fences_prose_thinking_and_control_chars() -> None:
    fenced = 'Sure!\n```json\n{"title": "T", "scenes": []}\n```\nEnjoy.'
    assert parse_story_text(fenced)[0] == {"title": "T", "scenes": []}
    prose = 'Here it is: {"title": "T"} hope you like it'
    assert parse_story_text(prose)[0] == {"title": "T"}
    thinking = '<think>{"nope": 1}</think>{"title": "T"}'
    assert parse_story_text(thinking)[0] == {"title": "T"}
    raw = '{"title": "line one\nline\ttwo"}'
    data, repairs = parse_story_text(raw)
    assert data == {"title": "line one\nline\ttwo"} and "control character" in repairs[-1]
    with pytest.raises(ValueError, match="cut off"):
        parse_story_text('{"title": "T", "scenes": [{"id": "sce')
    with pytest.raises(ValueError, match="empty"):
        parse_story_text("   ")


def test_normalize_renumbers_unwraps_and_validates() -> None:
    scene = {"title": "A", "visual_prompt": "  a  red\nfox ", "motion_prompt": "pan", "duration": 3}
    data = {"story": {"title": "T", "scenes": [dict(scene, id="1"), dict(scene, id="scene-009")]}}
    story, notes = normalize_story(data, 2)
    assert [s["id"] for s in story["scenes"]] == ["scene-001", "scene-002"]
    assert story["scenes"][0]["visual_prompt"] == "a red fox" and "duration" not in story["scenes"][0]
    assert any("renumbered" in n for n in notes) and any("unwrapped" in n for n in notes)
    with pytest.raises(ValueError, match="asked for 3 scenes, got 2"):
        normalize_story(data, 3)
    with pytest.raises(ValueError, match="scene 1 has no motion_prompt"):
        normalize_story({"title": "T", "scenes": [{"title": "A", "visual_prompt": "v"}]}, 1)
    with pytest.raises(ValueError, match="story.schema.json"):
        normalize_story({"title": "x" * 300, "scenes": [scene]}, 1)


# ---------------------------------------------------------------------------------------- keyframes
def test_keyframes_are_deterministic_distinct_pngs(tmp_path: Path) -> None:
    story = fallback_story(3, 1)
    story["title"] = "../../evil/..\\title"
    paths = render_keyframes(story, tmp_path / "a", size=(320, 180))
    again = render_keyframes(story, tmp_path / "b", size=(320, 180))
    assert [p.name for p in paths] == ["scene-001.png", "scene-002.png", "scene-003.png"]
    assert all(p.parent == tmp_path / "a" for p in paths)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    assert len({p.read_bytes() for p in paths}) == 3
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (320, 180)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [p.name for p in paths]  # no temp files left
    changed = fallback_story(3, 1)
    changed["scenes"][0]["visual_prompt"] += " at night"
    assert render_keyframes(changed, tmp_path / "c", size=(320, 180))[0].read_bytes() != paths[0].read_bytes()


def test_keyframes_refuse_unsafe_scene_ids(tmp_path: Path) -> None:
    story = fallback_story(1, 1)
    story["scenes"][0]["id"] = "../scene-001"
    with pytest.raises(ValueError, match="scene id"):
        render_keyframes(story, tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Lanterns / Over: the Bay", "Lanterns-Over-the-Bay"),
        ("../../etc/passwd", "etc-passwd"),
        ("C:\\Windows\\system32", "C-Windows-system32"),
        ("CON", "_CON"),
        ("nul.tar.gz", "_nul.tar.gz"),
        ("COM\u00b9", "_COM1"),
        ("Café noir", "Cafe-noir"),
        ("", "untitled"),
    ],
)
def test_slug(text: str, expected: str) -> None:
    assert slug(text) == expected


def test_slug_bounds_and_never_empty() -> None:
    assert len(slug("a" * 500)) == 64
    for text in ("..", " . ", "日本語", "/", "\\\\"):
        name = slug(text)
        assert name.startswith("untitled-") and "/" not in name and ".." not in name


# ---------------------------------------------------------------------------------------- bounded answers
class SlowModels:
    """GET /v1/models whose body trickles in (200 bytes every 10 ms: 10 s for all of it), and a
    /big/v1/models answer of 5000 bytes."""

    def __init__(self) -> None:
        self.total = 200_000
        self.sent = 0
        self.finished = False

    async def slow(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Content-Length": str(self.total)}
        )
        await response.prepare(request)
        try:
            while self.sent < self.total:
                await response.write(b" " * 200)
                self.sent += 200
                await asyncio.sleep(0.01)
            self.finished = True
        except (ConnectionError, RuntimeError):
            pass  # the client hung up
        return response

    async def big(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m" * 5000}]})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.slow)
        app.router.add_get("/big/v1/models", self.big)
        return app


def test_a_trickling_answer_ends_at_the_deadline_naming_its_setting(make_client: MakeClient) -> None:
    slow = SlowModels()
    with ServerThread(slow.app) as server:
        client = make_client(server.url, timeout_s=30)
        with pytest.raises(LLMError) as info:
            client.list_models(deadline=Deadline(0.5, setting="story_deadline"))
        assert not slow.finished and slow.sent < slow.total  # the client did not wait for the rest
    assert info.value.kind == "timeout" and info.value.setting == "--story-deadline"
    assert "bytes of the answer had arrived" in str(info.value)


def test_an_answer_over_the_size_cap_fails_naming_the_cap(make_client: MakeClient) -> None:
    slow = SlowModels()
    with ServerThread(slow.app) as server:
        with pytest.raises(LLMError) as info:
            make_client(server.url + "/big", max_body_bytes=1000).list_models()
        assert make_client(server.url + "/big").list_models() == ["m" * 5000]  # the 64 MiB default
    assert info.value.kind == "too_large" and info.value.setting == "--max-response-mb"
    assert "answer too large" in str(info.value) and "the cap of 1000 bytes" in str(info.value)
    assert "too_large" in _FATAL_KINDS  # not retried by the story stage
