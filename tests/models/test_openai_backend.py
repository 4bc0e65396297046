"""OpenAIBackend against the loopback fake server: requests, parsing, retries, errors, secrets."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest
from pydantic import ValidationError

from charlab.errors import BackendError, ConfigError
from charlab.models.base import Backend, GenerationRequest, NotSupportedError, SamplingParams
from charlab.models.openai_compat import OpenAIBackend, OpenAIConfig, api_seed
from fake_openai import FakeOpenAI, Fault

pytestmark = pytest.mark.timeout(60)

KEY = "sk-test-0123456789abcdef-SECRET"
FAST = {"timeout_s": 2.0, "max_retries": 3, "backoff_base_s": 0.001, "backoff_max_s": 0.05}


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def make_backend():
    """Build backends with tiny backoff; close them all when the test ends."""
    made: list[OpenAIBackend] = []

    def make(url: str, **overrides) -> OpenAIBackend:
        backend = OpenAIBackend(OpenAIConfig(base_url=url, model="fake-model", **{**FAST, **overrides}))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def ask(text: str, **kw) -> GenerationRequest:
    return GenerationRequest.make([{"role": "user", "content": text}], **kw)


# -- plain generation --------------------------------------------------------------------------


def test_generates_in_request_order(server, make_backend):
    backend = make_backend(server.url)
    assert isinstance(backend, Backend)
    outs = backend.generate([ask(f"question {i}") for i in range(10)])
    assert [g.text for g in outs] == [f"echo: question {i}" for i in range(10)]
    assert all(g.finish_reason == "stop" and g.top_logprobs is None for g in outs)
    assert outs[0].prompt_tokens == 2 and outs[0].completion_tokens == 3
    assert (backend.stats.requests, backend.stats.attempts, backend.stats.retries) == (10, 10, 0)
    assert len(server.chat_requests) == 10


def test_sampling_params_and_seed_forwarded(server, make_backend):
    backend = make_backend(server.url, extra_body={"min_p": 0.05})
    sampling = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=50, repetition_penalty=1.1,
                              stop=["END"])
    backend.generate([ask("hi", sampling=sampling, seed=3, sample_index=2)])
    body = server.chat_requests[0].body
    assert body["model"] == "fake-model"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["n"]) == (0.7, 0.9, 50, 1)
    assert body["stop"] == ["END"] and body["repetition_penalty"] == 1.1 and body["min_p"] == 0.05
    assert body["seed"] == api_seed(3, 2)
    assert "logprobs" not in body


def test_seed_depends_on_seed_and_sample_index_only():
    assert api_seed(3, 2) == api_seed(3, 2)
    assert len({api_seed(s, k) for s in range(5) for k in range(5)}) == 25
    assert all(0 <= api_seed(s, k) < 2**31 for s in range(5) for k in range(5))


def test_defaults_leave_out_optional_fields(server, make_backend):
    make_backend(server.url).generate([ask("hi")])
    body = server.chat_requests[0].body
    assert body["temperature"] == 0.0
    for absent in ("repetition_penalty", "stop", "logprobs", "top_logprobs"):
        assert absent not in body
    assert "authorization" not in server.chat_requests[0].headers


def test_length_finish_and_missing_usage(make_backend):
    with FakeOpenAI(reply=lambda body: "one two three four five", usage=False) as fake:
        [out] = make_backend(fake.url).generate([ask("x", sampling=SamplingParams(max_new_tokens=2))])
    assert out.text == "one two" and out.finish_reason == "length"
    assert (out.prompt_tokens, out.completion_tokens) == (0, 0)


def test_top_logprobs_parsed(make_backend):
    dist = {"87": -0.1, "85": -2.5, "90": -3.0}
    with FakeOpenAI(reply=lambda body: "87", logprobs=lambda body, text: [dist]) as fake:
        [out] = make_backend(fake.url).generate([ask("score it", sampling=SamplingParams(top_logprobs=2))])
        body = fake.chat_requests[0].body
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    assert out.text == "87"
    assert out.top_logprobs == [{"87": -0.1, "85": -2.5}]


def test_default_fake_logprobs_one_dict_per_position(server, make_backend):
    [out] = make_backend(server.url).generate([ask("a b", sampling=SamplingParams(top_logprobs=3))])
    assert len(out.top_logprobs) == out.completion_tokens == 3
    assert all(len(position) == 3 for position in out.top_logprobs)
    assert max(out.top_logprobs[0], key=out.top_logprobs[0].get) == "echo:"


# -- retries -----------------------------------------------------------------------------------


def test_429_retry_after_is_honoured(server, make_backend):
    backend = make_backend(server.url, backoff_max_s=5.0)
    server.script(Fault.http(429, "slow down", retry_after=0.2))
    start = time.monotonic()
    [out] = backend.generate([ask("hi")])
    assert time.monotonic() - start >= 0.2
    assert out.text == "echo: hi"
    assert backend.stats.retries == 1 and backend.stats.retry_reasons == {"HTTP 429": 1}


def test_429_without_retry_after_uses_backoff_and_retry_after_is_capped(server, make_backend):
    backend = make_backend(server.url, backoff_max_s=0.05)
    server.script(Fault.http(429), Fault.http(429, retry_after=30))
    start = time.monotonic()
    [out] = backend.generate([ask("hi")])
    assert time.monotonic() - start < 1.0
    assert out.text == "echo: hi" and backend.stats.attempts == 3


def test_server_errors_then_success(server, make_backend):
    backend = make_backend(server.url)
    server.script(Fault.http(500), Fault.http(503))
    [out] = backend.generate([ask("hi")])
    assert out.text == "echo: hi"
    assert backend.stats.retry_reasons == {"HTTP 500": 1, "HTTP 503": 1}


def test_slow_reply_times_out_then_retries(server, make_backend):
    backend = make_backend(server.url, timeout_s=0.3)
    server.script(Fault.slow(3.0))
    start = time.monotonic()
    [out] = backend.generate([ask("hi")])
    assert time.monotonic() - start < 2.0
    assert out.text == "echo: hi" and backend.stats.retry_reasons == {"timeout": 1}


@pytest.mark.parametrize("fault, reason", [(Fault.malformed(), "malformed"), (Fault.drop(), "connection")])
def test_malformed_body_and_dropped_connection_are_retried(server, make_backend, fault, reason):
    backend = make_backend(server.url)
    server.script(fault)
    [out] = backend.generate([ask("hi")])
    assert out.text == "echo: hi" and backend.stats.retry_reasons == {reason: 1}


def test_200_without_choices_is_retried(server, make_backend):
    backend = make_backend(server.url)
    server.script(Fault.body({"error": {"message": "upstream provider failed"}}))
    [out] = backend.generate([ask("hi")])
    assert out.text == "echo: hi" and backend.stats.retry_reasons == {"malformed": 1}


# -- failures ----------------------------------------------------------------------------------


def test_400_fails_at_once_with_server_message(server, make_backend):
    backend = make_backend(server.url)
    server.script(Fault.http(400, "max_tokens is too large for this model"))
    with pytest.raises(BackendError) as info:
        backend.generate([ask("hi")])
    message = str(info.value)
    assert "max_tokens is too large" in message and server.url in message and "HTTP 400" in message
    assert backend.stats.attempts == 1


def test_missing_logprobs_fail_clearly(server, make_backend):
    server.script(Fault.body({"choices": [{"message": {"content": "87"}, "finish_reason": "stop"}]}))
    with pytest.raises(BackendError, match="top_logprobs were asked for but the reply has none"):
        make_backend(server.url).generate([ask("hi", sampling=SamplingParams(top_logprobs=5))])


def test_one_failure_stops_the_batch(server, make_backend):
    backend = make_backend(server.url, max_concurrency=1)
    server.script(Fault.http(404, "model not found"))
    with pytest.raises(BackendError, match="model not found"):
        backend.generate([ask(str(i)) for i in range(20)])
    time.sleep(0.1)
    assert len(server.chat_requests) < 20


def test_retries_exhausted_names_url_and_hides_key(server, make_backend, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="charlab")
    monkeypatch.setenv("FAKE_KEY", KEY)
    backend = make_backend(server.url, api_key_env="FAKE_KEY", max_retries=2)
    server.script(*[Fault.http(503, f"overloaded, key was {KEY}")] * 3)
    with pytest.raises(BackendError) as info:
        backend.generate([ask("hi")])
    message = str(info.value)
    assert server.url in message and "3 attempts" in message and "HTTP 503" in message
    assert KEY not in message and "***" in message
    assert "retry 2/2" in caplog.text and KEY not in caplog.text


def test_refused_connection_names_url(make_backend):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    backend = make_backend(url, max_retries=1)
    with pytest.raises(BackendError) as info:
        backend.generate([ask("hi")])
    assert url in str(info.value) and "2 attempts" in str(info.value)
    assert backend.stats.retry_reasons == {"connection": 1}


def test_score_not_supported(server, make_backend):
    with pytest.raises(NotSupportedError):
        make_backend(server.url).score([[{"role": "user", "content": "x"}]])


# -- secrets -----------------------------------------------------------------------------------


def test_missing_key_env_is_a_config_error(monkeypatch):
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    config = OpenAIConfig(base_url="https://openrouter.ai/api/v1", model="m", api_key_env="OPENROUTER_API_KEY")
    with pytest.raises(ConfigError, match="OPENROUTER_API_KEY \\(named by api_key_env\\) is not set; export"):
        OpenAIBackend(config)


def test_key_sent_as_bearer_and_never_shown(monkeypatch, make_backend):
    monkeypatch.setenv("FAKE_KEY", KEY)
    with FakeOpenAI(api_key=KEY) as fake:
        backend = make_backend(fake.url, api_key_env="FAKE_KEY")
        [out] = backend.generate([ask("hi")])
        assert fake.chat_requests[0].headers["authorization"] == f"Bearer {KEY}"
        assert out.text == "echo: hi"
        shown = [repr(backend), str(backend), repr(backend.config), backend.fingerprint, repr(backend.stats),
                 backend.config.model_dump_json(), repr(vars(backend))]
        assert not any(KEY in text for text in shown)

        monkeypatch.setenv("FAKE_KEY", "sk-wrong")
        with pytest.raises(BackendError, match="HTTP 401.*FAKE_KEY") as info:
            make_backend(fake.url, api_key_env="FAKE_KEY").generate([ask("hi")])
        assert "sk-wrong" not in str(info.value)


def test_key_pasted_into_api_key_env_is_not_echoed():
    with pytest.raises(ValidationError) as info:
        OpenAIConfig(base_url="http://127.0.0.1:1/v1", model="m", api_key_env=KEY)
    assert KEY not in str(info.value) and "NAME of an environment variable" in str(info.value)


# -- config, fingerprint, lifecycle ------------------------------------------------------------


def test_config_rejects_unknown_fields_and_bad_urls():
    with pytest.raises(ValidationError):
        OpenAIConfig(base_url="http://x/v1", model="m", temprature=1)
    with pytest.raises(ValidationError, match="http:// or https://"):
        OpenAIConfig(base_url="127.0.0.1:8000/v1", model="m")
    assert all(f.description for f in OpenAIConfig.model_fields.values())


def test_fingerprint_is_base_url_and_model(monkeypatch):
    monkeypatch.setenv("FAKE_KEY", KEY)

    def fp(url: str, model: str = "m", **kw) -> str:
        return OpenAIBackend(OpenAIConfig(base_url=url, model=model, **kw)).fingerprint

    assert fp("http://a/v1") == fp("http://a/v1/") == fp("http://a/v1", api_key_env="FAKE_KEY", max_retries=0)
    assert fp("http://a/v1") != fp("http://b/v1") and fp("http://a/v1") != fp("http://a/v1", model="n")
    assert fp("http://a/v1").startswith("openai:m@")


def test_bounded_concurrency(make_backend):
    with FakeOpenAI(delay_s=0.05) as fake:
        outs = make_backend(fake.url, max_concurrency=4).generate([ask(str(i)) for i in range(40)])
        assert [g.text for g in outs] == [f"echo: {i}" for i in range(40)]
        assert 1 < fake.peak_in_flight <= 4


def test_works_twice_from_threads_and_inside_a_running_loop(server, make_backend):
    backend = make_backend(server.url)
    assert backend.generate([]) == []
    assert backend.generate([ask("one")])[0].text == "echo: one"

    results = []
    worker = threading.Thread(target=lambda: results.append(backend.generate([ask("two")])[0].text))
    worker.start()
    worker.join()
    assert results == ["echo: two"]

    async def inside_loop():
        return backend.generate([ask("three")])[0].text

    assert asyncio.run(inside_loop()) == "echo: three"

    backend.close()
    backend.close()
    assert backend.generate([ask("four")], progress=True)[0].text == "echo: four"
