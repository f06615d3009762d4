"""Metering streams through a real gateway: the usage chunk the gateway asks for on OpenAI chat
streams (and hides again), streams cut by the upstream or left by the client (partial usage,
marked partial), and what the quota bucket is charged for each."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tailgate.proxy import _UsageChunkFilter
from tailgate.record import Outcome, Record
from tests.harness import RunningGateway, running_gateway
from tests.mock_upstream import MockUpstream
from tests.test_quotas import ND, balances, gateway_config, loopback_grant, post, settled


@pytest.fixture
def gw(mock_upstream: MockUpstream, tmp_path: Path) -> Iterator[RunningGateway]:
    config = gateway_config(
        mock_upstream.base_url,
        grants=loopback_grant('{"models": "**", "quotas": [{"bucket": "team"}]}'),
        quotas='"team": {"capacity": "$1.00"}',
    )
    with running_gateway(config, tmp_path) as running:
        yield running


def events(stream: bytes) -> list[bytes]:
    """The SSE events of a stream, each with its terminating blank line."""
    parts = stream.split(b"\n\n")
    assert parts[-1] == b""
    return [part + b"\n\n" for part in parts[:-1]]


def is_usage_only(event: bytes) -> bool:
    if not event.startswith(b"data: {"):
        return False
    chunk = orjson.loads(event[6:])
    return chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)


def chat_stream(chunks: int, **extra: Any) -> dict[str, Any]:
    text = f"demo:chunks={chunks} hello"
    return {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": text}], **extra}


def priced(gw: RunningGateway, record: Record) -> int:
    """The record's cost recomputed from its stored usage."""
    runtime = gw.gateway.runtime
    assert record.usage is not None and record.provider is not None and record.model is not None
    cost = runtime.prices.cost(runtime.config.providers[record.provider], record.model, record.usage)
    assert cost.nanodollars is not None and cost.nanodollars > 0
    return int(cost.nanodollars)


# -- the usage chunk on OpenAI chat streams ------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [None, {}, {"include_usage": False}, {"include_usage": False, "include_obfuscation": False}],
    ids=["absent", "empty", "false", "other-options"],
)
def test_a_chat_stream_without_usage_is_the_upstream_stream_minus_the_usage_chunk(
    gw: RunningGateway, mock_upstream: MockUpstream, options: dict[str, Any] | None
) -> None:
    body = chat_stream(12) if options is None else chat_stream(12, stream_options=options)
    status, headers, client_bytes = post(gw.port, "/v1/chat/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")

    (sent,) = mock_upstream.requests
    forwarded = sent.json()
    assert forwarded["stream_options"] == {**(options or {}), "include_usage": True}
    assert {k: v for k, v in forwarded.items() if k != "stream_options"} == {
        k: v for k, v in body.items() if k != "stream_options"
    }

    (upstream_bytes,) = mock_upstream.responses
    upstream = events(upstream_bytes)
    usage_events = [e for e in upstream if is_usage_only(e)]
    assert len(usage_events) == 1
    assert client_bytes == b"".join(e for e in upstream if not is_usage_only(e))
    assert client_bytes.endswith(b"data: [DONE]\n\n") and b'"choices":[]' not in client_bytes

    # Metering still saw the usage the client was spared.
    (record,) = gw.records()
    upstream_usage = orjson.loads(usage_events[0][6:])["usage"]
    assert record.usage is not None and not record.usage.partial
    assert record.usage.output_tokens == upstream_usage["completion_tokens"] == 12
    assert record.usage.input_tokens == upstream_usage["prompt_tokens"]
    assert record.cost_nd == priced(gw, record)
    assert balances(gw) == {"team": ND - record.cost_nd}


def test_a_chat_stream_that_asked_for_usage_is_passed_on_untouched(
    gw: RunningGateway, mock_upstream: MockUpstream
) -> None:
    body = chat_stream(7, stream_options={"include_usage": True})
    status, _, client_bytes = post(gw.port, "/v1/chat/completions", body)
    assert status == 200
    (sent,) = mock_upstream.requests
    assert sent.body == orjson.dumps(body)  # the client's own bytes, not re-serialised
    (upstream_bytes,) = mock_upstream.responses
    assert client_bytes == upstream_bytes
    assert sum(is_usage_only(e) for e in events(client_bytes)) == 1
    (record,) = gw.records()
    assert record.usage is not None and record.usage.output_tokens == 7


def test_a_usage_chunk_split_across_reads_is_still_removed(
    gw: RunningGateway, mock_upstream: MockUpstream
) -> None:
    assert post(gw.port, "/v1/chat/completions", chat_stream(30))[0] == 200
    (upstream_bytes,) = mock_upstream.responses
    expected = b"".join(e for e in events(upstream_bytes) if not is_usage_only(e))
    rng = random.Random(11)
    for _ in range(20):  # the same bytes, cut anywhere (one byte at a time included)
        usage_filter, out, at = _UsageChunkFilter(), [], 0
        while at < len(upstream_bytes):
            step = rng.choice([1, 2, 7, 64, 500])
            out.append(usage_filter.feed(upstream_bytes[at : at + step]))
            at += step
        out.append(usage_filter.flush())
        assert b"".join(out) == expected
    usage_filter = _UsageChunkFilter()  # one whole event per read, as a paced stream arrives
    whole = [usage_filter.feed(event) for event in events(upstream_bytes)]
    assert b"".join([*whole, usage_filter.flush()]) == expected
    assert sum(piece == b"" for piece in whole) == 1  # only the usage chunk was held back


# -- streams cut short ------------------------------------------------------------------------------------

CUT_STREAMS = [
    pytest.param(
        "/v1/messages",
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 100,
            "stream": True,
            "messages": [{"role": "user", "content": "demo:chunks=40 hello there"}],
        },
        True,
        id="anthropic",
    ),
    pytest.param(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "demo:chunks=40 hello there"}]}]},
        True,
        id="gemini",
    ),
    pytest.param("/v1/chat/completions", chat_stream(40), False, id="openai-chat"),
    pytest.param(
        "/v1/responses",
        {"model": "gpt-4o-mini", "stream": True, "input": "demo:chunks=40 hello there"},
        False,
        id="openai-responses",
    ),
]


@pytest.mark.parametrize(("path", "body", "running_usage"), CUT_STREAMS)
def test_a_stream_cut_by_the_upstream_records_the_usage_it_saw_as_partial(
    gw: RunningGateway, mock_upstream: MockUpstream, path: str, body: dict[str, Any], running_usage: bool
) -> None:
    status, _, client_bytes = post(gw.port, path, body, headers={"x-mock-scenario": "die_after=6"})
    assert status == 200  # the stream had started; it ends with an error event instead
    assert b"error" in client_bytes.rsplit(b"\n\n", 2)[-2]
    (record,) = gw.records()
    assert record.outcome is Outcome.UPSTREAM_FAILED and record.status == 200
    if not running_usage:
        # OpenAI streams carry usage only at their end: nothing to meter, and nothing invented.
        assert record.usage is None and record.cost_nd is None
        return
    assert record.usage is not None and record.usage.partial
    assert record.usage.input_tokens > 0
    assert record.usage.output_tokens < 40  # the last running total, not the full answer
    assert record.cost_nd == priced(gw, record)
    assert balances(gw) == {"team": ND - record.cost_nd}


@pytest.mark.parametrize(("path", "body", "running_usage"), CUT_STREAMS[:2])
def test_a_client_that_leaves_mid_stream_is_recorded_with_partial_usage(
    gw: RunningGateway, mock_upstream: MockUpstream, path: str, body: dict[str, Any], running_usage: bool
) -> None:
    payload = orjson.dumps(body)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as client:
        client.sendall(
            b"POST %s HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"x-mock-scenario: chunk_delay=30\r\nContent-Length: %d\r\n\r\n%s"
            % (path.encode(), len(payload), payload)
        )
        received = b""
        deadline = time.monotonic() + 10
        while received.count(b"data: ") < 6:  # a few events in, the client gives up
            assert time.monotonic() < deadline
            received += client.recv(65536)
    mock_upstream.wait_for(lambda: mock_upstream.cancelled == 1, timeout=10)
    deadline = time.monotonic() + 10
    while not (records := gw.records()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    (record,) = records
    assert record.outcome is Outcome.CLIENT_DISCONNECTED
    assert record.usage is not None and record.usage.partial
    assert record.usage.input_tokens > 0 and record.usage.output_tokens < 40
    assert record.cost_nd == priced(gw, record)
    settled(gw)
    assert balances(gw) == {"team": ND - record.cost_nd}
