"""A pooled HTTP/1.1 client for upstream providers, on asyncio and httptools.

Connections are kept alive per origin and reused. A response body is handed over chunk by chunk
as it arrives (never buffered whole), with back-pressure: when the consumer falls behind, reading
from the upstream pauses. Closing a response early aborts its connection, which is how a client
that went away cancels the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

from tailgate.deadline import expire
from tailgate.errors import UpstreamTimeout, UpstreamUnreachable
from tailgate.http.messages import Headers

_READ_HIGH_WATER = 1024 * 1024
_IDLE_KEEPALIVE = 50.0
_MAX_IDLE_PER_ORIGIN = 1024
_DETACHED_PARSER = httptools.HttpResponseParser(object())
"""Stands in for a closed connection's parser, whose callbacks would keep the connection alive."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    base_path: str = ""
    """The path part of the base URL, without a trailing slash (``/api`` for ``https://x/api/``)."""
    host_header: bytes = field(default=b"", compare=False)

    @classmethod
    def from_url(cls, url: str) -> Origin:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default_port = 443 if scheme == "https" else 80
        port = parts.port or default_port
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == default_port else f"{shown}:{port}"
        return cls(scheme, host, port, parts.path.rstrip("/"), host_header.encode("idna"))


class UpstreamClosed(Exception):
    """The upstream connection ended before the response was complete."""


class FlowControl(Protocol):
    """The client side of a relay: whether it can take more, and a call when it can again."""

    @property
    def writing_paused(self) -> bool: ...

    def call_when_writable(self, callback: Callable[[], None]) -> None: ...


class _UpstreamProtocol(asyncio.Protocol):
    """One upstream connection: writes a request, parses the response, buffers body chunks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = _DETACHED_PARSER  # the real one once connected: a failed connect leaves no cycle
        self.head_waiter: asyncio.Future[bool] | None = None
        """Completes with ``False`` when the head arrived (or the connection ended), ``True`` on expiry."""
        self.body_waiter: asyncio.Future[bool] | None = None
        self.status = 0
        self.headers: Headers = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.head_done = False
        self.complete = False
        self.closed = False
        self.error: BaseException | None = None
        self.received_any = False
        self.reading_paused = False
        self.keep_alive = True
        self.idle_handle: asyncio.TimerHandle | None = None
        self.sink: Callable[[bytes], None] | None = None
        self.gathered: list[bytes] | None = None
        """While relaying: the body bytes of the read being parsed, delivered together after it."""
        self.flow: FlowControl | None = None
        self.last_activity = 0.0

    def reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers = []
        self.chunks.clear()
        self.buffered = 0
        self.head_done = False
        self.complete = False
        self.received_any = False
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.parser = httptools.HttpResponseParser(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.error is None:
            self.error = UpstreamClosed(str(exc) if exc else "upstream closed the connection")
        self._wake()
        # No reference cycle left behind: the parser's callbacks and the transport point back here.
        self.parser = _DETACHED_PARSER
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        relaying = self.sink is not None
        if relaying:
            self.gathered = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = UpstreamClosed(f"upstream sent a malformed HTTP response ({exc})")
            self.keep_alive = False
            if self.transport is not None:
                self.transport.abort()
            self._wake()
        finally:
            if relaying:
                gathered, self.gathered = self.gathered, None
                if gathered:
                    # Everything one read brought goes on in one write: a burst of events
                    # (each often its own HTTP chunk) costs one system call, not one each.
                    self._deliver(gathered[0] if len(gathered) == 1 else b"".join(gathered))

    def eof_received(self) -> bool | None:
        # A response without content-length or chunking ends at EOF.
        with contextlib.suppress(httptools.HttpParserError):
            self.parser.feed_data(b"")
        return None

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True
        waiter = self.head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    def on_body(self, body: bytes) -> None:
        gathered = self.gathered
        if gathered is not None:
            gathered.append(body)
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _READ_HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    def _deliver(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            return
        self.last_activity = self.loop.time()
        try:
            sink(data)
        except Exception as exc:  # a bug in the sink must not leave the relay hanging
            self.error = exc
            self.sink = None
            self._wake()
            return
        flow = self.flow
        if flow is not None and flow.writing_paused and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()
            flow.call_when_writable(self.resume_reading)

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def _wake(self) -> None:
        for waiter in (self.head_waiter, self.body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(False)


class _Silence:
    """Completes ``waiter`` with ``True`` (expired) once the upstream has sent nothing for
    ``timeout`` seconds; time that reading was paused because the client could not keep up does
    not count.

    A class rather than a closure that re-arms itself: such a closure refers to itself, and the
    cycle would leave every stream's objects to the cycle collector.
    """

    __slots__ = ("_conn", "_handle", "_timeout", "_waiter")

    def __init__(self, conn: _UpstreamProtocol, waiter: asyncio.Future[bool], timeout: float) -> None:
        self._conn = conn
        self._waiter = waiter
        self._timeout = timeout
        self._handle: asyncio.TimerHandle | None = conn.loop.call_later(timeout, self._check)

    def _check(self) -> None:
        conn = self._conn
        idle = conn.loop.time() - conn.last_activity
        if conn.reading_paused or idle < self._timeout:
            delay = self._timeout - idle if idle < self._timeout else self._timeout
            self._handle = conn.loop.call_later(delay, self._check)
        else:
            self._handle = None
            expire(self._waiter, True)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class UpstreamResponse:
    """The head of an upstream response, and its body as it arrives."""

    __slots__ = ("_conn", "_done", "_pool", "_timeout", "headers", "origin", "status")

    def __init__(self, pool: UpstreamPool, origin: Origin, conn: _UpstreamProtocol, timeout: float) -> None:
        self._pool = pool
        self.origin = origin
        self._conn = conn
        self._timeout = timeout
        self._done = False
        self.status = conn.status
        self.headers = conn.headers

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def next_chunk(self) -> bytes | None:
        """The body bytes received since the last call, or None at the end of the body.

        Raises :class:`UpstreamClosed` if the upstream dies mid-body and
        :class:`~tailgate.errors.UpstreamTimeout` if it stays silent for too long.
        """
        conn = self._conn
        while True:
            if conn.chunks:
                return self.take_buffered()
            if self._ended():
                return None
            waiter = conn.loop.create_future()
            conn.body_waiter = waiter
            handle = conn.loop.call_later(self._timeout, expire, waiter, True)
            try:
                expired = await waiter
            finally:
                handle.cancel()
                conn.body_waiter = None
            if expired:
                self.close()
                raise UpstreamTimeout(f"the upstream sent nothing for {self._timeout:g} seconds")

    def take_buffered(self) -> bytes:
        """The body bytes already received (typically with the head), without waiting."""
        conn = self._conn
        if not conn.chunks:
            return b""
        data = conn.chunks.popleft() if len(conn.chunks) == 1 else b"".join(conn.chunks)
        conn.chunks.clear()
        conn.buffered = 0
        conn.resume_reading()
        return data

    async def relay(self, deliver: Callable[[bytes], None], flow: FlowControl) -> None:
        """Hand every remaining body chunk to ``deliver`` as it arrives, until the body ends.

        Chunks are delivered from the connection's ``data_received`` itself: the awaiting task
        wakes once, at the end, not per chunk. When ``flow`` (the client side) cannot take more,
        reading from the upstream pauses until it can. Raises like :meth:`next_chunk`.
        """
        conn = self._conn
        buffered = self.take_buffered()
        if buffered:
            deliver(buffered)
        if self._ended():
            return
        waiter = conn.loop.create_future()
        conn.body_waiter = waiter
        conn.sink, conn.flow = deliver, flow
        conn.last_activity = conn.loop.time()
        timeout = self._timeout
        silence = _Silence(conn, waiter, timeout)
        try:
            expired = await waiter
        finally:
            silence.cancel()
            conn.sink = conn.flow = None
            conn.body_waiter = None
        if expired:
            self.close()
            raise UpstreamTimeout(f"the upstream sent nothing for {timeout:g} seconds")
        if not self._ended():
            self._fail()
            raise UpstreamClosed("upstream closed the connection")

    async def read(self, limit: int = 64 * 1024 * 1024) -> bytes:
        parts: list[bytes] = []
        size = 0
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                self.close()
                raise UpstreamClosed("upstream response too large")
        return b"".join(parts)

    def _ended(self) -> bool:
        """Whether the whole body arrived (the connection then goes back to the pool); raises
        what broke the connection, if something did (the connection is then discarded)."""
        conn = self._conn
        if conn.complete:
            self._finish()
            return True
        if conn.error is not None:
            self._fail()
            raise _fresh(conn.error)
        return False

    def _fail(self) -> None:
        self._done = True
        self._pool._discard(self._conn)

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._pool._release(self.origin, self._conn)

    def close(self) -> None:
        """Stop reading; an unfinished body aborts the connection (cancelling the upstream call)."""
        if self._done:
            return
        self._done = True
        if self._conn.complete and not self._conn.chunks:
            self._pool._release(self.origin, self._conn)
        else:
            self._pool._discard(self._conn)


class UpstreamPool:
    """Keep-alive connections per origin, shared by every request of one event loop."""

    def __init__(self, *, connect_timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.connect_timeout = connect_timeout
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_UpstreamProtocol]] = {}
        self._closed = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _connect(self, origin: Origin) -> _UpstreamProtocol:
        loop = asyncio.get_running_loop()
        ssl_ctx = self._ssl_context() if origin.scheme == "https" else None
        # Errors are raised after the except clauses, not in them: see _fresh.
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, proto = await loop.create_connection(
                    lambda: _UpstreamProtocol(loop),
                    origin.host,
                    origin.port,
                    ssl=ssl_ctx,
                    server_hostname=origin.host if ssl_ctx else None,
                )
            return proto
        except TimeoutError:
            timed_out, failure = True, ""
        except (OSError, ssl.SSLError) as exc:
            timed_out, failure = False, _describe(exc)
        where = f"the upstream {origin.host}:{origin.port}"
        if timed_out:
            raise UpstreamTimeout(f"could not connect to {where} within {self.connect_timeout:g} seconds")
        raise UpstreamUnreachable(f"could not connect to {where}: {failure}")

    def _acquire_idle(self, origin: Origin) -> _UpstreamProtocol | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.idle_handle is not None:
                conn.idle_handle.cancel()
                conn.idle_handle = None
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def _release(self, origin: Origin, conn: _UpstreamProtocol) -> None:
        if self._closed or conn.closed or not conn.keep_alive or not conn.complete:
            self._discard(conn)
            return
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= _MAX_IDLE_PER_ORIGIN:
            self._discard(conn)
            return
        conn.reset()
        conn.idle_handle = conn.loop.call_later(_IDLE_KEEPALIVE, self._expire_idle, origin, conn)
        idle.append(conn)

    def _expire_idle(self, origin: Origin, conn: _UpstreamProtocol) -> None:
        idle = self._idle.get(origin)
        if idle and conn in idle:
            idle.remove(conn)
        self._discard(conn)

    def _discard(self, conn: _UpstreamProtocol) -> None:
        conn.closed = True
        if conn.idle_handle is not None:
            conn.idle_handle.cancel()
            conn.idle_handle = None
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.abort()

    async def request(
        self,
        origin: Origin,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes,
        *,
        timeout: float,
    ) -> UpstreamResponse:
        """Send a request and wait for the response head (at most ``timeout`` seconds)."""
        head = [method, b" ", target, b" HTTP/1.1\r\nhost: ", origin.host_header, b"\r\n"]
        for name, value in headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        payload = b"".join(head) + body

        conn = self._acquire_idle(origin)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(origin)
        try:
            try:
                return await self._exchange(origin, conn, payload, timeout)
            except UpstreamClosed:
                if not reused or conn.received_any:
                    raise
            # A kept-alive connection the upstream had already closed: retry once on a fresh one.
            conn = await self._connect(origin)
            return await self._exchange(origin, conn, payload, timeout)
        except UpstreamClosed as exc:
            failure = str(exc)  # raised below, outside the except clause: see _fresh
        where = f"{origin.host}:{origin.port}"
        raise UpstreamUnreachable(f"the upstream {where} failed before answering: {failure}")

    async def _exchange(
        self, origin: Origin, conn: _UpstreamProtocol, payload: bytes, timeout: float
    ) -> UpstreamResponse:
        assert conn.transport is not None
        conn.transport.write(payload)
        if not conn.head_done:
            waiter = conn.loop.create_future()
            conn.head_waiter = waiter
            handle = conn.loop.call_later(timeout, expire, waiter, True)
            try:
                expired = await waiter
            except BaseException:
                self._discard(conn)
                raise
            finally:
                handle.cancel()
                conn.head_waiter = None
            if expired:
                self._discard(conn)
                raise UpstreamTimeout(
                    f"the upstream {origin.host}:{origin.port} did not answer within {timeout:g} seconds"
                )
        if not conn.head_done:
            self._discard(conn)
            raise _fresh(conn.error) if conn.error else UpstreamClosed("upstream closed the connection")
        return UpstreamResponse(self, origin, conn, timeout)

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                self._discard(conn)
        self._idle.clear()


def _fresh(error: BaseException) -> BaseException:
    """A new exception like ``error``, to raise in its place.

    A raised exception keeps its traceback, and with it the frames it passed through and their
    locals. Raised from where a local or an attribute still holds it (the connection keeps the
    error that ended it; ``except ... as exc`` binds one), it forms a reference cycle, which
    only the cycle collector frees, and it runs rarely (:mod:`tailgate.garbage`). So this module
    raises only new exceptions, outside ``except`` clauses.
    """
    try:
        return copy.copy(error)
    except Exception:
        return UpstreamClosed(str(error))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"name resolution failed ({exc.strerror})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
