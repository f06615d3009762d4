"""A small, fast HTTP/1.1 server on asyncio and httptools (llhttp).

It does only what a gateway needs: keep-alive and pipelining (answered in order), request bodies
with a size limit checked before they are read, ``Expect: 100-continue``, fixed-length and chunked
responses, write back-pressure, and cancellation of the handler when the client goes away.
Everything above the wire (routing, errors in the caller's dialect) belongs to the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast

import httptools

from tailgate.errors import GatewayError, PayloadTooLarge
from tailgate.http.messages import Headers, Request, Response, StreamingResponse

log = logging.getLogger("tailgate.http")

Handler = Callable[[Request], Awaitable[Response | StreamingResponse | None]]
ErrorRenderer = Callable[[str, GatewayError], Response]

_STATUS_LINES: dict[int, bytes] = {}
_HIGH_WATER = 256 * 1024
_MAX_HEADER_BYTES = 256 * 1024
_MAX_PIPELINED = 16
_STARTS_PER_TURN = 4
_DETACHED_PARSER = httptools.HttpRequestParser(object())
"""Stands in for a closed connection's parser, whose callbacks would keep the connection alive."""


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        line = f"HTTP/1.1 {status} {phrase}\r\n".encode()
        _STATUS_LINES[status] = line
    return line


class _DateHeader:
    """``date: …\\r\\n``, rebuilt at most once a second."""

    second = 0
    value = b""

    @classmethod
    def get(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.value = (
                b"date: " + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode() + b"\r\n"
            )
        return cls.value


class ServerSettings:
    """Knobs the server reads for every connection; the gateway swaps them on reload."""

    __slots__ = ("idle_timeout", "max_body_bytes")

    def __init__(self, max_body_bytes: int = 32 * 1024 * 1024, idle_timeout: float = 120.0) -> None:
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout


class Connection(asyncio.Protocol):
    """One client connection. Handlers write responses through it."""

    __slots__ = (
        "_body_parts",
        "_body_size",
        "_chunked",
        "_closed",
        "_current",
        "_drain_waiter",
        "_error_renderer",
        "_handler",
        "_head_sent",
        "_header_bytes",
        "_headers",
        "_idle_handle",
        "_keep_alive",
        "_loop",
        "_paused",
        "_pending",
        "_queued",
        "_rejecting",
        "_request_method",
        "_settings",
        "_starts",
        "_tracker",
        "_upgrade",
        "_url",
        "_when_writable",
        "draining",
        "identity_cache",
        "listener",
        "parser",
        "peer_ip",
        "peer_port",
        "transport",
        "transport_kind",
    )

    def __init__(
        self,
        handler: Handler,
        error_renderer: ErrorRenderer,
        settings: ServerSettings,
        listener: str,
        loop: asyncio.AbstractEventLoop,
        starts: StartQueue,
        tracker: set[Connection] | None = None,
    ) -> None:
        self._handler = handler
        self._tracker = tracker
        self._starts = starts
        self.draining = False
        self._error_renderer = error_renderer
        self._settings = settings
        self._loop = loop
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer_ip: str | None = None
        self.peer_port: int | None = None
        self.transport_kind = "tcp"
        self.identity_cache: Any = None
        self._url = b""
        self._headers: Headers = []
        self._header_bytes = 0
        self._body_parts: list[bytes] = []
        self._body_size = 0
        self._rejecting = False
        self._upgrade = False
        self._pending: deque[Request] = deque()
        self._current: asyncio.Task[None] | None = None
        self._queued = False
        """A request is waiting for its turn to start (see :class:`StartQueue`)."""
        self._closed = False
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._when_writable: list[Callable[[], None]] = []
        self._head_sent = False
        self._chunked = False
        self._keep_alive = True
        self._request_method = "GET"
        self._idle_handle: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if self._tracker is not None:
            self._tracker.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer_ip, self.peer_port = peer[0], peer[1]
        else:
            self.transport_kind = "unix"
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._disarm_idle()
        if self._tracker is not None:
            self._tracker.discard(self)
        if self._current is not None and not self._current.done():
            self._current.cancel()
        self._pending.clear()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # drain() sees the connection closed
        # The parser (through its callbacks) and the transport refer back to this connection:
        # letting go of both frees it at once, instead of leaving a cycle for the collector,
        # whose full passes then take longer and hold up every stream.
        self.parser = _DETACHED_PARSER
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the upgrade request itself was dispatched; any later bytes are ignored
        except httptools.HttpParserError as exc:
            if not self._head_sent:
                self._reply_and_close(400, b"malformed HTTP request: " + str(exc).encode()[:200])
            else:
                self.close()

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._when_writable:
            callbacks, self._when_writable = self._when_writable, []
            for callback in callbacks:
                callback()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._drain_waiter = None

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body_parts = []
        self._body_size = 0
        self._rejecting = False
        self._upgrade = False
        self._disarm_idle()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > _MAX_HEADER_BYTES:
            raise httptools.HttpParserError("request headers too large")
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._upgrade = self.parser.should_upgrade()
        limit = self._settings.max_body_bytes
        expect_continue = False
        for name, value in self._headers:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = 0
                if length > limit:
                    self._reject_too_large(limit)
                    return
            elif name == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        if expect_continue and self.transport is not None and not self._closed:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._rejecting:
            return
        self._body_size += len(body)
        if self._body_size > self._settings.max_body_bytes:
            self._reject_too_large(self._settings.max_body_bytes)
            return
        self._body_parts.append(body)

    def on_message_complete(self) -> None:
        if self._rejecting:
            return
        parts = self._body_parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        method = self.parser.get_method().decode("ascii", "replace")
        keep_alive = self.parser.should_keep_alive() and not self._upgrade
        request = Request(method, self._url, self._headers, body, self, keep_alive)
        if self._current is None and not self._queued:
            self._start(request)
        else:
            self._pending.append(request)
            if len(self._pending) > _MAX_PIPELINED and self.transport is not None:
                self.transport.pause_reading()

    # -- request lifecycle -----------------------------------------------------------------

    def _start(self, request: Request) -> None:
        self._head_sent = False
        self._chunked = False
        self._keep_alive = request.keep_alive and not self.draining
        self._request_method = request.method
        self._queued = True
        self._starts.start(self, request)

    def _begin(self, request: Request) -> None:
        """Run the handler for ``request`` (its turn has come)."""
        self._queued = False
        self._current = self._loop.create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        try:
            result = await self._handler(request)
            if result is not None:
                await self.send(result)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error in handler for %s %s", request.method, request.path)
            if not self._head_sent:
                self.send_response(500, [(b"content-type", b"text/plain")], b"internal error")
            else:
                self.close()
        finally:
            self._current = None
        self._next()

    def _next(self) -> None:
        if self._closed:
            return
        if not self._keep_alive or self.draining:
            self.close()
            return
        if self._pending:
            if self.transport is not None:
                self.transport.resume_reading()
            self._start(self._pending.popleft())
        else:
            self._arm_idle()

    def _reject_too_large(self, limit: int) -> None:
        self._rejecting = True
        path = self._url.partition(b"?")[0].decode("latin-1")
        error = PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
        response = self._error_renderer(path, error)
        self._keep_alive = False
        self.send_response(response.status, response.headers, response.body)
        self.close()

    def _reply_and_close(self, status: int, body: bytes) -> None:
        self._keep_alive = False
        self.send_response(status, [(b"content-type", b"text/plain; charset=utf-8")], body)
        self.close()

    def _arm_idle(self) -> None:
        self._disarm_idle()
        if not self._closed:
            self._idle_handle = self._loop.call_later(self._settings.idle_timeout, self.close)

    def _disarm_idle(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    # -- writing ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def writing_paused(self) -> bool:
        """The client is slower than we write: its socket buffer is over the high-water mark."""
        return self._paused

    def call_when_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the client can take more (at once if it already can)."""
        if self._paused and not self._closed:
            self._when_writable.append(callback)
        else:
            callback()

    @property
    def busy(self) -> bool:
        """A request is being answered on this connection, or waits for its turn to start."""
        return self._current is not None or self._queued

    def drain_and_close(self) -> None:
        """Finish the request in progress (if any), then close; close at once when idle."""
        self.draining = True
        self._pending.clear()
        if not self.busy:
            self.close()

    @property
    def head_sent(self) -> bool:
        return self._head_sent

    def _head(self, status: int, headers: Headers, framing: bytes) -> bytes:
        parts = [status_line(status), _DateHeader.get()]
        for name, value in headers:
            parts.append(name + b": " + value + b"\r\n")
        parts.append(framing)
        if not self._keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def send_response(self, status: int, headers: Headers, body: bytes) -> None:
        """Write a complete response with a ``content-length``."""
        if self._closed or self.transport is None:
            return
        self._head_sent = True
        head = self._head(status, headers, b"content-length: %d\r\n" % len(body))
        if self._request_method == "HEAD" or status in (204, 304) or status < 200:
            self.transport.write(head)
        else:
            self.transport.write(head + body)

    def start_response(
        self, status: int, headers: Headers, content_length: int | None = None, body: bytes = b""
    ) -> None:
        """Write the response head; the body follows with :meth:`write` and ends with :meth:`finish`.

        Without ``content_length`` the body is sent with chunked transfer encoding. ``body`` is
        the start of the body, sent in the same write as the head.
        """
        if self._closed or self.transport is None:
            return
        self._head_sent = True
        if content_length is None:
            self._chunked = True
            framing = b"transfer-encoding: chunked\r\n"
        else:
            self._chunked = False
            framing = b"content-length: %d\r\n" % content_length
        head = self._head(status, headers, framing)
        if not body or self._request_method == "HEAD":
            self.transport.write(head)
        elif self._chunked:
            self.transport.write(b"%b%x\r\n%b\r\n" % (head, len(body), body))
        else:
            self.transport.write(head + body)

    def write(self, data: bytes) -> None:
        if self._closed or self.transport is None or not data or self._request_method == "HEAD":
            return
        if self._chunked:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.transport.write(data)

    def finish(self) -> None:
        if self._closed or self.transport is None:
            return
        if self._chunked and self._request_method != "HEAD":
            self.transport.write(b"0\r\n\r\n")
        self._chunked = False

    async def drain(self) -> None:
        """Wait while the client is slower than we write (back-pressure)."""
        if self._closed:
            raise ConnectionResetError("client disconnected")
        if not self._paused:
            return
        if self._drain_waiter is None or self._drain_waiter.done():
            self._drain_waiter = self._loop.create_future()
        await self._drain_waiter
        if self._closed:  # a new error, not one kept on the future: see tailgate.deadline
            raise ConnectionResetError("client disconnected")

    async def send(self, response: Response | StreamingResponse) -> None:
        if isinstance(response, Response):
            self.send_response(response.status, response.headers, response.body)
            return
        self.start_response(response.status, response.headers)
        async for chunk in response.chunks:
            self.write(chunk)
            await self.drain()
        self.finish()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._closed = True
        self._disarm_idle()

    def abort(self) -> None:
        """Drop the connection at once (used when an answer cannot be completed properly)."""
        if self.transport is not None:
            self.transport.abort()
        self._closed = True


class StartQueue:
    """New requests start in turns of a few per event-loop iteration, between the loop's polls.

    A handler's first step (identity, grants, routing, admission, the upstream request) is the
    costliest part of a request. When hundreds of requests arrive at once, starting them all in
    one iteration would hold back every stream in flight until the last had started: relayed
    chunks wait for the loop. In turns of ``per_turn``, the loop reads and relays what arrived
    between turns, so a burst of arrivals delays streams by one turn at most. The order of
    arrival is kept; a request whose client left while it waited is not started.
    """

    __slots__ = ("_loop", "_per_turn", "_started", "_turn_scheduled", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, per_turn: int = _STARTS_PER_TURN) -> None:
        self._loop = loop
        self._per_turn = per_turn
        self._waiting: deque[tuple[Connection, Request]] = deque()
        self._started = 0
        self._turn_scheduled = False

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def start(self, conn: Connection, request: Request) -> None:
        if self._started < self._per_turn and not self._waiting:
            self._started += 1
            conn._begin(request)
        else:
            self._waiting.append((conn, request))
        if not self._turn_scheduled:
            self._turn_scheduled = True
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        """The next iteration: a new turn starts the next few waiting requests."""
        self._turn_scheduled = False
        self._started = 0
        waiting = self._waiting
        while waiting and self._started < self._per_turn:
            conn, request = waiting.popleft()
            if conn.closed:
                conn._queued = False  # the client left while it waited: never started
                continue
            self._started += 1
            conn._begin(request)
        if self._started:
            self._turn_scheduled = True
            self._loop.call_soon(self._turn)


class HttpServer:
    """Listens on TCP and Unix sockets and serves every connection with one handler."""

    def __init__(self, handler: Handler, error_renderer: ErrorRenderer, settings: ServerSettings) -> None:
        self.handler = handler
        self.error_renderer = error_renderer
        self.settings = settings
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[Connection] = set()
        self._starts: StartQueue | None = None
        self.addresses: list[str] = []

    def _factory(self, listener: str) -> Callable[[], Connection]:
        loop = asyncio.get_running_loop()
        if self._starts is None:
            self._starts = StartQueue(loop)
        starts = self._starts

        def make() -> Connection:
            return Connection(
                self.handler, self.error_renderer, self.settings, listener, loop, starts, self._connections
            )

        return make

    @property
    def active_requests(self) -> int:
        return sum(1 for conn in self._connections if conn.busy)

    async def shutdown(self, timeout: float) -> int:
        """Stop accepting, let requests in progress finish (streams included), then close.

        Returns how many connections were still busy when ``timeout`` ran out (and were cut).
        """
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            conn.drain_and_close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._connections and loop.time() < deadline:  # noqa: ASYNC110 - shutdown only
            await asyncio.sleep(0.05)
        cut = len(self._connections)
        for conn in list(self._connections):
            conn.abort()
        await self.close()
        return cut

    async def listen(
        self, address: str, *, sock: socket.socket | None = None, reuse_port: bool = False
    ) -> str:
        """Start listening on ``host:port`` or ``unix:/path`` (or an already bound socket).

        Returns the address actually bound (the real port when 0 was asked).
        """
        loop = asyncio.get_running_loop()
        if sock is not None and sock.family == socket.AF_UNIX:
            server = await loop.create_unix_server(self._factory(address), sock=sock, backlog=2048)
            bound = address
        elif sock is not None:
            server = await loop.create_server(self._factory(address), sock=sock, backlog=2048)
            bound = address
        elif address.startswith("unix:"):
            path = address[5:]
            server = await loop.create_unix_server(self._factory(address), path=path, backlog=2048)
            bound = address
        else:
            host, port = split_host_port(address)
            server = await loop.create_server(
                self._factory(address),
                host=host,
                port=port,
                backlog=2048,
                reuse_address=True,
                reuse_port=reuse_port,
            )
            sockname = server.sockets[0].getsockname()
            bound = f"{format_host(host)}:{sockname[1]}"
        self._servers.append(server)
        self.addresses.append(bound)
        return bound

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()


def split_host_port(address: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` → ``("127.0.0.1", 8080)``; ``"[::1]:80"`` → ``("::1", 80)``."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest.lstrip(":") or "80")
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, 80
    return host, int(port)


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
