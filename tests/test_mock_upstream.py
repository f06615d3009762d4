"""The mock upstream speaks each provider's wire format, records exchanges and plays scenarios,
checked with the official SDKs (and a raw client where bytes and timing matter)."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anthropic
import brotli
import httpx2
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gtypes

from tailgate.demo import CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, REASONING_TOKENS
from tests.mock_upstream import DEFAULT_MODELS, GARBAGE, MockUpstream, mock_upstream, parse_scenario

__all__ = ["mock_upstream"]  # the fixture, imported for these tests

MESSAGES: Any = [{"role": "user", "content": "hi"}]
GREETING = "Hello from tailgate's demo provider. You said: hi"


def openai_client(mock: MockUpstream, key: str = "sk-test", **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=mock.base_url + "/v1", api_key=key, max_retries=0, **kwargs)


def anthropic_client(
    mock: MockUpstream, key: str | None = "sk-ant-test", **kwargs: Any
) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=mock.base_url, api_key=key, max_retries=0, **kwargs)


def genai_client(mock: MockUpstream, key: str = "gk-test", api_version: str | None = None) -> genai.Client:
    options = gtypes.HttpOptions(base_url=mock.base_url, api_version=api_version, timeout=5000)
    return genai.Client(api_key=key, http_options=options)


def scenario(name: str) -> dict[str, str]:
    return {"x-mock-scenario": name}


@dataclass
class Received:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    arrivals: list[tuple[float, bytes]] = field(default_factory=list)
    """(seconds since the request was sent, bytes) for each piece as it arrived."""


def fetch(
    url: str,
    method: str = "POST",
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
) -> Received:
    """One request with a raw client that keeps every arriving piece (no decompression)."""

    async def go() -> Received:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            started = time.perf_counter()
            data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            async with session.request(
                method, url, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
            ) as response:
                received = Received(response.status, dict(response.headers))
                async for piece in response.content.iter_any():
                    received.arrivals.append((time.perf_counter() - started, piece))
                    received.body += piece
                    if stop_after is not None and len(received.arrivals) >= stop_after:
                        break
                return received

    return asyncio.run(go())


# -- recording -------------------------------------------------------------------------------------


def test_records_every_request_as_received(mock_upstream: MockUpstream) -> None:
    client = openai_client(mock_upstream)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_query={"trace": "a b"})
    (request,) = mock_upstream.requests
    assert (request.method, request.path, request.query) == ("POST", "/v1/chat/completions", "trace=a+b")
    assert request.header("authorization") == "Bearer sk-test"
    assert any(name.lower().startswith("x-stainless") for name, _ in request.headers)
    assert request.json() == {"messages": MESSAGES, "model": "gpt-4o-mini"}
    assert request.body == json.dumps(request.json(), separators=(",", ":")).encode()


@pytest.mark.parametrize("stream", [False, True])
def test_records_the_exact_body_bytes_sent(mock_upstream: MockUpstream, stream: bool) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": stream}
    received = fetch(mock_upstream.base_url + "/v1/chat/completions", body=body)
    assert received.status == 200
    assert mock_upstream.responses == [received.body]
    assert received.body.endswith(b"data: [DONE]\n\n" if stream else b"}")
    exchange = mock_upstream.exchanges[0]
    assert exchange.complete and not exchange.cancelled and exchange.status == 200


def test_reset_forgets_exchanges_scenario_and_credentials(mock_upstream: MockUpstream) -> None:
    mock_upstream.scenario = "error=500"
    mock_upstream.expect_credential("bearer", "k")
    fetch(mock_upstream.base_url + "/v1/models", "GET")
    mock_upstream.reset()
    assert mock_upstream.requests == [] and mock_upstream.scenario == "" and mock_upstream.credentials == {}
    assert fetch(mock_upstream.base_url + "/v1/models", "GET").status == 200


# -- every endpoint through the SDKs ---------------------------------------------------------------


def test_openai_chat_and_responses(mock_upstream: MockUpstream) -> None:
    client = openai_client(mock_upstream)
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content == GREETING
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == GREETING
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert client.responses.create(model="m", input="hi").output_text == GREETING
    with client.responses.stream(model="m", input="hi") as events:
        final = events.get_final_response()
    assert final.output_text == GREETING and final.usage is not None and final.usage.output_tokens == 8


def test_anthropic_messages_with_query_string_and_count_tokens(mock_upstream: MockUpstream) -> None:
    client = anthropic_client(mock_upstream)
    message = client.messages.create(
        model="c", max_tokens=64, messages=MESSAGES, extra_query={"beta": "true"}
    )
    assert message.content[0].text == GREETING  # type: ignore[union-attr]
    assert (mock_upstream.requests[0].path, mock_upstream.requests[0].query) == ("/v1/messages", "beta=true")
    with client.messages.stream(model="c", max_tokens=64, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == GREETING
        assert stream.get_final_message().usage.output_tokens == 8
    assert client.messages.count_tokens(model="c", messages=MESSAGES).input_tokens == 1
    assert mock_upstream.requests[-1].path == "/v1/messages/count_tokens"


@pytest.mark.parametrize("api_version", [None, "v1beta"])
def test_gemini_endpoints_under_v1_and_v1beta(mock_upstream: MockUpstream, api_version: str | None) -> None:
    client = genai_client(mock_upstream, api_version=api_version)
    assert client.models.generate_content(model="gemini-2.5-flash", contents="hi").text == GREETING
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    assert "".join(c.text or "" for c in chunks) == GREETING
    assert client.models.count_tokens(model="gemini-2.5-flash", contents="hi").total_tokens == 1
    version = api_version or "v1"
    assert [(r.path, r.query) for r in mock_upstream.requests] == [
        (f"/{version}/models/gemini-2.5-flash:generateContent", ""),
        (f"/{version}/models/gemini-2.5-flash:streamGenerateContent", "alt=sse"),
        (f"/{version}/models/gemini-2.5-flash:countTokens", ""),
    ]
    assert all(r.header("x-goog-api-key") == "gk-test" for r in mock_upstream.requests)


def test_gemini_stream_without_alt_sse_is_a_json_array_sent_in_pieces(mock_upstream: MockUpstream) -> None:
    url = mock_upstream.base_url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    received = fetch(
        url, body={"contents": [{"parts": [{"text": "hi"}]}]}, headers=scenario("chunk_delay=30")
    )
    assert received.headers["Content-Type"] == "application/json"
    elements = json.loads(received.body)
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in elements) == GREETING
    assert len(received.arrivals) >= 4  # pieces flushed one by one


def test_model_lists_in_each_providers_shape(mock_upstream: MockUpstream) -> None:
    assert [m.id for m in openai_client(mock_upstream).models.list()] == list(DEFAULT_MODELS)
    assert [m.id for m in anthropic_client(mock_upstream).models.list()] == list(DEFAULT_MODELS)
    gemini = genai_client(
        mock_upstream
    )  # kept in a variable: the SDK closes its connection pool on collection
    assert [m.name for m in gemini.models.list()] == [f"models/{m}" for m in DEFAULT_MODELS]
    listed = json.loads(fetch(mock_upstream.base_url + "/v1beta/models", "GET").body)
    assert [m["name"] for m in listed["models"]] == [f"models/{m}" for m in DEFAULT_MODELS]


def test_unknown_paths_get_the_providers_404(mock_upstream: MockUpstream) -> None:
    received = fetch(mock_upstream.base_url + "/v1/embeddings", body={})
    assert received.status == 404
    assert json.loads(received.body)["error"]["message"] == "Invalid URL (POST /v1/embeddings)"


def test_a_body_that_is_not_json_gets_a_native_400(mock_upstream: MockUpstream) -> None:
    received = fetch(mock_upstream.base_url + "/v1/messages", body=b"{not json")
    assert received.status == 400
    assert json.loads(received.body)["error"]["type"] == "invalid_request_error"


def test_routes_are_served_only_under_the_prefix() -> None:
    with MockUpstream(prefix="/api/") as mock:
        assert mock.base_url.endswith("/api")
        client = openai_client(mock)
        assert (
            client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content
            == GREETING
        )
        gemini = genai_client(mock)
        assert gemini.models.generate_content(model="g", contents="hi").text == GREETING
        assert mock.requests[0].path == "/api/v1/chat/completions"
        root = mock.base_url.removesuffix("/api")
        assert fetch(root + "/v1/chat/completions", body={"model": "m", "messages": MESSAGES}).status == 404


# -- credentials -----------------------------------------------------------------------------------


def test_bearer_credential_check(mock_upstream: MockUpstream) -> None:
    mock_upstream.expect_credential("bearer", "sk-right")
    assert openai_client(mock_upstream, "sk-right").models.list().data
    with pytest.raises(openai.AuthenticationError) as raised:
        openai_client(mock_upstream, "sk-wrong").chat.completions.create(model="m", messages=MESSAGES)
    assert raised.value.code == "invalid_api_key"
    assert b"sk-wrong" not in mock_upstream.responses[-1] and b"sk-right" not in mock_upstream.responses[-1]


def test_x_api_key_credential_check(mock_upstream: MockUpstream) -> None:
    mock_upstream.expect_credential("x-api-key", "sk-ant-right")
    right = anthropic_client(mock_upstream, None, default_headers={"x-api-key": "sk-ant-right"})
    assert right.messages.create(model="c", max_tokens=8, messages=MESSAGES).content
    # The Anthropic SDK sends its api_key as a Bearer token: the wrong style for this provider.
    with pytest.raises(anthropic.AuthenticationError) as raised:
        anthropic_client(mock_upstream, "sk-ant-right").messages.create(
            model="c", max_tokens=8, messages=MESSAGES
        )
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": raised.value.response.headers["request-id"],
    }


def test_x_goog_api_key_credential_check(mock_upstream: MockUpstream) -> None:
    mock_upstream.expect_credential("x-goog-api-key", "gk-right")
    right, wrong = genai_client(mock_upstream, "gk-right"), genai_client(mock_upstream, "gk-wrong")
    assert right.models.generate_content(model="g", contents="hi").text == GREETING
    with pytest.raises(genai_errors.ClientError) as raised:
        wrong.models.generate_content(model="g", contents="hi")
    assert (raised.value.code, raised.value.status) == (400, "INVALID_ARGUMENT")
    assert raised.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    missing = fetch(mock_upstream.base_url + "/v1beta/models/g:generateContent", body={"contents": []})
    assert missing.status == 403 and json.loads(missing.body)["error"]["status"] == "PERMISSION_DENIED"


# -- scenarios -------------------------------------------------------------------------------------


def test_scenarios_parse_strictly() -> None:
    assert parse_scenario("error=429, chunks=3", "gzip") == parse_scenario("gzip,chunks=3,error=429")
    assert parse_scenario("chunks=3", "chunks=5").chunks == 5
    for bad in ("erorr=500", "error", "gzip=1", "chunks=-1"):
        with pytest.raises(ValueError):
            parse_scenario(bad)


def test_an_unknown_scenario_fails_the_request_loudly(mock_upstream: MockUpstream) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown mock scenario 'hnag'"):
        openai_client(mock_upstream).models.list(extra_headers=scenario("hnag"))


def test_openai_errors(mock_upstream: MockUpstream) -> None:
    client = openai_client(mock_upstream)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="m", messages=MESSAGES, extra_headers=scenario("error=429"))
    assert (
        limited.value.code == "rate_limit_exceeded" and limited.value.response.headers["retry-after"] == "1"
    )
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="m", input="hi", extra_headers=scenario("error=500"))


def test_anthropic_errors(mock_upstream: MockUpstream) -> None:
    client = anthropic_client(mock_upstream)
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        client.messages.create(
            model="c", max_tokens=8, messages=MESSAGES, extra_headers=scenario("error=529")
        )
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(
            model="c", max_tokens=8, messages=MESSAGES, extra_headers=scenario("error=429,retry_after=7")
        )
    assert limited.value.response.headers["retry-after"] == "7"


def test_gemini_errors(mock_upstream: MockUpstream) -> None:
    client = genai_client(mock_upstream)
    mock_upstream.scenario = "error=429"
    with pytest.raises(genai_errors.ClientError) as limited:
        client.models.generate_content(model="g", contents="hi")
    assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")
    mock_upstream.scenario = "error=503"
    with pytest.raises(genai_errors.ServerError) as unavailable:
        list(client.models.generate_content_stream(model="g", contents="hi"))
    assert unavailable.value.status == "UNAVAILABLE"


def test_die_after_resets_the_connection_mid_stream(mock_upstream: MockUpstream) -> None:
    stream = openai_client(mock_upstream).chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_headers=scenario("die_after=3")
    )
    seen = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["", "Hello", " from"]
    exchange = mock_upstream.exchanges[0]
    assert exchange.reset and not exchange.complete and not exchange.cancelled
    assert exchange.body.count(b"data: ") == 3
    # The Anthropic SDK lets the transport's own error through mid-stream.
    anthropic_stream = anthropic_client(mock_upstream).messages.stream(
        model="c", max_tokens=8, messages=MESSAGES, extra_headers=scenario("die_after=4")
    )
    with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)), anthropic_stream as events:
        list(events)


def test_die_after_cuts_a_json_body_short(mock_upstream: MockUpstream) -> None:
    client = genai_client(mock_upstream)
    mock_upstream.scenario = "die_after=10"
    with pytest.raises(httpx2.TransportError):
        client.models.generate_content(model="g", contents="hi")
    assert len(mock_upstream.responses[0]) == 10
    assert dict(mock_upstream.exchanges[0].headers)["content-type"] == "application/json"


def test_first_byte_delay(mock_upstream: MockUpstream) -> None:
    received = fetch(mock_upstream.base_url + "/v1/models", "GET", headers=scenario("first_byte_delay=150"))
    assert received.arrivals[0][0] >= 0.15


def test_stream_chunks_are_flushed_one_by_one(mock_upstream: MockUpstream) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    received = fetch(
        mock_upstream.base_url + "/v1/chat/completions",
        body=body,
        headers=scenario("chunks=4,chunk_delay=60"),
    )
    # 7 events (role, 4 words, finish, [DONE]) with 60 ms between them: the first must arrive long
    # before the last is even sent.
    assert len(received.arrivals) == 7
    first, last = received.arrivals[0][0], received.arrivals[-1][0]
    assert last - first >= 6 * 0.06 * 0.9
    assert received.body == mock_upstream.responses[0]


@pytest.mark.parametrize(
    ("name", "magic", "decompress"), [("gzip", b"\x1f\x8b", gzip.decompress), ("br", None, brotli.decompress)]
)
def test_compressed_json_bodies(
    mock_upstream: MockUpstream, name: str, magic: bytes | None, decompress: Any
) -> None:
    mock_upstream.scenario = name
    assert (
        openai_client(mock_upstream)
        .chat.completions.create(model="m", messages=MESSAGES)
        .choices[0]
        .message.content
        == GREETING
    )
    assert anthropic_client(mock_upstream).messages.create(model="c", max_tokens=8, messages=MESSAGES).content
    gemini = genai_client(mock_upstream)
    assert gemini.models.generate_content(model="g", contents="hi").text == GREETING
    for exchange in mock_upstream.exchanges:
        assert dict(exchange.headers)["content-encoding"] == name
        assert magic is None or exchange.body.startswith(magic)
        assert b"Hello" in decompress(bytes(exchange.body))


def test_hang_never_answers_and_counts_the_client_leaving(mock_upstream: MockUpstream) -> None:
    with pytest.raises(openai.APITimeoutError):
        openai_client(mock_upstream, timeout=0.3).chat.completions.create(
            model="m", messages=MESSAGES, extra_headers=scenario("hang")
        )
    mock_upstream.wait_for(lambda: mock_upstream.cancelled == 1)
    assert mock_upstream.responses == [b""]


def test_a_client_leaving_mid_stream_is_counted(mock_upstream: MockUpstream) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    received = fetch(
        mock_upstream.base_url + "/v1/chat/completions",
        body=body,
        headers=scenario("chunk_delay=100"),
        stop_after=1,
    )
    assert len(received.arrivals) == 1
    mock_upstream.wait_for(lambda: mock_upstream.cancelled == 1)
    assert not mock_upstream.exchanges[0].complete


def test_garbage_is_not_http(mock_upstream: MockUpstream) -> None:
    with pytest.raises(openai.APIConnectionError):
        openai_client(mock_upstream).chat.completions.create(
            model="m", messages=MESSAGES, extra_headers=scenario("garbage")
        )
    assert mock_upstream.responses == [GARBAGE] and mock_upstream.cancelled == 0


def test_answer_shapes_through_the_sdks(mock_upstream: MockUpstream) -> None:
    client = openai_client(mock_upstream)
    tooled = client.chat.completions.create(model="m", messages=MESSAGES, extra_headers=scenario("tools"))
    assert tooled.choices[0].message.tool_calls[0].function.arguments == '{"city":"Paris"}'  # type: ignore[index, union-attr]
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=scenario("no_usage,chunks=5"),
        )
    )
    assert all(c.usage is None for c in chunks) and sum(bool(c.choices[0].delta.content) for c in chunks) == 5
    cached = anthropic_client(mock_upstream).messages.create(
        model="c", max_tokens=8, messages=MESSAGES, extra_headers=scenario("cache")
    )
    assert (cached.usage.cache_read_input_tokens, cached.usage.cache_creation_input_tokens) == (
        CACHE_READ_TOKENS,
        CACHE_WRITE_TOKENS,
    )
    mock_upstream.scenario = "reasoning"
    gemini = genai_client(mock_upstream)
    thought = gemini.models.generate_content(model="g", contents="hi")
    assert (
        thought.usage_metadata is not None and thought.usage_metadata.thoughts_token_count == REASONING_TOKENS
    )
