"""The gateway core end to end: real gateway, real mock upstream, real sockets, official SDKs.

Each test checks what a client sees *and* what the upstream received.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
from google import genai
from google.genai import types as genai_types

from tailgate.record import Outcome
from tests.harness import RunningGateway, config_from, running_gateway
from tests.mock_upstream import MockUpstream

SECRETS = ("sk-openai-SECRET", "sk-ant-SECRET", "AIza-SECRET")


def core_config(mock_url: str, *, extra_providers: str = "", server: str = "") -> str:
    return f"""{{
  // Three real-shaped providers, all served by the mock.
  "providers": {{
    "openai": {{
      "baseurl": "{mock_url}", "apikey": "sk-openai-SECRET",
      "models": ["gpt-4o-mini", "gpt-5-mini", "shared"],
      "compatibility": {{"openai_chat": true, "openai_responses": true}},
    }},
    "anthropic": {{
      "baseurl": "{mock_url}", "apikey": "sk-ant-SECRET", "authorization": "x-api-key",
      "models": ["claude-haiku-4-5", "shared"], "preference": 5,
      "compatibility": {{"anthropic_messages": true}},
    }},
    "gemini": {{
      "baseurl": "{mock_url}", "apikey": "AIza-SECRET", "authorization": "x-goog-api-key",
      "models": ["gemini-2.5-flash"],
      "compatibility": {{"gemini_generate_content": true}},
    }},
    {extra_providers}
  }},
  "grants": [
    {{"src": ["(loopback)"],
      "app": {{"tailscale.com/cap/aperture": [{{"role": "admin"}}, {{"models": "**"}}]}}}},
  ],
  {server}
}}"""


@pytest.fixture
def gw(mock_upstream: MockUpstream, tmp_path: Path) -> Iterator[RunningGateway]:
    with running_gateway(core_config(mock_upstream.base_url), tmp_path) as running:
        yield running


def request(
    gw: RunningGateway,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP exchange; the body is returned exactly as received (chunking removed)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    payload = orjson.dumps(body) if isinstance(body, dict) else body
    all_headers = {"content-type": "application/json", **(headers or {})}
    conn.request(method, path, body=payload, headers=all_headers)
    response = conn.getresponse()
    data = response.read()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, data
    conn.close()
    return result


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
MESSAGES = {
    "model": "claude-haiku-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Say hi"}],
}
RESPONSES = {"model": "gpt-5-mini", "input": "Say hello"}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}


# -- every endpoint, every SDK ---------------------------------------------------------------


def test_openai_sdk_chat_and_responses(gw: RunningGateway, mock_upstream: MockUpstream) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="-")
    chat = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
    )
    assert "demo provider" in (chat.choices[0].message.content or "")
    assert chat.usage is not None and chat.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == chat.choices[0].message.content
    response = client.responses.create(model="gpt-5-mini", input="hello")
    assert "demo provider" in response.output_text
    events = list(client.responses.create(model="gpt-5-mini", input="hello", stream=True))
    assert events[-1].type == "response.completed"
    assert [r.path for r in mock_upstream.requests] == ["/v1/chat/completions"] * 2 + ["/v1/responses"] * 2


def test_anthropic_sdk_messages_and_count_tokens(gw: RunningGateway, mock_upstream: MockUpstream) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key="-")
    message = client.messages.create(
        model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert "demo provider" in message.content[0].text  # type: ignore[union-attr]
    with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == message.usage.output_tokens
    count = client.messages.count_tokens(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}]
    )
    assert count.input_tokens > 0
    paths = [r.path for r in mock_upstream.requests]
    assert paths == ["/v1/messages", "/v1/messages", "/v1/messages/count_tokens"]


def test_google_genai_sdk(gw: RunningGateway, mock_upstream: MockUpstream) -> None:
    client = genai.Client(api_key="-", http_options=genai_types.HttpOptions(base_url=gw.url))
    answer = client.models.generate_content(model="gemini-2.5-flash", contents="hello")
    assert "demo provider" in (answer.text or "")
    streamed = "".join(
        c.text or ""
        for c in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hello")
    )
    assert streamed == answer.text
    tokens = client.models.count_tokens(model="gemini-2.5-flash", contents="hello")
    assert (tokens.total_tokens or 0) > 0
    paths = [r.path for r in mock_upstream.requests]
    assert paths[0].endswith("/models/gemini-2.5-flash:generateContent")
    assert paths[1].endswith("/models/gemini-2.5-flash:streamGenerateContent")
    assert mock_upstream.requests[1].query == "alt=sse"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}),
        ("/v1/chat/completions", CHAT),
        ("/chat/completions", CHAT),
        ("/v1/responses", {**RESPONSES, "stream": True}),
        ("/v1/responses", RESPONSES),
        ("/v1/messages?beta=true", {**MESSAGES, "stream": True}),
        ("/v1/messages", MESSAGES),
        ("/v1/messages/count_tokens", {"model": "claude-haiku-4-5", "messages": MESSAGES["messages"]}),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", GEMINI),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", GEMINI),
        ("/v1/models/gemini-2.5-flash:generateContent", GEMINI),
        ("/v1beta/models/gemini-2.5-flash:countTokens", GEMINI),
    ],
)
def test_bytes_relayed_exactly(
    gw: RunningGateway, mock_upstream: MockUpstream, path: str, body: dict[str, Any]
) -> None:
    status, headers, data = request(gw, "POST", path, body, {"authorization": "Bearer -"})
    assert status == 200
    assert data == mock_upstream.responses[-1]
    sent = mock_upstream.requests[-1]
    assert sent.query == path.partition("?")[2]
    assert headers["x-tailgate-request-id"]


def test_curl(gw: RunningGateway) -> None:
    import subprocess

    out = subprocess.run(
        [
            "curl",
            "-s",
            "-N",
            f"{gw.url}/v1/chat/completions",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps({**CHAT, "stream": True}),
        ],
        capture_output=True,
        timeout=20,
        check=True,
    ).stdout
    assert out.startswith(b"data: ") and out.rstrip().endswith(b"data: [DONE]")
    assert b'"choices":[]' not in out  # the usage chunk the gateway asked for is not passed on


# -- credentials -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "header", "value"),
    [
        ("/v1/chat/completions", CHAT, "authorization", "Bearer sk-openai-SECRET"),
        ("/v1/messages", MESSAGES, "x-api-key", "sk-ant-SECRET"),
        (
            "/v1beta/models/gemini-2.5-flash:generateContent?key=client-key",
            GEMINI,
            "x-goog-api-key",
            "AIza-SECRET",
        ),
    ],
)
def test_client_credentials_are_replaced_by_the_providers(
    gw: RunningGateway, mock_upstream: MockUpstream, path: str, body: dict[str, Any], header: str, value: str
) -> None:
    client_creds = {
        "authorization": "Bearer sk-client-own",
        "x-api-key": "client-x-api-key",
        "x-goog-api-key": "client-goog",
        "api-key": "client-azure",
        "cookie": "session=abc",
        "tailscale-user-login": "mallory@example.com",
        "x-forwarded-for": "100.100.100.100",
        "anthropic-beta": "interleaved-thinking-2025-05-14",
        "x-custom": "kept",
    }
    status, _, _ = request(gw, "POST", path, body, client_creds)
    assert status == 200
    sent = mock_upstream.requests[-1]
    names = {k.lower() for k, _ in sent.headers}
    assert sent.header(header) == value
    for other in ("authorization", "x-api-key", "x-goog-api-key"):
        if other != header:
            assert other not in names
    assert {"api-key", "cookie", "tailscale-user-login", "x-forwarded-for"}.isdisjoint(names)
    assert sent.header("anthropic-beta") == "interleaved-thinking-2025-05-14"
    assert sent.header("x-custom") == "kept"
    assert "key=" not in sent.query
    everything = repr(sent.headers) + sent.query
    assert "client" not in everything.lower().replace("x-client", "")


# -- routing -------------------------------------------------------------------------------------


def _provider(pid: str, url: str, models: str, extra: str = "") -> str:
    return f'"{pid}": {{"baseurl": "{url}", "apikey": "sk-{pid}", "models": [{models}] {extra}}},'


def test_routing_by_preference_fqn_disabled_and_compatibility(
    mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    url = mock_upstream.base_url
    extra = (
        _provider("low", url, '"dup"', ', "preference": 1')
        + _provider("high", url, '"dup"', ', "preference": 10')
        + _provider("off", url, '"dup", "only-off"', ', "preference": 100, "disabled": true')
    )
    with running_gateway(core_config(url, extra_providers=extra), tmp_path) as gw:

        def key_used(model: str, path: str = "/v1/chat/completions") -> str | None:
            status, _, body = request(
                gw, "POST", path, {"model": model, "messages": [{"role": "user", "content": "x"}]}
            )
            assert status == 200, body
            return mock_upstream.requests[-1].header("authorization")

        assert key_used("dup") == "Bearer sk-high"
        assert key_used("low/dup") == "Bearer sk-low"
        assert mock_upstream.requests[-1].json()["model"] == "dup"  # the FQN prefix is not sent upstream
        assert key_used("openai/gpt-4o-mini") == "Bearer sk-openai-SECRET"
        # "shared": anthropic has the higher preference but does not serve chat completions.
        assert key_used("shared") == "Bearer sk-openai-SECRET"
        assert mock_upstream.requests[-1].body == orjson.dumps(
            {"model": "shared", "messages": [{"role": "user", "content": "x"}]}
        )  # an untouched request is forwarded byte for byte

        status, _, body = request(gw, "POST", "/v1/chat/completions", {"model": "only-off", "messages": []})
        assert status == 404 and b"only-off" in body
        status, _, body = request(
            gw, "POST", "/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 5, "messages": []}
        )
        assert status == 400
        error = orjson.loads(body)
        assert error["type"] == "error" and "gpt-4o-mini" in error["error"]["message"]
        assert "anthropic_messages" in error["error"]["message"]
        status, _, body = request(gw, "POST", "/v1/responses", {"model": "claude-haiku-4-5", "input": "x"})
        assert status == 400 and b"openai_responses" in body


def test_v1_in_baseurl_is_not_doubled_and_prefixes_are_kept(
    mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    with MockUpstream(prefix="/api") as prefixed:
        extra = _provider("router", prefixed.base_url + "/", '"routed"') + _provider(
            "vllm", mock_upstream.base_url + "/v1", '"llama"'
        )
        with running_gateway(core_config("http://127.0.0.1:9", extra_providers=extra), tmp_path) as gw:
            assert request(gw, "POST", "/v1/chat/completions", {"model": "routed", "messages": []})[0] == 200
            assert prefixed.requests[-1].path == "/api/v1/chat/completions"
            assert request(gw, "POST", "/chat/completions", {"model": "llama", "messages": []})[0] == 200
            assert mock_upstream.requests[-1].path == "/v1/chat/completions"
            assert request(gw, "POST", "/v1/chat/completions", {"model": "llama", "messages": []})[0] == 200
            assert mock_upstream.requests[-1].path == "/v1/chat/completions"


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "dialect"),
    [
        ("/v1/chat/completions", "openai"),
        ("/v1/messages", "anthropic"),
        ("/v1beta/models/gemini-2.5-flash:generateContent", "gemini"),
    ],
)
@pytest.mark.parametrize(
    ("case", "body", "status"),
    [
        ("malformed", b'{"model": "x", ', 400),
        ("not-object", b"[1, 2]", 400),
        ("empty", b"", 400),
        ("unknown-model", b'{"model": "no-such-model", "contents": [], "messages": []}', 404),
    ],
)
def test_bad_input_gets_the_dialects_error(
    gw: RunningGateway, path: str, dialect: str, case: str, body: bytes, status: int
) -> None:
    if dialect == "gemini" and case == "unknown-model":
        path = "/v1beta/models/no-such-model:generateContent"
    got, _, data = request(gw, "POST", path, body)
    assert got == status
    error = orjson.loads(data)
    if dialect == "openai":
        assert set(error["error"]) == {"message", "type", "param", "code"}
    elif dialect == "anthropic":
        assert error["type"] == "error" and set(error["error"]) == {"type", "message"}
    else:
        assert error["error"]["code"] == status and error["error"]["status"]
    if case == "unknown-model":
        assert "no-such-model" in data.decode()


def test_missing_model_wrong_method_unknown_path_and_oversized_body(
    mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    config = core_config(mock_upstream.base_url, server='"server": {"max_body_bytes": 2048},')
    with running_gateway(config, tmp_path) as gw:
        status, _, data = request(gw, "POST", "/v1/messages", {"max_tokens": 5, "messages": []})
        assert status == 400 and orjson.loads(data)["error"]["type"] == "invalid_request_error"
        assert b"model" in data
        status, _, data = request(gw, "GET", "/v1/chat/completions")
        assert status == 405 and orjson.loads(data)["error"]["code"] == "method_not_allowed"
        status, _, data = request(gw, "GET", "/v1/nothing-here")
        assert status == 404 and "/v1/nothing-here" in orjson.loads(data)["error"]["message"]
        big = {**MESSAGES, "padding": "x" * 4096}
        status, _, data = request(gw, "POST", "/v1/messages", big)
        assert status == 413
        assert orjson.loads(data)["error"]["type"] == "request_too_large"
        assert mock_upstream.requests == []


def test_upstream_errors_are_relayed_unchanged(gw: RunningGateway, mock_upstream: MockUpstream) -> None:
    status, headers, data = request(gw, "POST", "/v1/messages", MESSAGES, {"x-mock-scenario": "error=529"})
    assert status == 529
    assert data == mock_upstream.responses[-1]
    assert headers["retry-after"] == "1"
    records = gw.records()
    assert records[0].outcome is Outcome.UPSTREAM_ERROR and records[0].status == 529


def test_unreachable_timeout_and_garbage_upstreams(mock_upstream: MockUpstream, tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    extra = _provider("dead", dead_url, '"dead-model"')
    config = core_config(
        mock_upstream.base_url, extra_providers=extra, server='"server": {"upstream_timeout": 0.5},'
    )
    with running_gateway(config, tmp_path) as gw:
        status, _, data = request(gw, "POST", "/v1/chat/completions", {"model": "dead-model", "messages": []})
        assert status == 502 and b"connection refused" in data
        status, _, data = request(gw, "POST", "/v1/messages", MESSAGES, {"x-mock-scenario": "hang"})
        assert status == 504 and orjson.loads(data)["error"]["type"] == "timeout_error"
        status, _, data = request(
            gw,
            "POST",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            GEMINI,
            {"x-mock-scenario": "garbage"},
        )
        assert status == 502 and orjson.loads(data)["error"]["status"] == "UNAVAILABLE"
        for secret in SECRETS:
            assert secret not in data.decode()
        outcomes = [r.outcome for r in gw.records()]
        assert outcomes == [Outcome.UPSTREAM_FAILED] * 3


# -- streams -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "marker"),
    [
        ("/v1/chat/completions", {**CHAT, "stream": True}, b'data: {"error":'),
        ("/v1/responses", {**RESPONSES, "stream": True}, b"event: error\ndata: "),
        ("/v1/messages", {**MESSAGES, "stream": True}, b"event: error\ndata: "),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", GEMINI, b'data: {"error":'),
    ],
)
def test_upstream_dying_mid_stream_ends_with_an_error_event(
    gw: RunningGateway, mock_upstream: MockUpstream, path: str, body: dict[str, Any], marker: bytes
) -> None:
    status, _, data = request(gw, "POST", path, body, {"x-mock-scenario": "die_after=3,chunks=10"})
    assert status == 200
    upstream = mock_upstream.responses[-1]
    assert data.startswith(upstream)
    tail = data[len(upstream) :]
    assert tail.startswith(marker) and tail.endswith(b"\n\n")
    record = gw.records()[0]
    assert record.outcome is Outcome.UPSTREAM_FAILED


def test_client_disconnect_cancels_the_upstream_call(gw: RunningGateway, mock_upstream: MockUpstream) -> None:
    body = orjson.dumps({**MESSAGES, "stream": True})
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"x-mock-scenario: chunk_delay=50,chunks=200\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
    )
    first = sock.recv(4096)
    assert first.startswith(b"HTTP/1.1 200 ")
    sock.close()
    mock_upstream.wait_for(lambda: mock_upstream.cancelled == 1)
    record = gw.records()[0]
    assert record.outcome is Outcome.CLIENT_DISCONNECTED
    assert record.usage is not None and record.usage.partial


def test_first_byte_is_not_held_back(gw: RunningGateway) -> None:
    body = orjson.dumps({**MESSAGES, "stream": True})
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    started = time.monotonic()
    conn.request(
        "POST",
        "/v1/messages",
        body=body,
        headers={"content-type": "application/json", "x-mock-scenario": "chunk_delay=300,chunks=4"},
    )
    response = conn.getresponse()
    first = response.read1(65536)
    first_at = time.monotonic() - started
    rest = response.read()
    total = time.monotonic() - started
    conn.close()
    assert first.startswith(b"event: message_start")
    assert total - first_at > 0.6  # the stream kept arriving after the first bytes were delivered
    assert b"message_stop" in rest


def test_reload_keeps_in_flight_streams(gw: RunningGateway, mock_upstream: MockUpstream) -> None:
    body = orjson.dumps({**CHAT, "stream": True})
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=body,
        headers={"content-type": "application/json", "x-mock-scenario": "chunk_delay=40,chunks=15"},
    )
    response = conn.getresponse()
    response.read1(100)
    # A new configuration without the openai provider, applied mid-stream.
    without_openai = core_config(mock_upstream.base_url).replace(
        '"openai": {', '"gone": {"disabled": true,', 1
    )
    gw.apply(config_from(without_openai))
    rest = response.read()
    conn.close()
    assert rest.rstrip().endswith(b"data: [DONE]")
    status, _, _ = request(gw, "POST", "/v1/chat/completions", CHAT)
    assert status == 404


# -- small endpoints ---------------------------------------------------------------------------


def test_probes_and_model_lists(gw: RunningGateway) -> None:
    status, _, data = request(gw, "HEAD", "/")
    assert status == 200 and data == b""
    assert request(gw, "GET", "/")[0] == 200
    status, _, data = request(gw, "GET", "/healthz")
    assert status == 200 and orjson.loads(data)["status"] == "ok"
    models = orjson.loads(request(gw, "GET", "/v1/models")[2])
    ids = {m["id"] for m in models["data"]}
    assert {"gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash", "shared"} <= ids
    anthropic_list = orjson.loads(
        request(gw, "GET", "/v1/models", headers={"anthropic-version": "2023-06-01"})[2]
    )
    assert anthropic_list["data"][0]["type"] == "model" and "has_more" in anthropic_list
    gemini_list = orjson.loads(request(gw, "GET", "/v1beta/models")[2])
    assert [m["name"] for m in gemini_list["models"]] == ["models/gemini-2.5-flash"]
    providers = orjson.loads(request(gw, "GET", "/api/providers")[2])
    assert {p["id"] for p in providers} == {"openai", "anthropic", "gemini"}
    assert providers[0]["compatibility"]["openai_chat"] is True
    for secret in SECRETS:
        assert secret not in json.dumps(providers)


def test_responses_websocket_is_refused_at_once(gw: RunningGateway) -> None:
    status, _headers, data = request(
        gw,
        "GET",
        "/v1/responses",
        headers={
            "connection": "Upgrade",
            "upgrade": "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert status == 426
    assert "POST /v1/responses" in orjson.loads(data)["error"]["message"]


def test_upstream_silence_mid_stream_ends_with_a_timeout_event(
    mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    config = core_config(mock_upstream.base_url, server='"server": {"upstream_timeout": 0.3},')
    with running_gateway(config, tmp_path) as gw:
        status, _, data = request(
            gw,
            "POST",
            "/v1/messages",
            {**MESSAGES, "stream": True},
            {"x-mock-scenario": "chunk_delay=1500,chunks=3"},
        )
    assert status == 200
    assert data.startswith(b"event: message_start")
    error = data[data.index(b"event: error") :]
    assert b'"type":"timeout_error"' in error and b"0.3 seconds" in error


def test_a_slow_client_gets_every_byte_in_order(gw: RunningGateway, mock_upstream: MockUpstream) -> None:
    body = orjson.dumps({**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"x-mock-scenario: chunks=6000\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
    )
    received = bytearray()
    time.sleep(0.3)  # nobody reads for a while: the gateway's buffers fill
    sock.settimeout(10)
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    head, _, chunked = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    decoded = bytearray()
    while True:
        size_line, _, rest = chunked.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        decoded += rest[:size]
        chunked = rest[size + 2 :]
    upstream = mock_upstream.responses[-1]
    assert len(upstream) > 400_000
    assert bytes(decoded) == upstream
