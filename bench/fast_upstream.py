"""A fast mock of OpenAI's chat completions endpoint, for benchmarks.

    .venv/bin/python bench/fast_upstream.py [--port 0] [--cpu N]

Raw asyncio (uvloop) and httptools; every answer is precomputed so the mock costs the load as
little CPU as possible. Prints ``port=<port>`` on stdout once listening.

``POST /v1/chat/completions`` answers with one JSON completion, or when the body has
``"stream":true`` with a 20-chunk SSE stream (plus the usage chunk and ``[DONE]``), in chunked
transfer encoding like the real API. Each SSE event is written with its own ``write`` call.
A request header ``x-bench-interval-ms: N`` paces the stream (one event every N ms) and stamps
each content event with the mock's ``time.monotonic_ns()`` at send time (``"created":<ns>``), so
a client can measure how long each chunk took to reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from typing import cast

import httptools
import orjson
import uvloop

MODEL = "gpt-4o-mini"
CHUNKS = 20
_ID = "chatcmpl-bench0000000000000000000000"


def completion_json() -> bytes:
    """The non-streaming answer (usage included)."""
    return orjson.dumps(
        {
            "id": _ID,
            "object": "chat.completion",
            "created": 1_767_225_600,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello! " * 10, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": 20,
                "total_tokens": 29,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
            "service_tier": "default",
            "system_fingerprint": "fp_bench",
        }
    )


def _chunk(created: int | str, delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {
        "id": _ID,
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _event(value: object) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


STAMP = 999_999_999_999_999_999
"""Placeholder for the send time in paced streams (same width as a nanosecond stamp)."""


def stream_events(created: int = 1_767_225_600) -> list[bytes]:
    """The SSE events of a 20-chunk answer: role, 18 words, finish, usage, ``[DONE]``."""
    events = [_event(_chunk(created, {"role": "assistant", "content": ""}))]
    events += [_event(_chunk(created, {"content": f"word{i} "})) for i in range(CHUNKS - 2)]
    events.append(_event(_chunk(created, {}, "stop")))
    usage = {"prompt_tokens": 9, "completion_tokens": CHUNKS - 2, "total_tokens": 9 + CHUNKS - 2}
    events.append(
        _event({"id": _ID, "object": "chat.completion.chunk", "created": created, "model": MODEL,
                "choices": [], "usage": usage})
    )  # fmt: skip
    events.append(b"data: [DONE]\n\n")
    return events


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


_JSON = completion_json()
JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: req_bench\r\n"
    b"content-length: %d\r\n\r\n%b" % (len(_JSON), _JSON)
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"x-request-id: req_bench\r\ntransfer-encoding: chunked\r\n\r\n"
)
STREAM_EVENTS = [_chunked(e) for e in stream_events()]
STAMPED_EVENTS = stream_events(STAMP)
_STAMP_BYTES = str(STAMP).encode()
STREAM_END = b"0\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class _Protocol(asyncio.Protocol):
    __slots__ = ("body", "headers_interval", "parser", "transport", "url")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body = b""
        self.headers_interval = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = b""
        self.headers_interval = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-bench-interval-ms":
            self.headers_interval = int(value)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self.url.startswith(b"/v1/chat/completions"):
            transport.write(NOT_FOUND)
            return
        if b'"stream":true' not in self.body and b'"stream": true' not in self.body:
            transport.write(JSON_RESPONSE)
            return
        if self.headers_interval:
            asyncio.get_running_loop().create_task(_paced(transport, self.headers_interval / 1000))
            return
        transport.write(STREAM_HEAD)
        for event in STREAM_EVENTS:
            transport.write(event)
        transport.write(STREAM_END)


async def _paced(transport: asyncio.Transport, interval: float) -> None:
    """A stream whose events leave ``interval`` seconds apart, each stamped with its send time."""
    transport.write(STREAM_HEAD)
    for event in STAMPED_EVENTS:
        await asyncio.sleep(interval)
        if transport.is_closing():
            return
        transport.write(_chunked(event.replace(_STAMP_BYTES, b"%d" % time.monotonic_ns())))
    transport.write(STREAM_END)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Protocol, "127.0.0.1", port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"port={bound}\n")
    sys.stdout.flush()
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
