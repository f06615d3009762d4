"""Recording in a child process: the hand-over, acknowledgements, a crashed child, reloads."""

from __future__ import annotations

import http.client
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tailgate.identity import Identity, IdentityKind, IdentitySource
from tailgate.ledger import BucketSpec
from tailgate.metering import finalize
from tailgate.proxy import Exchange
from tailgate.quotas import QuotaLedger, Reservation
from tailgate.recording import RecordingProcess, frame, pack, split_frames, unpack
from tailgate.runtime import build_runtime
from tailgate.store import open_store
from tests.harness import RunningGateway, config_from, running_gateway
from tests.mock_upstream import MockUpstream


def gateway_config(mock_url: str, *, retention: str = "720h") -> str:
    return f"""{{
  "providers": {{
    "openai": {{"baseurl": "{mock_url}", "apikey": "sk-openai-SECRET", "models": ["gpt-4o-mini"],
                "compatibility": {{"openai_chat": true}}}},
  }},
  "grants": [{{"src": ["(loopback)"], "app": {{"tailscale.com/cap/aperture": [
    {{"role": "admin", "read_metrics": true}},
    {{"models": "**", "quotas": [{{"bucket": "team"}}]}},
  ]}}}}],
  "quotas": {{"team": {{"capacity": "$100.00", "rate": "$0.00/day"}}}},
  "database": {{"retention": {{"duration": "{retention}"}}}},
}}"""


@pytest.fixture
def gw(mock_upstream: MockUpstream, tmp_path: Path) -> Iterator[RunningGateway]:
    with running_gateway(gateway_config(mock_upstream.base_url), tmp_path, recording="process") as running:
        yield running


def recorder(gw: RunningGateway) -> RecordingProcess:
    rec = gw.gateway.recorder
    assert isinstance(rec, RecordingProcess)
    return rec


def call(gw: RunningGateway, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request(method, path, body=orjson.dumps(body) if body is not None else None)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
STREAM = {**CHAT, "stream": True}


def balance(gw: RunningGateway) -> int:
    status, body = call(gw, "GET", "/api/quotas")
    assert status == 200
    doc = orjson.loads(body)
    (bucket,) = [b for b in doc["buckets"] if b["bucket"] == "team"]
    return int(bucket["balance_nd"])


def test_records_usage_cost_quota_and_metrics_come_from_the_recording_process(gw: RunningGateway) -> None:
    for body in (CHAT, STREAM, CHAT):
        assert call(gw, "POST", "/v1/chat/completions", body)[0] == 200
    records = gw.records()
    assert len(records) == 3
    for record in records:
        assert record.usage is not None and record.usage.input_tokens > 0
        assert record.cost_nd is not None and record.cost_nd > 0
    spent = sum(r.cost_nd or 0 for r in records)
    # Every reservation was settled to the real cost, by the child's ledger.
    assert 100 * 10**9 - balance(gw) in range(spent, spent + 10**6)
    status, text = call(gw, "GET", "/metrics")
    assert status == 200
    lines = text.decode().splitlines()
    (count,) = [
        line for line in lines if line.startswith("tailgate_requests_total{") and 'status="200"' in line
    ]
    assert count.endswith(" 3")
    assert any(line.startswith("tailgate_tokens_total{") for line in lines)
    stats = recorder(gw).stats
    assert (stats.submitted, stats.written, stats.dropped) == (3, 3, 0)
    child = recorder(gw)._child
    assert child is not None and os.getpriority(os.PRIO_PROCESS, child.pid) > os.getpriority(
        os.PRIO_PROCESS, 0
    )


def test_a_killed_recording_process_is_replaced_and_nothing_is_lost(gw: RunningGateway) -> None:
    rec = recorder(gw)
    assert call(gw, "POST", "/v1/chat/completions", CHAT)[0] == 200
    gw.flush()
    first = rec._child
    assert first is not None
    rec.restart_delay = 0.2
    os.kill(first.pid, signal.SIGKILL)
    first.wait(5)
    # Served while no child runs: kept by the worker, sent to the next child.
    for body in (CHAT, STREAM):
        assert call(gw, "POST", "/v1/chat/completions", body)[0] == 200
    gw.flush()
    assert rec.restarts == 1 and rec._child is not first
    records = gw.records()
    assert len(records) == 3 and len({r.id for r in records}) == 3
    assert rec.stats.written == 3
    assert not rec._unacked


def test_exchanges_a_dead_child_did_not_acknowledge_are_stored_once_and_not_settled_twice(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = recorder(gw)
    rec.restart_delay = 0.2
    packed: list[bytes] = []

    def keep(ex: Exchange) -> bytes:
        packed.append(pack(ex))
        return packed[-1]

    monkeypatch.setattr("tailgate.recording.pack", keep)
    assert call(gw, "POST", "/v1/chat/completions", CHAT)[0] == 200
    gw.flush()
    before = balance(gw)
    (stored,) = gw.records()
    child = rec._child
    assert child is not None and len(packed) == 1
    # The child stored the exchange and then died as if before its acknowledgement arrived: the
    # exchange is still the worker's to resend.
    gw.call(_unacknowledge(rec, packed[0], child.pid))
    deadline = time.monotonic() + 10
    while rec._child is child or rec._sock is None:
        assert time.monotonic() < deadline, "no new recording process"
        time.sleep(0.05)
    gw.flush()
    assert [r.id for r in gw.records()] == [stored.id]
    assert balance(gw) == before  # the resent exchange's reservation was not refunded again


async def _unacknowledge(rec: RecordingProcess, payload: bytes, pid: int) -> None:
    rec._unacked.appendleft(frame(ord("X"), payload))
    rec._first_seq -= 1
    os.kill(pid, signal.SIGKILL)


def test_a_reload_reaches_the_recording_process(mock_upstream: MockUpstream, tmp_path: Path) -> None:
    zero = gateway_config(mock_upstream.base_url, retention="0")
    with running_gateway(zero, tmp_path, recording="process") as gw:
        assert call(gw, "POST", "/v1/chat/completions", CHAT)[0] == 200
        gw.apply(config_from(gateway_config(mock_upstream.base_url, retention="720h")))
        deadline = time.monotonic() + 5
        while gw.gateway.runtime.generation < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert call(gw, "POST", "/v1/chat/completions", CHAT)[0] == 200
        records = sorted(gw.records(), key=lambda r: r.ts_ms)
        captured = [gw.store.get_record(r.id) for r in records]
        assert [c is not None and c.capture is not None for c in captured] == [False, True]


def test_an_exchange_survives_the_hand_over_unchanged(mock_upstream: MockUpstream, tmp_path: Path) -> None:
    config = config_from(gateway_config(mock_upstream.base_url))
    store = open_store(str(tmp_path / "t.db"))
    store.migrate()
    ledger = QuotaLedger(store)
    runtime = build_runtime(config, ledger, 7)
    from tailgate.dialects import Dialect, Operation
    from tailgate.identity import LOOPBACK_IDENTITY

    body = orjson.dumps({**STREAM, "user": "u-1"})
    chunks = [
        b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
        b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n',
        b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],'
        b'"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}\n\ndata: [DONE]\n\n',
    ]
    ex = Exchange(
        id="r-1",
        started_ns=1_000,
        ts_ms=1_700_000_000_000,
        runtime=runtime,
        method="POST",
        path="/v1/chat/completions",
        query="key=SECRET&x=1",
        operation=Operation.CHAT_COMPLETIONS,
        dialect=Dialect.OPENAI,
        request_headers=[(b"authorization", b"Bearer x"), (b"user-agent", b"t/1")],
        request_body=body,
        user_agent="t/1",
        body=orjson.loads(body),
        identity=LOOPBACK_IDENTITY,
        route=runtime.routing.resolve("gpt-4o-mini", Operation.CHAT_COMPLETIONS),
        stream=True,
        injected_usage=True,
        forwarded_body=body,
        status=200,
        response_headers=[(b"content-type", b"text/event-stream")],
        response_chunks=chunks,
        first_byte_ns=2_000,
        ended_ns=9_000,
        gateway_ns=500,
    )
    back = unpack(pack(ex), {7: runtime}.__getitem__)
    assert back.runtime is runtime and back.route == ex.route and back.identity == ex.identity
    assert finalize(back) == finalize(ex)
    # A tagged caller with a reservation: the same values each time, however often they repeat.
    ex.identity = Identity(
        principal="tag:ci,tag:prod",
        kind=IdentityKind.TAGGED,
        source=IdentitySource.WHOIS,
        display_name="ci runner",
        node_id="nKp3xR7CNTRL",
        tags=("tag:ci", "tag:prod"),
    )
    for capacity in (10 * 10**9, 20 * 10**9, 10 * 10**9):
        spec = BucketSpec("daily:tag:ci,tag:prod", "daily:<user>", capacity, capacity, 86_400)
        ex.reservation = Reservation((spec,), 1_234)
        again = unpack(pack(ex), {7: runtime}.__getitem__)
        assert again.identity == ex.identity and again.reservation == ex.reservation
        assert unpack(pack(ex), {7: runtime}.__getitem__, settle=False).reservation is None
    # Framing: frames split back exactly, whatever way the bytes arrive.
    stream = bytearray(frame(ord("X"), b"abc") + frame(ord("S"), b"") + frame(ord("X"), b"z" * 70_000))
    whole = bytes(stream)
    got: list[tuple[int, bytes]] = []
    buffer = bytearray()
    for i in range(0, len(whole), 997):
        buffer += whole[i : i + 997]
        got += split_frames(buffer)
    assert got == [(ord("X"), b"abc"), (ord("S"), b""), (ord("X"), b"z" * 70_000)] and not buffer
    ledger.close()
    store.close()
