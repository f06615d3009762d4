"""A real HTTP mock of the OpenAI, Anthropic and Gemini APIs, for tests.

It runs an aiohttp server on ``127.0.0.1:<ephemeral port>`` in a background thread with its own
event loop, answers with :mod:`tailgate.demo` in each provider's exact wire format, records every
exchange, checks credentials and plays scenarios chosen per request by the ``x-mock-scenario``
header (comma-separated) or globally through ``mock.scenario``:

    error=<status>        the provider's native error body and status (429/529 carry retry-after)
    retry_after=<s>       the retry-after sent with errors (default 1 on 429, 503 and 529)
    die_after=<n>         send n stream events (or n body bytes) then reset the connection
    first_byte_delay=<ms> wait before sending anything
    chunk_delay=<ms>      wait between stream events
    chunks=<n>            n content chunks
    gzip, br              compress a JSON body with content-encoding gzip / br
    hang                  accept the request and never answer
    garbage               write bytes that are not HTTP and close
    tools, cache, reasoning, no_usage   the answer's shape (see tailgate.demo)

Use it as a context manager (``with MockUpstream(prefix="/api") as mock``) or through the
``mock_upstream`` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import brotli
import orjson
import pytest
from aiohttp import web

from tailgate.demo import DemoAnswer, DemoOptions, demo_answer
from tailgate.dialects import OPERATIONS, Dialect, Operation

DEFAULT_MODELS = ("gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash")
GARBAGE = b"\x00\x01\x02 this is not HTTP \xff\xfe\r\n\r\n"
CREDENTIAL_STYLES = ("bearer", "x-api-key", "x-goog-api-key")

_GEMINI_PATH = re.compile(
    r"^/(v1|v1beta)/models/([^/:]+):(generateContent|streamGenerateContent|countTokens)$"
)
_GEMINI_METHODS = {
    "generateContent": Operation.GENERATE_CONTENT,
    "streamGenerateContent": Operation.STREAM_GENERATE_CONTENT,
    "countTokens": Operation.GEMINI_COUNT_TOKENS,
}
_POST_PATHS = {
    "/v1/chat/completions": Operation.CHAT_COMPLETIONS,
    "/v1/responses": Operation.RESPONSES,
    "/v1/messages": Operation.MESSAGES,
    "/v1/messages/count_tokens": Operation.COUNT_TOKENS,
}


# -- what was exchanged ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    """The raw (still percent-encoded) path, prefix included."""
    query: str
    """The raw query string, without ``?``."""
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), None)

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Exchange:
    request: RecordedRequest
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    """The body bytes sent so far: after content-encoding, before chunked framing."""
    complete: bool = False
    reset: bool = False
    """The mock broke the connection on purpose (``die_after``, ``garbage``)."""
    cancelled: bool = False
    """The client went away before the answer was complete."""


# -- scenarios -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    error: int | None = None
    retry_after: int | None = None
    die_after: int | None = None
    first_byte_delay: int = 0
    chunk_delay: int = 0
    chunks: int | None = None
    gzip: bool = False
    br: bool = False
    hang: bool = False
    garbage: bool = False
    tools: bool = False
    cache: bool = False
    reasoning: bool = False
    no_usage: bool = False

    def demo_options(self) -> DemoOptions:
        return DemoOptions(
            chunks=self.chunks,
            tool_call=self.tools,
            cache=self.cache,
            reasoning=self.reasoning,
            usage=not self.no_usage,
        )


_SCENARIO_FIELDS = {f.name: f for f in fields(Scenario)}


def parse_scenario(*texts: str) -> Scenario:
    """The scenario named by comma-separated ``name`` / ``name=<int>`` items; later texts win.

    Raises ValueError on an unknown name or a missing or malformed value, so a typo fails the test.
    """
    values: dict[str, Any] = {}
    for text in texts:
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            spec = _SCENARIO_FIELDS.get(name)
            if spec is None:
                raise ValueError(f"unknown mock scenario {name!r}")
            if spec.type == "bool":
                if value:
                    raise ValueError(f"mock scenario {name!r} takes no value")
                values[name] = True
            elif not value.isdigit():
                raise ValueError(f"mock scenario {name!r} needs an integer value")
            else:
                values[name] = int(value)
    return Scenario(**values)


# -- provider-native bodies ------------------------------------------------------------------------

_OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request (mock)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Country not supported."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", "slow_down", "The engine is currently overloaded, please try again later."),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(dialect: Dialect, status: int, message: str | None = None, *, request_id: str = "") -> bytes:
    """The body the real provider sends with ``status``."""
    if dialect is Dialect.ANTHROPIC:
        kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        error = {"type": kind, "message": message or kind.replace("_", " ").capitalize() + " (mock)."}
        return orjson.dumps({"type": "error", "error": error, "request_id": request_id})
    if dialect is Dialect.GEMINI:
        state = _GEMINI_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        gemini: dict[str, Any] = {"code": status, "message": message or f"{state} (mock).", "status": state}
        if status == 429:
            gemini["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
        return orjson.dumps({"error": gemini}, option=orjson.OPT_INDENT_2)
    kind, code, text = _OPENAI_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "")
    )
    return orjson.dumps(
        {
            "error": {
                "message": message or text or f"HTTP {status} (mock).",
                "type": kind,
                "param": None,
                "code": code,
            }
        }
    )


def _gemini_key_error(presented: bool) -> tuple[int, bytes]:
    if not presented:
        message = "Method doesn't allow unregistered callers. Please use API Key or other identity."
        return 403, error_body(Dialect.GEMINI, 403, message)
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
    }
    body = {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [info],
        }
    }
    return 400, orjson.dumps(body, option=orjson.OPT_INDENT_2)


def model_list(dialect: Dialect, models: tuple[str, ...]) -> bytes:
    """``GET /v1/models`` (OpenAI or Anthropic) or ``GET /v1beta/models`` (Gemini) listing ``models``."""
    if dialect is Dialect.ANTHROPIC:
        data = [
            {
                "type": "model",
                "id": m,
                "display_name": m,
                "created_at": "2025-09-29T00:00:00Z",
                "lifecycle": "active",
            }
            for m in models
        ]
        first, last = (models[0], models[-1]) if models else (None, None)
        return orjson.dumps({"data": data, "has_more": False, "first_id": first, "last_id": last})
    if dialect is Dialect.GEMINI:
        methods = ["generateContent", "countTokens", "streamGenerateContent"]
        gemini = [
            {
                "name": "models/" + m,
                "version": "001",
                "displayName": m,
                "inputTokenLimit": 1048576,
                "outputTokenLimit": 65536,
                "supportedGenerationMethods": methods,
            }
            for m in models
        ]
        return orjson.dumps({"models": gemini}, option=orjson.OPT_INDENT_2)
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1721172741, "owned_by": "system"} for m in models
            ],
        }
    )


# -- routing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    dialect: Dialect
    operation: Operation | None = None
    """None for a model listing."""
    model: str = ""
    """The model named in the path (Gemini)."""


def route(method: str, path: str, headers: Mapping[str, str], query: str = "") -> Route | None:
    """What a request to ``path`` (prefix already removed) asks for, or None for an unknown path."""
    if method == "POST" and path in _POST_PATHS:
        operation = _POST_PATHS[path]
        return Route(OPERATIONS[operation].dialect, operation)
    match = _GEMINI_PATH.match(path)
    if method == "POST" and match:
        return Route(Dialect.GEMINI, _GEMINI_METHODS[match.group(3)], match.group(2))
    if method == "GET" and path == "/v1beta/models":
        return Route(Dialect.GEMINI)
    if method == "GET" and path == "/v1/models":
        if "anthropic-version" in headers:
            return Route(Dialect.ANTHROPIC)
        if "x-goog-api-key" in headers or "key=" in query:
            return Route(Dialect.GEMINI)
        return Route(Dialect.OPENAI)
    return None


def path_dialect(path: str) -> Dialect:
    """The dialect to answer an unroutable ``path`` in."""
    if path.startswith("/v1/messages"):
        return Dialect.ANTHROPIC
    if path.startswith("/v1beta") or ":" in path:
        return Dialect.GEMINI
    return Dialect.OPENAI


def _request_id(dialect: Dialect) -> tuple[str, str]:
    if dialect is Dialect.ANTHROPIC:
        return "request-id", "req_011" + os.urandom(12).hex()
    if dialect is Dialect.OPENAI:
        return "x-request-id", "req_" + os.urandom(16).hex()
    return "x-goog-request-id", os.urandom(8).hex()


# -- serving in a background thread ----------------------------------------------------------------


class BackgroundServer:
    """An aiohttp application served on 127.0.0.1 from a thread with its own event loop."""

    def __init__(self, app: web.Application, *, shutdown_timeout: float = 0.2) -> None:
        self.app = app
        self.port = 0
        self._shutdown_timeout = shutdown_timeout
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._start())
            except BaseException as exc:  # handed to the starting thread
                failure.append(exc)
                return
            finally:
                ready.set()
            self._loop.run_forever()
            self._drain()

        self._thread = threading.Thread(target=run, name="mock-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the mock upstream did not start within 10 s")
        if failure:
            raise failure[0]

    async def _start(self) -> None:
        self._runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=self._shutdown_timeout
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def _drain(self) -> None:
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve(app: web.Application) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 for the duration of the block; yields its base URL."""
    with BackgroundServer(app) as server:
        yield server.url


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP reset instead of an orderly close."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# -- the mock --------------------------------------------------------------------------------------


class MockUpstream:
    """A mock of the three providers' APIs; see the module docstring for scenarios."""

    def __init__(
        self,
        *,
        prefix: str = "",
        scenario: str = "",
        credentials: Mapping[str, str] | None = None,
        models: tuple[str, ...] = DEFAULT_MODELS,
    ) -> None:
        self.prefix = prefix.rstrip("/")
        """Routes are served only under this path prefix (``/api``), so a forgotten prefix is a 404."""
        self.scenario = scenario
        """Scenario applied to every request, before the request's own ``x-mock-scenario``."""
        self.credentials: dict[str, str] = dict(credentials or {})
        """Expected credential per style (``bearer``, ``x-api-key``, ``x-goog-api-key``); a request
        must present one of them. Empty: any credential, or none, is accepted."""
        self.models = models
        self.exchanges: list[Exchange] = []
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = BackgroundServer(app)

    @property
    def base_url(self) -> str:
        return self._server.url + self.prefix

    @property
    def requests(self) -> list[RecordedRequest]:
        return [exchange.request for exchange in self.exchanges]

    @property
    def responses(self) -> list[bytes]:
        """The body bytes sent for each request, in the order of ``requests``."""
        return [bytes(exchange.body) for exchange in self.exchanges]

    @property
    def cancelled(self) -> int:
        """How many requests' clients went away before their answer was complete."""
        return sum(exchange.cancelled for exchange in self.exchanges)

    def expect_credential(self, style: str, value: str) -> None:
        if style not in CREDENTIAL_STYLES:
            raise ValueError(f"unknown credential style {style!r}")
        self.credentials[style] = value

    def reset(self) -> None:
        """Forget recorded exchanges, the global scenario and the expected credentials."""
        self.exchanges = []
        self.scenario = ""
        self.credentials = {}

    def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``condition()`` holds; raises AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"mock upstream: condition not met within {timeout} s")
            time.sleep(0.005)

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> MockUpstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling --------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = [(key.decode("latin-1"), value.decode("latin-1")) for key, value in request.raw_headers]
        recorded = RecordedRequest(
            request.method,
            request.raw_path.partition("?")[0],
            request.rel_url.raw_query_string,
            headers,
            body,
        )
        exchange = Exchange(recorded)
        self.exchanges.append(exchange)
        try:
            return await self._answer(request, exchange)
        except asyncio.CancelledError:
            exchange.cancelled = not (exchange.complete or exchange.reset)
            raise
        except ConnectionResetError:
            exchange.cancelled = not (exchange.complete or exchange.reset)
            return web.Response(status=499)

    async def _answer(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        path = request.path
        local = path[len(self.prefix) :] if path.startswith(self.prefix + "/") else None
        found = (
            route(request.method, local, request.headers, request.query_string) if local is not None else None
        )
        call = _Call(request, exchange, found.dialect if found else path_dialect(local or path))
        try:
            call.scenario = parse_scenario(self.scenario, request.headers.get("x-mock-scenario", ""))
        except ValueError as exc:
            return await self._send(call, 400, call.error(400, f"mock: {exc}"))
        scenario = call.scenario
        if scenario.garbage:
            assert request.transport is not None
            request.transport.write(GARBAGE)
            exchange.body += GARBAGE
            exchange.reset = True
            request.transport.close()
            return web.Response()
        if scenario.first_byte_delay:
            await asyncio.sleep(scenario.first_byte_delay / 1000)
        if scenario.hang:
            await asyncio.Event().wait()
        if found is None:
            return await self._send(call, 404, call.error(404, f"Invalid URL ({request.method} {path})"))
        refusal = self._check_credential(call)
        if refusal is not None:
            return await self._send(call, *refusal)
        if scenario.error is not None:
            return await self._send(call, scenario.error, call.error(scenario.error))
        if found.operation is None:
            return await self._send(call, 200, model_list(call.dialect, self.models))
        try:
            payload = orjson.loads(exchange.request.body)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return await self._send(call, 400, call.error(400, "The request body is not a JSON object."))
        answer = demo_answer(
            found.operation,
            found.model or str(payload.get("model", "")),
            payload,
            stream=payload.get("stream") is True,
            query=request.query_string,
            options=scenario.demo_options(),
        )
        if answer.chunks:
            return await self._stream(call, answer)
        return await self._send(call, answer.status, answer.body, answer.content_type)

    def _check_credential(self, call: _Call) -> tuple[int, bytes] | None:
        if not self.credentials:
            return None
        headers = call.request.headers
        presented = {
            "bearer": headers.get("authorization", "").removeprefix("Bearer "),
            "x-api-key": headers.get("x-api-key", ""),
            "x-goog-api-key": headers.get("x-goog-api-key", ""),
        }
        if any(presented.get(style) == value for style, value in self.credentials.items()):
            return None
        # The messages never repeat the presented key: tests grep bodies for leaked secrets.
        if call.dialect is Dialect.GEMINI:
            return _gemini_key_error(any(presented.values()))
        return 401, call.error(401, "invalid x-api-key" if call.dialect is Dialect.ANTHROPIC else None)

    async def _send(
        self, call: _Call, status: int, body: bytes, content_type: str = "application/json"
    ) -> web.StreamResponse:
        headers = call.headers(status, content_type)
        if call.scenario.gzip:
            body, headers["content-encoding"] = gzip.compress(body), "gzip"
        elif call.scenario.br:
            body, headers["content-encoding"] = brotli.compress(body), "br"
        response = await call.prepare(status, headers, len(body))
        if call.scenario.die_after is not None:
            body = body[: call.scenario.die_after]
        await response.write(body)
        call.exchange.body += body
        if call.scenario.die_after is not None:
            return await self._die(call, response)
        await response.write_eof()
        call.exchange.complete = True
        return response

    async def _stream(self, call: _Call, answer: DemoAnswer) -> web.StreamResponse:
        headers = call.headers(answer.status, answer.content_type)
        headers["cache-control"] = "no-cache"
        response = await call.prepare(answer.status, headers)
        for number, chunk in enumerate(answer.chunks):
            if number == call.scenario.die_after:
                return await self._die(call, response)
            if number and call.scenario.chunk_delay:
                await asyncio.sleep(call.scenario.chunk_delay / 1000)
            await response.write(chunk)
            call.exchange.body += chunk
        await response.write_eof()
        call.exchange.complete = True
        return response

    async def _die(self, call: _Call, response: web.StreamResponse) -> web.StreamResponse:
        # Give the client a moment to read what was sent: a reset can discard unread data.
        await asyncio.sleep(0.05)
        call.exchange.reset = True
        _reset(call.request)
        return response


@dataclass
class _Call:
    """One request being answered."""

    request: web.Request
    exchange: Exchange
    dialect: Dialect
    scenario: Scenario = field(default_factory=Scenario)
    request_id: tuple[str, str] = ("", "")

    def __post_init__(self) -> None:
        self.request_id = _request_id(self.dialect)

    def error(self, status: int, message: str | None = None) -> bytes:
        return error_body(self.dialect, status, message, request_id=self.request_id[1])

    def headers(self, status: int, content_type: str) -> dict[str, str]:
        headers = {"content-type": content_type, self.request_id[0]: self.request_id[1]}
        retry_after = self.scenario.retry_after
        if status in (429, 503, 529) or retry_after is not None:
            headers["retry-after"] = str(1 if retry_after is None else retry_after)
        return headers

    async def prepare(
        self, status: int, headers: dict[str, str], length: int | None = None
    ) -> web.StreamResponse:
        """Send the status line and headers, and record them on the exchange."""
        response = web.StreamResponse(status=status, headers=headers)
        if length is not None:
            response.content_length = length
        self.exchange.status, self.exchange.headers = status, list(headers.items())
        await response.prepare(self.request)
        return response


@pytest.fixture
def mock_upstream() -> Iterator[MockUpstream]:
    """A running :class:`MockUpstream` at the root path, fresh for each test."""
    with MockUpstream() as mock:
        yield mock
