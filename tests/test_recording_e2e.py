"""Every request recorded, through the real gateway, on SQLite and on PostgreSQL."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tailgate.record import Outcome
from tailgate.store import SessionFilter, open_store
from tests.harness import RunningGateway, running_gateway
from tests.mock_upstream import MockUpstream
from tests.pg import pg_admin_url, store_url  # noqa: F401  (fixtures)


def recording_config(mock_url: str, dead_url: str) -> str:
    return f"""{{
  "providers": {{
    "openai": {{"baseurl": "{mock_url}", "apikey": "sk-openai-SECRET", "models": ["gpt-4o-mini", "gpt-5-mini"],
                "compatibility": {{"openai_chat": true, "openai_responses": true}}}},
    "anthropic": {{"baseurl": "{mock_url}", "apikey": "sk-ant-SECRET", "authorization": "x-api-key",
                   "models": ["claude-haiku-4-5", "claude-opus-4-5"], "compatibility": {{"anthropic_messages": true}}}},
    "gemini": {{"baseurl": "{mock_url}", "apikey": "AIza-SECRET", "authorization": "x-goog-api-key",
                "models": ["gemini-2.5-flash"], "compatibility": {{"gemini_generate_content": true}}}},
    "dead": {{"baseurl": "{dead_url}", "models": ["dead-model"]}},
    "restricted": {{"baseurl": "{mock_url}", "models": ["secret-model"]}},
  }},
  "grants": [{{"src": ["(loopback)"], "app": {{"tailscale.com/cap/aperture": [
    {{"role": "admin"}},
    {{"models": "openai/**"}}, {{"models": "anthropic/**"}}, {{"models": "gemini/**"}}, {{"models": "dead/**"}},
    {{"models": "anthropic/claude-opus-4-5", "quotas": [{{"bucket": "opus"}}]}},
  ]}}}}],
  "quotas": {{"opus": {{"capacity": "$0.00", "rate": "$0.00/day"}}}},
}}"""


@pytest.fixture
def gw(store_url: str, mock_upstream: MockUpstream, tmp_path: Path) -> Iterator[RunningGateway]:  # noqa: F811
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    store = open_store(store_url)
    with running_gateway(recording_config(mock_upstream.base_url, dead), tmp_path, store=store) as running:
        yield running


def post(
    gw: RunningGateway, path: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    conn.request("POST", path, body=payload, headers={"content-type": "application/json", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}


def test_one_record_per_request_for_every_outcome(gw: RunningGateway, mock_upstream: MockUpstream) -> None:
    expected: list[Outcome] = []

    def send(
        outcome: Outcome, status: int, path: str, body: bytes | dict[str, Any], scenario: str = ""
    ) -> None:
        got, _ = post(gw, path, body, {"x-mock-scenario": scenario} if scenario else None)
        assert got == status, (outcome, got)
        expected.append(outcome)

    send(Outcome.OK, 200, "/v1/chat/completions", CHAT)
    send(Outcome.OK, 200, "/v1/messages", {**MESSAGES, "stream": True})
    send(Outcome.UPSTREAM_ERROR, 500, "/v1/chat/completions", CHAT, "error=500")
    send(Outcome.DENIED, 403, "/v1/chat/completions", {**CHAT, "model": "secret-model"})
    send(Outcome.QUOTA_EXCEEDED, 429, "/v1/messages", {**MESSAGES, "model": "claude-opus-4-5"})
    send(Outcome.INVALID, 400, "/v1/messages", b"{not json")
    send(Outcome.INVALID, 404, "/v1/chat/completions", {**CHAT, "model": "nope"})
    send(Outcome.UPSTREAM_FAILED, 502, "/v1/chat/completions", {**CHAT, "model": "dead-model"})
    send(Outcome.UPSTREAM_FAILED, 200, "/v1/messages", {**MESSAGES, "stream": True}, "die_after=2")

    body = orjson.dumps({**MESSAGES, "stream": True})
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"x-mock-scenario: chunk_delay=50,chunks=100\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
    )
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    sock.close()
    expected.append(Outcome.CLIENT_DISCONNECTED)
    mock_upstream.wait_for(lambda: mock_upstream.cancelled == 1)

    records = list(reversed(gw.records()))
    assert len(records) == len(expected)
    assert [r.outcome for r in records] == expected
    assert len({r.id for r in records}) == len(records)
    disconnected = records[-1]
    assert disconnected.usage is not None and disconnected.usage.partial
    died = records[-2]
    assert died.usage is not None and died.usage.partial
    assert records[0].usage is not None and records[0].cost_nd is not None and records[0].cost_nd > 0


def test_captures_redact_credentials_and_decode_bodies(gw: RunningGateway) -> None:
    status, raw = post(
        gw,
        "/v1/chat/completions",
        CHAT,
        {
            "authorization": "Bearer sk-client-own-KEY",
            "x-api-key": "client-KEY",
            "x-mock-scenario": "gzip",
            "cookie": "sid=client-KEY",
        },
    )
    assert status == 200
    assert raw[:2] == b"\x1f\x8b"  # the client got the upstream's gzip bytes untouched
    (summary,) = gw.records()
    record = gw.store.get_record(summary.id)
    capture = record.capture
    assert capture is not None
    headers = dict(capture.request_headers)
    assert headers["authorization"] == "[redacted]" and headers["x-api-key"] == "[redacted]"
    assert headers["cookie"] == "[redacted]"
    assert orjson.loads(capture.response_body)["object"] == "chat.completion"
    dump = repr(record) + repr(capture)
    for secret in ("sk-client-own-KEY", "client-KEY", "sk-openai-SECRET"):
        assert secret not in dump


@pytest.mark.parametrize(
    ("path", "body", "stream_body"),
    [
        ("/v1/chat/completions", CHAT, {**CHAT, "stream": True}),
        (
            "/v1/responses",
            {"model": "gpt-5-mini", "input": "hello"},
            {"model": "gpt-5-mini", "input": "hello", "stream": True},
        ),
        ("/v1/messages", MESSAGES, {**MESSAGES, "stream": True}),
    ],
)
def test_streamed_answers_are_reassembled_like_the_plain_answer(
    gw: RunningGateway, path: str, body: dict[str, Any], stream_body: dict[str, Any]
) -> None:
    assert post(gw, path, body)[0] == 200
    assert post(gw, path, stream_body)[0] == 200
    streamed_summary, plain_summary = gw.records()
    plain = gw.store.get_record(plain_summary.id)
    streamed = gw.store.get_record(streamed_summary.id)
    assert plain.capture is not None and streamed.capture is not None
    reassembled = streamed.capture.reassembled
    answer = orjson.loads(plain.capture.response_body)
    assert reassembled is not None
    assert _text(reassembled) == _text(answer)
    assert plain.usage is not None and streamed.usage is not None
    assert streamed.usage.output_tokens == plain.usage.output_tokens
    assert streamed.usage.input_tokens == plain.usage.input_tokens


def test_gemini_stream_is_reassembled(gw: RunningGateway) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
    assert post(gw, "/v1beta/models/gemini-2.5-flash:generateContent", body)[0] == 200
    assert post(gw, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", body)[0] == 200
    streamed_summary, plain_summary = gw.records()
    plain = gw.store.get_record(plain_summary.id).capture
    streamed = gw.store.get_record(streamed_summary.id).capture
    assert plain is not None and streamed is not None and streamed.reassembled is not None
    assert _text(streamed.reassembled) == _text(orjson.loads(plain.response_body))


def _text(answer: dict[str, Any]) -> str:
    if "choices" in answer:
        return str(answer["choices"][0]["message"]["content"])
    if "candidates" in answer:
        return "".join(p.get("text", "") for p in answer["candidates"][0]["content"]["parts"])
    if answer.get("object") == "response":
        return "".join(
            c["text"] for item in answer["output"] if item["type"] == "message" for c in item["content"]
        )
    return "".join(block.get("text", "") for block in answer["content"])


def test_sessions_are_grouped_per_client_style(gw: RunningGateway) -> None:
    def session_of(path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
        assert post(gw, path, body, headers)[0] == 200
        latest = gw.records()[0]
        assert latest.session_id
        return latest.session_id

    gw.flush()
    claude = session_of("/v1/messages?beta=true", MESSAGES, {"x-claude-code-session-id": "cc-123"})
    assert claude == "cc-123"
    user_id = "user_abc_account_def_session_0f5e2d1c-aaaa-bbbb-cccc-123456789abc"
    by_metadata = session_of("/v1/messages", {**MESSAGES, "metadata": {"user_id": user_id}})
    assert by_metadata == "0f5e2d1c-aaaa-bbbb-cccc-123456789abc"
    assert (
        session_of("/v1/responses", {"model": "gpt-5-mini", "input": "x"}, {"session-id": "codex-9"})
        == "codex-9"
    )
    assert session_of("/v1/chat/completions", CHAT, {"x-session-id": "opencode-7"}) == "opencode-7"

    first_turn = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Plan a trip"}],
    }
    second_turn = {
        "model": "gpt-4o-mini",
        "messages": [
            *first_turn["messages"],  # type: ignore[misc]
            {"role": "assistant", "content": "Where to?"},
            {"role": "user", "content": "Lisbon"},
        ],
    }
    other = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Something else"}]}
    a = session_of("/v1/chat/completions", first_turn)
    b = session_of("/v1/chat/completions", second_turn)
    c = session_of("/v1/chat/completions", other)
    assert a == b != c
    sessions = {s.session_id: s for s in gw.store.list_sessions(SessionFilter(), limit=50).items}
    assert sessions[a].totals.requests == 2


def test_a_request_shows_up_in_the_logs_api_within_two_seconds(gw: RunningGateway) -> None:
    status, answer = post(gw, "/v1/chat/completions", CHAT)
    assert status == 200
    sent_at = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    found = None
    while found is None and time.monotonic() - sent_at < 2.0:  # no flush: the recorder's own pace
        conn.request("GET", "/api/logs?limit=5")
        listing = orjson.loads(conn.getresponse().read())
        found = next((r for r in listing["records"] if r["model"] == "gpt-4o-mini"), None)
        if found is None:
            time.sleep(0.05)
    conn.close()
    assert found is not None, "the request was not in /api/logs within two seconds"
    assert found["outcome"] == "ok" and found["usage"]["output_tokens"] > 0
    assert orjson.loads(answer)["id"]
