"""From what the request path saw to what is recorded: usage, cost, quota settlement, capture.

:func:`finalize` runs in the recorder's thread, never on the event loop, so none of this work
(decompression, stream reassembly, pricing) delays a request.
"""

from __future__ import annotations

import logging
import zlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import brotli
import orjson

from tailgate.dialects import OPERATIONS, Operation
from tailgate.record import Capture, Outcome, Record
from tailgate.sessions import session_id
from tailgate.streams import tool_calls
from tailgate.upstream import strip_key_param
from tailgate.usage import Usage, usage_from_response, usage_from_stream

if TYPE_CHECKING:
    from tailgate.proxy import Exchange

log = logging.getLogger("tailgate.metering")

REDACTED = "[redacted]"
_SECRET_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "x-goog-api-key",
        "api-key",
        "cookie",
        "set-cookie",
        "proxy-authorization",
        "cf-aig-authorization",
    }
)
_MAX_DECODED = 64 * 1024 * 1024


def finalize(ex: Exchange) -> Record:
    """The record of one exchange; settles its quota reservation as a side effect."""
    runtime = ex.runtime
    identity = ex.identity
    route = ex.route
    operation = ex.operation
    raw = b"".join(ex.response_chunks)
    encoding = _header(ex.response_headers, b"content-encoding")
    body = _decode(raw, encoding)
    content_type = _header(ex.response_headers, b"content-type") or b""
    is_sse = content_type.startswith(b"text/event-stream")
    streamed = is_sse or operation is Operation.STREAM_GENERATE_CONTENT

    usage: Usage | None = None
    final: dict[str, Any] | None = None
    reassembled: dict[str, Any] | None = None
    if operation is not None and OPERATIONS[operation].metered and route is not None and body:
        try:
            if streamed and 200 <= ex.status < 300:
                usage, result = usage_from_stream(operation, body, sse=is_sse)
                final = reassembled = result.response
            elif 200 <= ex.status < 300:
                parsed = orjson.loads(body)
                if isinstance(parsed, dict):
                    final = parsed
                    usage = usage_from_response(operation, parsed)
        except (orjson.JSONDecodeError, ValueError) as exc:
            log.warning("could not read usage from the %s answer of %s: %s", operation, route.fqn, exc)
        if usage is not None and ex.outcome is not Outcome.OK:
            usage.partial = True

    cost_nd: int | None = None
    cost_basis: str | None = None
    price_version: str | None = None
    if usage is not None and route is not None:
        at = datetime.fromtimestamp(ex.ts_ms / 1000, UTC)
        cost = runtime.prices.cost(route.provider, route.model, usage, at=at)
        cost_nd, cost_basis, price_version = cost.nanodollars, cost.cost_basis, cost.price_version
    if ex.reservation is not None:
        # Served but no usage seen (an OpenAI stream cut before its usage chunk): the cost is
        # unknown, so the reservation stays charged rather than letting the answer go free.
        served_unmetered = usage is None and 200 <= ex.status < 300
        # Not waited for here: the recorder flushes the ledger before it stores the batch.
        runtime.quotas.settle(ex.reservation, None if served_unmetered else (cost_nd or 0), wait=False)

    principal = identity.principal if identity is not None else "(unknown)"
    record = Record(
        id=ex.id,
        ts_ms=ex.ts_ms,
        principal=principal,
        identity_kind=str(identity.kind) if identity else "",
        identity_source=str(identity.source) if identity else "",
        node_id=identity.node_id if identity else None,
        tags=",".join(identity.tags) if identity else "",
        display_name=identity.display_name if identity else None,
        method=ex.method,
        path=capture_path(ex.path, ex.query),
        dialect=str(ex.dialect),
        operation=str(operation) if operation else "",
        provider=route.provider.id if route else None,
        model=route.model if route else _requested_model(ex),
        stream=ex.stream,
        status=ex.status,
        outcome=ex.outcome,
        error=ex.error,
        duration_us=(ex.ended_ns - ex.started_ns) // 1000,
        ttfb_us=(ex.first_byte_ns - ex.started_ns) // 1000 if ex.first_byte_ns else None,
        usage=usage,
        cost_nd=cost_nd,
        cost_basis=cost_basis,
        price_version=price_version,
        session_id=session_id(ex.request_headers, ex.body, principal, ex.id),
        user_agent=ex.user_agent,
        request_id=_upstream_request_id(ex.response_headers),
    )
    retention = runtime.config.database.retention
    if retention.duration != 0:
        calls: list[dict[str, Any]] = []
        if final is not None and operation is not None:
            try:
                calls = tool_calls(operation, final)
            except (TypeError, ValueError, AttributeError):
                calls = []
        record.capture = Capture(
            request_headers=redact_headers(ex.request_headers),
            request_body=ex.forwarded_body if ex.forwarded_body is not None else ex.request_body,
            response_headers=redact_headers(ex.response_headers),
            response_body=body,
            reassembled=reassembled,
            tool_calls=calls,
        )
    return record


def redact_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Headers as text, with every credential replaced by ``[redacted]``."""
    out = []
    for name, value in headers:
        key = name.decode("latin-1")
        out.append((key, REDACTED if key in _SECRET_HEADERS else value.decode("latin-1")))
    return out


def capture_path(path: str, query: str) -> str:
    """The request path and query as stored: credentials (``key=``) removed."""
    query = strip_key_param(query) if query else ""
    return f"{path}?{query}" if query else path


def _decode(raw: bytes, encoding: bytes | None) -> bytes:
    if not raw or not encoding:
        return raw
    kind = encoding.strip().lower()
    try:
        if kind in (b"gzip", b"x-gzip"):
            return zlib.decompressobj(wbits=47).decompress(raw, _MAX_DECODED)
        if kind == b"deflate":
            try:
                return zlib.decompressobj().decompress(raw, _MAX_DECODED)
            except zlib.error:
                return zlib.decompressobj(wbits=-15).decompress(raw, _MAX_DECODED)
        if kind == b"br":
            decoded: bytes = brotli.decompress(raw)
            return decoded
    except (zlib.error, brotli.error) as exc:
        log.warning("could not decode a %s response body: %s", kind.decode(), exc)
    return raw


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _upstream_request_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name in (b"x-request-id", b"request-id"):
        value = _header(headers, name)
        if value:
            return value.decode("latin-1")
    return None


def _requested_model(ex: Exchange) -> str | None:
    if ex.body is not None:
        model = ex.body.get("model")
        if isinstance(model, str):
            return model[:200]
    if ex.operation in (Operation.GENERATE_CONTENT, Operation.STREAM_GENERATE_CONTENT):
        return ex.path.rpartition("/models/")[2].rpartition(":")[0] or None
    return None
