"""The HTTP server and the upstream pool, over real loopback sockets."""

from __future__ import annotations

import asyncio
import collections
import gc
from collections.abc import Awaitable, Callable
from typing import cast

import pytest
import uvloop

from tailgate.errors import GatewayError, UpstreamTimeout, UpstreamUnreachable
from tailgate.http.client import Origin, UpstreamClosed, UpstreamPool, UpstreamResponse
from tailgate.http.messages import Request, Response, StreamingResponse
from tailgate.http.server import Connection, HttpServer, ServerSettings, StartQueue
from tests.harness import gateway_object_kind

Handler = Callable[[Request], Awaitable[Response | StreamingResponse | None]]


def _render(path: str, error: GatewayError) -> Response:
    return Response(error.status, error.message.encode())


async def _serve(handler: Handler, max_body: int = 1 << 20) -> tuple[HttpServer, int]:
    server = HttpServer(handler, _render, ServerSettings(max_body_bytes=max_body))
    address = await server.listen("127.0.0.1:0")
    return server, int(address.rsplit(":", 1)[1])


async def _raw(port: int, data: bytes, *, read_until_close: bool = True, wait: float = 2.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                out += chunk
                if not read_until_close:
                    break
    except TimeoutError:
        pass
    writer.close()
    return out


async def _echo(request: Request) -> Response:
    text = request.method.encode() + b" " + request.target + b" " + request.body
    return Response(200, text, content_type=None)


async def _get(pool: UpstreamPool, port: int, timeout: float) -> UpstreamResponse:
    return await pool.request(
        Origin.from_url(f"http://127.0.0.1:{port}"), b"GET", b"/", [], b"", timeout=timeout
    )


def test_keep_alive_and_pipelining_answer_in_order() -> None:
    async def scenario() -> bytes:
        server, port = await _serve(_echo)
        data = (
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none"
            b"POST /b?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\ntwo"
            b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        out = await _raw(port, data)
        await server.close()
        return out

    out = asyncio.run(scenario())
    assert out.count(b"HTTP/1.1 200 OK") == 3
    first, second, third = out.index(b"POST /a one"), out.index(b"POST /b?q=1 two"), out.index(b"GET /c ")
    assert first < second < third
    assert out.rstrip().endswith(b"GET /c")


def test_expect_continue_and_chunked_request_body() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        server, port = await _serve(_echo)
        continued = await _raw(
            port,
            b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\nhi",
        )
        chunked = await _raw(
            port,
            b"POST /y HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        await server.close()
        return continued, chunked

    continued, chunked = asyncio.run(scenario())
    assert continued.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    assert continued.endswith(b"POST /x hi")
    assert chunked.endswith(b"POST /y abcde")


def test_oversized_body_is_refused_before_it_is_read() -> None:
    async def scenario() -> bytes:
        server, port = await _serve(_echo, max_body=10)
        out = await _raw(port, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        await server.close()
        return out

    out = asyncio.run(scenario())
    assert out.startswith(b"HTTP/1.1 413 ")
    assert b"larger than the limit of 10 bytes" in out
    assert b"connection: close" in out


def test_malformed_request_gets_400() -> None:
    async def scenario() -> bytes:
        server, port = await _serve(_echo)
        out = await _raw(port, b"NOT HTTP AT ALL\r\n\r\n")
        await server.close()
        return out

    assert asyncio.run(scenario()).startswith(b"HTTP/1.1 400 ")


def test_client_disconnect_cancels_the_handler() -> None:
    cancelled = asyncio.Event()

    async def wait_forever(request: Request) -> Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response(200)

    async def scenario() -> bool:
        server, port = await _serve(wait_forever)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
        async with asyncio.timeout(2):
            await cancelled.wait()
        await server.close()
        return cancelled.is_set()

    assert asyncio.run(scenario())


class _Ticker:
    """Counts event-loop iterations: a callback that schedules itself again each time it runs."""

    def __init__(self) -> None:
        self.ticks = 0
        self._running = True
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.ticks += 1
        if self._running:
            asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._running = False


def test_a_burst_of_requests_starts_in_turns_with_streams_relayed_between() -> None:
    async def scenario() -> tuple[list[int], list[int], list[bytes]]:
        ticker = _Ticker()
        started: list[int] = []
        relayed: list[int] = []
        go = asyncio.Event()

        async def handler(request: Request) -> Response | None:
            if request.path == "/stream":
                conn = request.conn
                conn.start_response(200, [(b"content-type", b"text/event-stream")])
                await go.wait()
                while not conn.closed and len(relayed) < 10_000:  # one chunk per loop iteration
                    relayed.append(ticker.ticks)
                    conn.write(b"data: x\n\n")
                    await asyncio.sleep(0)
                return None
            started.append(ticker.ticks)
            return Response(200, request.path.encode())

        server, port = await _serve(handler)
        stream_reader, stream_writer = await asyncio.open_connection("127.0.0.1", port)
        stream_writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        await stream_reader.readuntil(b"\r\n\r\n")
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
        go.set()
        for i, (_, writer) in enumerate(clients):  # written together: read in one poll
            writer.write(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        answers = []
        for reader, writer in clients:
            head = await reader.readuntil(b"\r\n\r\n")
            answers.append(head.split(b"\r\n", 1)[0])
            writer.close()
        stream_writer.close()
        ticker.stop()
        await server.close()
        return started, relayed, answers

    started, relayed, answers = asyncio.run(scenario())
    assert answers == [b"HTTP/1.1 200 OK"] * 40
    per_tick = collections.Counter(started)
    assert max(per_tick.values()) <= 4
    assert len(per_tick) >= 10
    # The stream kept flowing while the burst started: chunks were written between the turns.
    assert any(min(started) < tick < max(started) for tick in relayed)


def test_the_start_queue_keeps_arrival_order_and_skips_clients_that_left() -> None:
    class Waiting:
        def __init__(self, name: str, *, closed: bool = False) -> None:
            self.name = name
            self.closed = closed
            self._queued = True

        def _begin(self, request: object) -> None:
            self._queued = False
            begun.append((turns.ticks, self.name))

    begun: list[tuple[int, str]] = []

    async def scenario() -> list[Waiting]:
        nonlocal turns
        turns = _Ticker()
        queue = StartQueue(asyncio.get_running_loop(), per_turn=2)
        waiting = [Waiting(f"r{i}", closed=i == 3) for i in range(7)]
        for conn in waiting:
            queue.start(cast(Connection, conn), cast(Request, None))
        assert queue.waiting == 5
        for _ in range(10):
            await asyncio.sleep(0)
        turns.stop()
        assert queue.waiting == 0
        return waiting

    turns: _Ticker
    waiting = asyncio.run(scenario())
    assert [name for _, name in begun] == ["r0", "r1", "r2", "r4", "r5", "r6"]
    ticks = [tick for tick, _ in begun]
    assert ticks[0] == ticks[1] < ticks[2] == ticks[3] < ticks[4] == ticks[5]
    assert not any(conn._queued for conn in waiting)  # the one that left is no longer waiting


def test_closed_connections_leave_no_reference_cycles() -> None:
    """A closed client or upstream connection is freed by reference counting, not left to the
    cycle collector (whose full passes stall the event loop for as long as they take)."""

    async def paced_stream(request: Request) -> None:
        request.conn.start_response(200, [(b"content-type", b"text/event-stream")])
        for i in range(3):
            await asyncio.sleep(0.01)
            request.conn.write(b"data: %d\n\n" % i)
        request.conn.finish()

    async def scenario() -> None:
        upstream, upstream_port = await _serve(paced_stream)
        pool = UpstreamPool()
        origin = Origin.from_url(f"http://127.0.0.1:{upstream_port}")

        async def relay(request: Request) -> None:
            answer = await pool.request(origin, b"POST", b"/up", [], request.body, timeout=5)
            request.conn.start_response(200, [(b"content-type", b"text/event-stream")])
            await answer.relay(request.conn.write, request.conn)
            request.conn.finish()

        server, port = await _serve(relay)
        for _ in range(5):
            out = await _raw(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", wait=0.3)
            assert out.endswith(b"data: 2\n\n\r\n0\r\n\r\n")
        await pool.aclose()  # the pooled upstream connections are closed too
        await asyncio.sleep(0.05)
        await server.close()
        await upstream.close()

    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        uvloop.run(scenario())
        gc.collect()
        kinds = collections.Counter(kind for o in gc.garbage if (kind := gateway_object_kind(o)) is not None)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not kinds, f"cyclic garbage: {dict(kinds)}"


def test_streaming_response_and_head() -> None:
    async def stream(request: Request) -> StreamingResponse:
        async def chunks():  # type: ignore[no-untyped-def]
            for part in (b"alpha", b"beta", b"gamma"):
                yield part

        return StreamingResponse(chunks(), content_type=b"text/plain")

    async def scenario() -> tuple[bytes, bytes]:
        server, port = await _serve(stream)
        got = await _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = await _raw(port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await server.close()
        return got, head

    got, head = asyncio.run(scenario())
    assert b"transfer-encoding: chunked" in got
    assert got.endswith(b"5\r\nalpha\r\n4\r\nbeta\r\n5\r\ngamma\r\n0\r\n\r\n")
    assert head.endswith(b"\r\n\r\n") and b"alpha" not in head


def test_pool_reuses_connections_and_streams_body() -> None:
    connections: list[object] = []

    async def handler(request: Request) -> StreamingResponse | Response:
        if request.conn not in connections:
            connections.append(request.conn)
        if request.path == "/stream":

            async def chunks():  # type: ignore[no-untyped-def]
                for i in range(3):
                    yield b"data: %d\n\n" % i
                    await asyncio.sleep(0.01)

            return StreamingResponse(chunks(), content_type=b"text/event-stream")
        return Response(200, b'{"ok":true}')

    async def scenario() -> list[bytes]:
        server, port = await _serve(handler)
        pool = UpstreamPool()
        origin = Origin.from_url(f"http://127.0.0.1:{port}")
        bodies = []
        for _ in range(3):
            response = await pool.request(origin, b"POST", b"/json", [], b"{}", timeout=2)
            bodies.append(await response.read())
        response = await pool.request(origin, b"POST", b"/stream", [], b"{}", timeout=2)
        pieces = []
        while (chunk := await response.next_chunk()) is not None:
            pieces.append(chunk)
        bodies.append(b"".join(pieces))
        await pool.aclose()
        await server.close()
        return bodies

    bodies = asyncio.run(scenario())
    assert bodies[:3] == [b'{"ok":true}'] * 3
    assert bodies[3] == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert len(connections) == 1


def test_pool_errors_are_mapped() -> None:
    async def hang(request: Request) -> Response:
        await asyncio.sleep(30)
        return Response(200)

    async def die(request: Request) -> None:
        request.conn.start_response(200, [(b"content-type", b"text/event-stream")])
        request.conn.write(b"data: 1\n\n")
        await asyncio.sleep(0.05)
        request.conn.abort()

    async def scenario() -> list[type[BaseException]]:
        seen: list[type[BaseException]] = []
        pool = UpstreamPool(connect_timeout=1)
        # Nothing listens on this port.
        closed_server, closed_port = await _serve(_echo)
        await closed_server.close()
        try:
            await _get(pool, closed_port, 1)
        except UpstreamUnreachable as exc:
            seen.append(type(exc))
        hang_server, hang_port = await _serve(hang)
        try:
            await _get(pool, hang_port, 0.2)
        except UpstreamTimeout as exc:
            seen.append(type(exc))
        die_server, die_port = await _serve(die)
        response = await _get(pool, die_port, 1)
        assert await response.next_chunk() == b"data: 1\n\n"
        try:
            while await response.next_chunk() is not None:
                pass
        except UpstreamClosed as exc:
            seen.append(type(exc))
        await pool.aclose()
        await hang_server.close()
        await die_server.close()
        return seen

    assert asyncio.run(scenario()) == [UpstreamUnreachable, UpstreamTimeout, UpstreamClosed]


def test_closing_a_response_early_aborts_the_upstream_request() -> None:
    cancelled = asyncio.Event()

    async def slow_stream(request: Request) -> None:
        request.conn.start_response(200, [(b"content-type", b"text/event-stream")])
        try:
            for i in range(100):
                request.conn.write(b"data: %d\n\n" % i)
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        request.conn.finish()

    async def scenario() -> bool:
        server, port = await _serve(slow_stream)
        pool = UpstreamPool()
        response = await _get(pool, port, 1)
        await response.next_chunk()
        response.close()
        async with asyncio.timeout(2):
            await cancelled.wait()
        await pool.aclose()
        await server.close()
        return True

    assert asyncio.run(scenario())


@pytest.mark.parametrize(
    ("url", "host_header", "base"),
    [
        ("https://api.openai.com", b"api.openai.com", ""),
        ("https://openrouter.ai/api/", b"openrouter.ai", "/api"),
        ("http://100.64.0.1:8080/v1", b"100.64.0.1:8080", "/v1"),
        ("http://[::1]:9000", b"[::1]:9000", ""),
    ],
)
def test_origin_from_url(url: str, host_header: bytes, base: str) -> None:
    origin = Origin.from_url(url)
    assert origin.host_header == host_header
    assert origin.base_path == base


def test_shutdown_lets_a_stream_in_progress_finish() -> None:
    async def slow_stream(request: Request) -> None:
        request.conn.start_response(200, [(b"content-type", b"text/event-stream")])
        for i in range(6):
            request.conn.write(b"data: %d\n\n" % i)
            await asyncio.sleep(0.05)
        request.conn.finish()

    async def scenario() -> tuple[bytes, int, bool]:
        server, port = await _serve(slow_stream)
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"data: 0\n\n")
        cut = await server.shutdown(timeout=5)
        rest = await reader.read()
        idle_closed = await idle_reader.read() == b""
        writer.close()
        idle_writer.close()
        return rest, cut, idle_closed

    rest, cut, idle_closed = asyncio.run(scenario())
    assert cut == 0
    assert rest.endswith(b"data: 5\n\n\r\n0\r\n\r\n")
    assert b"connection: close" not in rest  # the head was sent before the shutdown began
    assert idle_closed


class _Flow:
    """A client side that cannot take more until released."""

    def __init__(self) -> None:
        self.writing_paused = True
        self.callbacks: list[Callable[[], None]] = []

    def call_when_writable(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def release(self) -> None:
        self.writing_paused = False
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()


def test_relay_pauses_the_upstream_while_the_client_cannot_keep_up() -> None:
    part = b"x" * 65536
    parts = 64  # 4 MiB, far more than the socket buffers hold

    async def big(request: Request) -> None:
        request.conn.start_response(200, [(b"content-type", b"application/octet-stream")])
        for _ in range(parts):
            request.conn.write(part)
            await request.conn.drain()
        request.conn.finish()

    async def scenario() -> tuple[int, int, int]:
        server, port = await _serve(big)
        pool = UpstreamPool()
        response = await _get(pool, port, 5)
        received: list[bytes] = []
        flow = _Flow()
        relay = asyncio.ensure_future(response.relay(received.append, flow))
        await asyncio.sleep(0.3)
        while_paused = sum(map(len, received))
        assert not relay.done() and flow.callbacks  # reading stopped, waiting for the client
        flow.writing_paused = False
        flow.release()
        await asyncio.wait_for(relay, 10)
        await pool.aclose()
        await server.close()
        return while_paused, sum(map(len, received)), len(b"".join(received).replace(b"x", b""))

    while_paused, total, other = asyncio.run(scenario())
    assert total == len(part) * parts and other == 0
    assert while_paused < total // 2
