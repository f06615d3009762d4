"""Quota buckets under concurrency: 200 simultaneous requests at a bucket that affords 20, with
one gateway process and with two processes on one database, on SQLite and on PostgreSQL; and
the ledger itself hammered from several threads in two processes.

The bound under test (docs/quotas.md): what a bucket is charged stays below its capacity plus
the reservation of the last request admitted, when no estimate falls short of its real cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from tailgate.config.units import format_dollars
from tailgate.dialects import Operation
from tailgate.ledger import quota_database
from tailgate.pricing import PriceBook
from tailgate.quotas import BucketSpec, QuotaLedger
from tailgate.record import Outcome
from tailgate.store import open_store
from tailgate.usage import Usage, usage_from_response
from tests.harness import config_from, running_gateway
from tests.mock_upstream import MockUpstream
from tests.pg import new_schema_url, pg_admin_url
from tests.test_quotas import chat, gateway_config, loopback_grant

__all__ = ["pg_admin_url"]

REQUESTS = 200
AFFORDED = 20
OUTPUT_TOKENS = 1000
BODY = chat(OUTPUT_TOKENS)
INPUT_TOKENS = 5  # the mock counts ceil(chars / 4) of the message text: "demo:chunks=1000 hi"


def price_of_one(mock_url: str) -> tuple[int, int]:
    """(real cost, estimate) in nanodollars of one :data:`BODY` request on gpt-4o-mini."""
    config = config_from(gateway_config(mock_url, grants="", quotas=""))
    prices = PriceBook(config)
    provider = config.providers["openai"]
    cost = prices.cost(provider, "gpt-4o-mini", Usage(input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS))
    assert cost.nanodollars is not None
    estimate = prices.estimate(
        provider, "gpt-4o-mini", input_bytes=len(orjson.dumps(BODY)), max_output_tokens=OUTPUT_TOKENS
    )
    return cost.nanodollars, estimate


def pool_config(mock_url: str, capacity_nd: int) -> str:
    return gateway_config(
        mock_url,
        grants=loopback_grant('{"models": "**", "quotas": [{"bucket": "pool"}]}'),
        quotas=f'"pool": {{"capacity": "{format_dollars(capacity_nd)}", "on_exceed": "reject"}}',
    )


# -- a client firing requests all at once ------------------------------------------------------------


class _Start:
    """Holds every request back until all connections are open."""

    def __init__(self, count: int) -> None:
        self.waiting = count
        self.all_connected = asyncio.Event()

    def connected(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.all_connected.set()


async def _exchange(port: int, request: bytes, start: _Start) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        start.connected()
        await start.all_connected.wait()
        writer.write(request)
        await writer.drain()
        status_line = await reader.readuntil(b"\r\n")
        await reader.read()  # to the end: the request asked for Connection: close
        return int(status_line.split()[1])
    finally:
        writer.close()


def fire(ports: list[int], count: int, body: dict[str, Any]) -> list[int]:
    """Open ``count`` connections (spread over ``ports``), then send every request at once."""
    payload = orjson.dumps(body)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )

    async def main() -> list[int]:
        start = _Start(count)
        exchanges = [_exchange(ports[i % len(ports)], request, start) for i in range(count)]
        async with asyncio.timeout(60):
            return list(await asyncio.gather(*exchanges))

    return asyncio.run(main())


# -- a second gateway process ------------------------------------------------------------------------


@contextlib.contextmanager
def gateway_process(config_text: str, database: str, tmp_path: Path) -> Iterator[int]:
    """``python -m tailgate serve`` on an ephemeral loopback port; yields the port."""
    config_path = tmp_path / "child.hujson"
    config_path.write_text(config_text)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "child")}
    command = [sys.executable, "-m", "tailgate", "serve", "--config", str(config_path)]
    command += ["--listen", "127.0.0.1:0", "--workers", "1", "--database", database, "--log-level", "INFO"]
    child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert child.stderr is not None
        for line in child.stderr:
            lines.append(line)
            if "listening on http://" in line:
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(30), "the second gateway did not start:\n" + "".join(lines)
        match = next(
            re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            for line in lines
            if "listening" in line
        )
        assert match is not None
        yield int(match.group(1))
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
        reader.join(5)
    assert not [line for line in lines if " ERROR " in line or "Traceback" in line], "".join(lines)


# -- the 200-request races ------------------------------------------------------------------------------


def database_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return str(tmp_path / "shared.db")
    return new_schema_url(request.getfixturevalue("pg_admin_url"))


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_200_concurrent_requests_at_a_bucket_that_affords_20(
    backend: str,
    processes: int,
    mock_upstream: MockUpstream,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    cost, estimate = price_of_one(mock_upstream.base_url)
    assert 0 < cost < estimate  # the estimate is an upper bound here: the bound is the one below
    capacity = AFFORDED * cost
    config = pool_config(mock_upstream.base_url, capacity)
    database = database_for(backend, tmp_path, request)
    store = open_store(database)
    with running_gateway(config, tmp_path, store=store) as gw, contextlib.ExitStack() as stack:
        ports = [gw.port]
        if processes == 2:
            ports.append(stack.enter_context(gateway_process(config, database, tmp_path)))
        statuses = fire(ports, REQUESTS, BODY)

        # What the mock served, what was recorded (by both processes), what the bucket was charged.
        served = [e for e in mock_upstream.exchanges if e.complete and e.status == 200]
        served_cost = sum(_cost_of(gw, e.body) for e in served)
        deadline = time.monotonic() + 20
        while len(records := gw.records()) < REQUESTS:
            assert time.monotonic() < deadline, f"{len(records)} of {REQUESTS} records stored"
            time.sleep(0.05)
        ok = [r for r in records if r.outcome is Outcome.OK]
        refused = [r for r in records if r.outcome is Outcome.QUOTA_EXCEEDED]
        assert sorted(statuses) == sorted(r.status for r in records)
        assert statuses.count(200) == len(ok) == len(served) and statuses.count(429) == len(refused)
        assert len(ok) + len(refused) == REQUESTS
        recorded_cost = sum(r.cost_nd or 0 for r in ok)
        assert all(r.cost_nd == cost for r in ok)
        assert recorded_cost == served_cost

        # The bound: never more than capacity plus one reservation (here exactly the capacity).
        assert recorded_cost <= capacity + estimate - 1
        assert len(ok) == AFFORDED and recorded_cost == capacity
        # A settlement is stored before its record is, in either process.
        (bucket,) = gw.gateway.ledger.states()
        assert capacity - bucket.balance == recorded_cost


def _cost_of(gw: Any, body: bytearray) -> int:
    usage = usage_from_response(Operation.CHAT_COMPLETIONS, orjson.loads(bytes(body)))
    assert usage is not None
    runtime = gw.gateway.runtime
    cost = runtime.prices.cost(runtime.config.providers["openai"], "gpt-4o-mini", usage).nanodollars
    assert cost is not None
    return int(cost)


# -- the ledger hammered from two processes ------------------------------------------------------------

HAMMER_THREADS = 3
HAMMER_ATTEMPTS = 50
HAMMER_CAPACITY = 120


def _hammer(database: str, barrier: Any, results: Any) -> None:
    """One process: several threads reserving 1 nanodollar each, one transaction per attempt."""
    store = open_store(database)
    ledger = QuotaLedger(store)
    bucket = BucketSpec("hammer", "hammer", HAMMER_CAPACITY, 0, 86_400)
    barrier.wait(30)

    def attempts(_: int) -> int:
        return sum(ledger.reserve([bucket], 1) == [] for _ in range(HAMMER_ATTEMPTS))

    with ThreadPoolExecutor(HAMMER_THREADS) as pool:
        results.put(sum(pool.map(attempts, range(HAMMER_THREADS))))
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_never_admit_more_than_a_bucket_holds(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database = database_for(backend, tmp_path, request)
    open_store(database).migrate()
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    children = [context.Process(target=_hammer, args=(database, barrier, results)) for _ in range(2)]
    for child in children:
        child.start()
    admitted = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(10)
        assert child.exitcode == 0
    # 300 attempts at a bucket of 120: exactly 120 pass, however the processes interleave.
    assert sum(admitted) == HAMMER_CAPACITY and all(admitted)
    store = open_store(database)
    buckets = quota_database(store)
    assert buckets.read("SELECT balance_nd FROM quota_buckets")[0][0] == 0
    buckets.close()
    store.close()
