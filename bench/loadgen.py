"""The Python half of the load: time to first token, paced concurrent streams, and a fallback load.

    .venv/bin/python bench/loadgen.py ttft    --url URL --body FILE [--count N] [--seconds S]
    .venv/bin/python bench/loadgen.py streams --url URL --body FILE --concurrency C --interval-ms I
    .venv/bin/python bench/loadgen.py load    --url URL --body FILE --concurrency C --seconds S

Each prints one JSON object on stdout. ``wrk`` drives the throughput and latency runs; this
client measures what ``wrk`` cannot: when the first byte of a streamed answer arrives, and how
late each chunk of a paced stream arrives after the mock sent it (the mock stamps every content
event with its ``time.monotonic_ns()``, which is the same clock in every process). ``load`` is
the fallback used only when ``wrk`` is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson
import uvloop

_STAMP = re.compile(rb'"created":(\d{12,})')


@dataclass(slots=True)
class Exchange:
    """One request's timings, in nanoseconds of ``time.monotonic_ns()``."""

    sent: int = 0
    first_byte: int = 0
    done: int = 0
    status: int = 0
    lags: list[int] = field(default_factory=list)
    """For paced streams: arrival minus the mock's send stamp of every stamped event."""


class _Client(asyncio.Protocol):
    """One keep-alive connection that sends requests one at a time and times the answers."""

    def __init__(self, stamps: bool) -> None:
        self.stamps = stamps
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.current = Exchange()
        self.finished: asyncio.Future[Exchange] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.finished is not None and not self.finished.done():
            self.finished.set_exception(ConnectionError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        now = time.monotonic_ns()
        ex = self.current
        if not ex.first_byte:
            ex.first_byte = now
        if self.stamps:
            ex.lags.extend(now - int(m.group(1)) for m in _STAMP.finditer(body))

    def on_message_complete(self) -> None:
        self.current.done = time.monotonic_ns()
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(self.current)

    async def send(self, request: bytes) -> Exchange:
        assert self.transport is not None
        self.current = Exchange(sent=time.monotonic_ns())
        self.finished = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.finished


def build_request(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[str, int, bytes]:
    """(host, port, the raw HTTP/1.1 request bytes) for a POST of ``body`` to ``url``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"host: {host}:{port}",
        "content-type: application/json",
        "authorization: Bearer -",
        f"content-length: {len(body)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _connect(host: str, port: int, stamps: bool = False) -> _Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: _Client(stamps), host, port)
    return client


def _percentiles(values: list[int], points: tuple[float, ...] = (50, 90, 99, 99.9)) -> dict[str, float]:
    """Nearest-rank percentiles in microseconds, plus max and count."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    out: dict[str, float] = {"count": len(ordered)}
    for p in points:
        index = min(len(ordered) - 1, max(0, int(len(ordered) * p / 100 + 0.5) - 1))
        out[f"p{p:g}"] = ordered[index] / 1000
    out["max"] = ordered[-1] / 1000
    return out


async def ttft(url: str, body: bytes, count: int, seconds: float) -> dict[str, Any]:
    """Sequential requests on one connection: time to first byte and to the end, µs."""
    host, port, request = build_request(url, body)
    client = await _connect(host, port)
    firsts: list[int] = []
    totals: list[int] = []
    errors = 0
    deadline = time.monotonic() + seconds
    for i in range(count):
        if time.monotonic() > deadline:
            break
        ex = await asyncio.wait_for(client.send(request), 10)
        if ex.status != 200:
            errors += 1
        if i < count // 20:
            continue  # warm-up: the first 5% are not counted
        firsts.append(ex.first_byte - ex.sent)
        totals.append(ex.done - ex.sent)
    assert client.transport is not None
    client.transport.close()
    return {"first_byte_us": _percentiles(firsts), "total_us": _percentiles(totals), "errors": errors}


async def streams(url: str, body: bytes, concurrency: int, interval_ms: int, rounds: int) -> dict[str, Any]:
    """``concurrency`` paced streams at once, ``rounds`` times; how late each chunk arrived."""
    host, port, request = build_request(url, body, {"x-bench-interval-ms": str(interval_ms)})
    clients = await asyncio.gather(*(_connect(host, port, stamps=True) for _ in range(concurrency)))
    lags: list[int] = []
    errors = 0
    short = 0
    served = 0

    async def one(client: _Client, delay: float) -> None:
        # Starts are spread over one interval, as real streams are; the first round warms up.
        nonlocal errors, short, served
        await asyncio.sleep(delay)
        for round_ in range(rounds + 1):
            try:
                result = await asyncio.wait_for(client.send(request), 60)
            except (ConnectionError, TimeoutError):
                errors += 1
                return
            served += 1
            if round_ == 0:
                continue
            if result.status != 200:
                errors += 1
            elif len(result.lags) < 20:
                short += 1
            lags.extend(result.lags)

    started = time.monotonic()
    spread = interval_ms / 1000 / concurrency
    await asyncio.gather(*(one(c, i * spread) for i, c in enumerate(clients)))
    elapsed = time.monotonic() - started
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    late = sum(1 for lag in lags if lag > 5_000_000)
    return {
        "streams": concurrency * rounds,
        "served": served,  # the warm-up round included
        "seconds": elapsed,
        "errors": errors,
        "incomplete": short,
        "lag_us": _percentiles(lags),
        "chunks_over_5ms": late,
    }


async def load(url: str, body: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    """A closed-loop load (fallback for ``wrk``): requests/s and latency percentiles, µs."""
    host, port, request = build_request(url, body)
    clients = await asyncio.gather(*(_connect(host, port) for _ in range(concurrency)))
    latencies: list[int] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def worker(client: _Client) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            ex = await asyncio.wait_for(client.send(request), 10)
            if ex.status != 200:
                errors += 1
            latencies.append(ex.done - ex.sent)

    started = time.monotonic()
    await asyncio.gather(*(worker(c) for c in clients))
    elapsed = time.monotonic() - started
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "errors": errors,
        "latency_us": _percentiles(latencies, (50, 90, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("ttft", "streams", "load"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help="file holding the request body")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--interval-ms", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    with open(args.body, "rb") as f:
        body = f.read()
    if args.mode == "ttft":
        result = uvloop.run(ttft(args.url, body, args.count, args.seconds))
    elif args.mode == "streams":
        result = uvloop.run(streams(args.url, body, args.concurrency, args.interval_ms, args.rounds))
    else:
        result = uvloop.run(load(args.url, body, args.concurrency, args.seconds))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
