"""The request path: identify → parse → authorise → route → admit → forward → relay → record.

This is the one place where HTTP meets the domain for inference calls. It parses the body once,
never waits on the database or a log write, relays upstream bytes as they arrive, and hands every
request — served, refused, failed or abandoned — to the recorder as one :class:`Exchange`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from tailgate.demo import demo_answer
from tailgate.dialects import OPERATIONS, Dialect, Operation
from tailgate.errors import (
    AccessDenied,
    BadRequest,
    GatewayError,
    QuotaExceeded,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_body,
    stream_error_event,
)
from tailgate.http.client import UpstreamClosed, UpstreamPool, UpstreamResponse
from tailgate.http.messages import Headers, Request, json_object
from tailgate.identity import Identity
from tailgate.record import Outcome, new_record_id
from tailgate.routing import Route
from tailgate.upstream import client_response_headers, provider_origin, upstream_headers, upstream_target

if TYPE_CHECKING:
    from tailgate.grants import Decision
    from tailgate.quotas import Reservation
    from tailgate.runtime import Runtime

log = logging.getLogger("tailgate.proxy")

_SSE = b"text/event-stream"
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


@dataclass(slots=True)
class Exchange:
    """Everything the request path learned about one request, handed to the recorder as is."""

    id: str
    started_ns: int
    """``time.perf_counter_ns()`` at arrival (durations are measured from here)."""
    ts_ms: int
    runtime: Runtime
    method: str
    path: str
    query: str
    operation: Operation | None
    dialect: Dialect
    request_headers: Headers
    request_body: bytes
    user_agent: str | None = None
    body: dict[str, Any] | None = None
    identity: Identity | None = None
    route: Route | None = None
    decision: Decision | None = None
    reservation: Reservation | None = None
    stream: bool = False
    injected_usage: bool = False
    forwarded_body: bytes | None = None
    status: int = 0
    outcome: Outcome = Outcome.OK
    error: str | None = None
    response_headers: Headers = field(default_factory=list)
    response_chunks: list[bytes] = field(default_factory=list)
    first_byte_ns: int = 0
    ended_ns: int = 0
    gateway_ns: int = 0
    """Time spent in the gateway itself before the upstream was asked (the overhead)."""


Identify = Callable[[Request], Awaitable[Identity]]
Submit = Callable[[Exchange], None]


class Proxy:
    """Serves the inference endpoints of every dialect."""

    def __init__(
        self,
        runtime: Callable[[], Runtime],
        pool: UpstreamPool,
        identify: Identify,
        submit: Submit,
    ) -> None:
        self._runtime = runtime
        self._pool = pool
        self._identify = identify
        self._submit = submit
        self.in_flight = 0
        """Requests being answered now (quota admission decides inline only when alone)."""

    async def handle(self, request: Request, operation: Operation, path_model: str | None) -> None:
        """Answer one inference request, writing the response to ``request.conn``."""
        started = time.perf_counter_ns()
        runtime = self._runtime()
        info = OPERATIONS[operation]
        ex = Exchange(
            id=new_record_id(),
            started_ns=started,
            ts_ms=time.time_ns() // 1_000_000,
            runtime=runtime,
            method=request.method,
            path=request.path,
            query=request.query_string,
            operation=operation,
            dialect=info.dialect,
            request_headers=request.headers,
            request_body=request.body,
            user_agent=request.header_str(b"user-agent"),
        )
        self.in_flight += 1
        try:
            await self._serve(request, ex, path_model)
        except GatewayError as error:
            self._fail(request, ex, error)
        except asyncio.CancelledError:
            ex.outcome = Outcome.CLIENT_DISCONNECTED
            ex.error = "the client disconnected before the answer was complete"
            if not ex.status:
                ex.status = 499
            raise
        except Exception as exc:  # a bug: answer 500 in the caller's dialect, keep the record
            log.exception("internal error on %s", request.path)
            self._fail(request, ex, GatewayError(f"internal error in the gateway ({type(exc).__name__})"))
            ex.outcome = Outcome.ERROR
        finally:
            self.in_flight -= 1
            ex.ended_ns = time.perf_counter_ns()
            self._submit(ex)

    # -- the pipeline ----------------------------------------------------------------------

    async def _serve(self, request: Request, ex: Exchange, path_model: str | None) -> None:
        runtime = ex.runtime
        operation = ex.operation
        assert operation is not None
        identity = await self._identify(request)
        ex.identity = identity

        body = json_object(request.body)
        ex.body = body
        model = path_model if path_model is not None else body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest('the request has no "model"; say which model to use')
        ex.stream = operation is Operation.STREAM_GENERATE_CONTENT or body.get("stream") is True

        grants = runtime.grants
        if grants.role_of(identity) is None:
            raise AccessDenied("access denied: no role granted")
        route = runtime.routing.resolve(model, operation)
        ex.route = route
        decision = grants.decide(identity, route.provider.id, route.model)
        ex.decision = decision
        if not decision.allowed:
            raise AccessDenied(decision.reason)
        if decision.quotas and OPERATIONS[operation].metered:  # counting tokens is free
            ex.reservation = await runtime.quotas.admit(
                identity, route, decision.quotas, body, len(request.body), alone=self.in_flight == 1
            )

        forwarded = _rewrite_body(ex, route, body)
        if route.provider.type == "demo":
            self._answer_demo(request, ex, route, forwarded)
            return
        await self._forward(request, ex, route)

    async def _forward(self, request: Request, ex: Exchange, route: Route) -> None:
        runtime = ex.runtime
        provider = route.provider
        operation = ex.operation
        assert operation is not None and ex.decision is not None
        origin = provider_origin(provider)
        path = _upstream_path(operation, request.path, route)
        target = upstream_target(origin, path, request.query_string)
        headers = upstream_headers(request.headers, provider, ex.decision.add_headers)
        payload = ex.forwarded_body if ex.forwarded_body is not None else request.body

        settings = runtime.config.server
        ex.gateway_ns = time.perf_counter_ns() - ex.started_ns
        upstream = await self._pool.request(
            origin, b"POST", target, headers, payload, timeout=settings.upstream_timeout
        )
        try:
            await self._relay(request, ex, upstream)
        finally:
            upstream.close()

    async def _relay(self, request: Request, ex: Exchange, upstream: UpstreamResponse) -> None:
        conn = request.conn
        ex.status = upstream.status
        ex.response_headers = upstream.headers
        if not 200 <= upstream.status < 300:
            ex.outcome = Outcome.UPSTREAM_ERROR
            ex.error = f"the upstream answered {upstream.status}"
        content_type = upstream.header(b"content-type") or b""
        is_sse = content_type.startswith(_SSE)
        strip_usage = ex.injected_usage and is_sse and upstream.status == 200
        length = upstream.header(b"content-length")
        headers = client_response_headers(upstream.headers)
        headers.append((b"x-tailgate-request-id", ex.id.encode()))
        headers.append((b"x-tailgate-overhead-us", b"%d" % (ex.gateway_ns // 1000)))
        usage_filter = _UsageChunkFilter() if strip_usage else None
        chunks = ex.response_chunks

        def deliver(chunk: bytes) -> None:
            if not ex.first_byte_ns:
                ex.first_byte_ns = time.perf_counter_ns()
            chunks.append(chunk)
            conn.write(usage_filter.feed(chunk) if usage_filter is not None else chunk)

        first = upstream.take_buffered()  # usually the whole of a JSON answer: one write
        if first:
            ex.first_byte_ns = time.perf_counter_ns()
            chunks.append(first)
        fixed = length is not None and length.isdigit() and not strip_usage
        conn.start_response(
            upstream.status,
            headers,
            int(length) if fixed and length is not None else None,
            usage_filter.feed(first) if usage_filter is not None and first else first,
        )
        try:
            await upstream.relay(deliver, conn)
        except (UpstreamClosed, UpstreamTimeout) as exc:
            self._died_mid_stream(conn, ex, exc, is_sse, chunked=not fixed)
            return
        if usage_filter is not None:
            conn.write(usage_filter.flush())
        conn.finish()

    def _died_mid_stream(
        self, conn: Any, ex: Exchange, exc: Exception, is_sse: bool, *, chunked: bool
    ) -> None:
        message = str(exc) if isinstance(exc, GatewayError) else f"the upstream connection broke: {exc}"
        ex.outcome = Outcome.UPSTREAM_FAILED
        ex.error = message
        if is_sse and chunked:
            error = (
                UpstreamTimeout(message) if isinstance(exc, UpstreamTimeout) else UpstreamUnreachable(message)
            )
            conn.write(
                stream_error_event(error, ex.dialect, responses_api=ex.operation is Operation.RESPONSES)
            )
            conn.finish()
        else:
            conn.abort()  # a fixed-length answer cannot be completed: the client must see a failure

    def _answer_demo(self, request: Request, ex: Exchange, route: Route, body: dict[str, Any]) -> None:
        operation = ex.operation
        assert operation is not None
        ex.gateway_ns = time.perf_counter_ns() - ex.started_ns
        answer = demo_answer(operation, route.model, body, stream=ex.stream, query=request.query_string)
        conn = request.conn
        ex.status = answer.status
        headers: Headers = [
            (b"content-type", answer.content_type.encode()),
            (b"x-tailgate-request-id", ex.id.encode()),
            (b"x-tailgate-provider", b"demo"),
        ]
        ex.response_headers = headers
        ex.first_byte_ns = time.perf_counter_ns()
        if answer.chunks:
            usage_filter = _UsageChunkFilter() if ex.injected_usage else None
            conn.start_response(answer.status, headers)
            for chunk in answer.chunks:
                conn.write(usage_filter.feed(chunk) if usage_filter is not None else chunk)
            if usage_filter is not None:
                conn.write(usage_filter.flush())
            conn.finish()
            ex.response_chunks = list(answer.chunks)
        else:
            conn.send_response(answer.status, headers, answer.body)
            ex.response_chunks = [answer.body]

    # -- errors ----------------------------------------------------------------------------

    def _fail(self, request: Request, ex: Exchange, error: GatewayError) -> None:
        ex.status = error.status
        ex.error = error.message
        ex.outcome = _outcome_for(error)
        conn = request.conn
        if conn.head_sent:
            conn.abort()
            return
        headers: Headers = [(b"content-type", b"application/json")]
        headers.extend((n.encode(), v.encode()) for n, v in error.headers)
        headers.append((b"x-tailgate-request-id", ex.id.encode()))
        if isinstance(error, QuotaExceeded):
            log.warning(
                "quota exceeded",
                extra={
                    "detail": ", ".join(error.buckets),
                    "login_name": ex.identity.principal if ex.identity else None,
                    "model": ex.route.fqn if ex.route else None,
                },
            )
        conn.send_response(error.status, headers, error_body(error, ex.dialect))


_PATH_MODEL_OPERATIONS = frozenset(
    {Operation.GENERATE_CONTENT, Operation.STREAM_GENERATE_CONTENT, Operation.GEMINI_COUNT_TOKENS}
)
_CANONICAL_PATHS = {
    Operation.CHAT_COMPLETIONS: "/v1/chat/completions",
    Operation.RESPONSES: "/v1/responses",
    Operation.MESSAGES: "/v1/messages",
    Operation.COUNT_TOKENS: "/v1/messages/count_tokens",
}


def _rewrite_body(ex: Exchange, route: Route, body: dict[str, Any]) -> dict[str, Any]:
    """The body to send on: the bare model id for an FQN, and usage asked for on chat streams.

    Sets ``ex.forwarded_body`` (the bytes to send) only when something had to change, so an
    untouched request is forwarded as the exact bytes the client sent.
    """
    rewrite: dict[str, Any] = {}
    if route.requested != route.model and ex.operation not in _PATH_MODEL_OPERATIONS:
        rewrite["model"] = route.model
    if ex.operation is Operation.CHAT_COMPLETIONS and ex.stream:
        options = body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            ex.injected_usage = True
            options = dict(options) if isinstance(options, dict) else {}
            options["include_usage"] = True
            rewrite["stream_options"] = options
    if not rewrite:
        return body
    forwarded = {**body, **rewrite}
    ex.forwarded_body = orjson.dumps(forwarded)
    return forwarded


def _upstream_path(operation: Operation, client_path: str, route: Route) -> str:
    """The path to call upstream: canonical for body-model APIs, the model rewritten for Gemini."""
    canonical = _CANONICAL_PATHS.get(operation)
    if canonical is not None:
        return canonical
    prefix = "/v1beta/models/" if client_path.startswith("/v1beta/") else "/v1/models/"
    method = client_path.rpartition(":")[2]
    return f"{prefix}{route.model}:{method}"


def _outcome_for(error: GatewayError) -> Outcome:
    if isinstance(error, QuotaExceeded):
        return Outcome.QUOTA_EXCEEDED
    if error.status in (401, 403):
        return Outcome.DENIED
    if error.status in (502, 504):
        return Outcome.UPSTREAM_FAILED
    if 400 <= error.status < 500:
        return Outcome.INVALID
    return Outcome.ERROR


class _UsageChunkFilter:
    """Removes the usage-only chunk (``"choices":[]``) of an OpenAI chat stream.

    Used only when the gateway itself asked for ``stream_options.include_usage``: the client gets
    exactly the stream it asked for, byte for byte, minus that one event.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        if not self._pending and data.endswith(b"\n\n") and _EMPTY_CHOICES.search(data) is None:
            return data  # whole events, none of them the usage chunk: the common case, no split
        buffer = self._pending + data if self._pending else data
        out: list[bytes] = []
        start = 0
        for match in _EVENT_END.finditer(buffer):
            event = buffer[start : match.end()]
            if not _is_usage_only(event):
                out.append(event)
            start = match.end()
        self._pending = buffer[start:]
        return b"".join(out) if len(out) != 1 else out[0]

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest


def _is_usage_only(event: bytes) -> bool:
    # Every chunk of such a stream carries "usage":null; only the last has empty choices. The
    # search spares a JSON parse of every other chunk.
    if _EMPTY_CHOICES.search(event) is None:
        return False
    data = event.strip()
    if not data.startswith(b"data:"):
        return False
    try:
        chunk = orjson.loads(data[5:])
    except orjson.JSONDecodeError:
        return False
    return isinstance(chunk, dict) and chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)
