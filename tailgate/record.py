"""One record per request: what was asked, by whom, what came back, what it cost.

Every request that reaches the gateway ends in exactly one :class:`Record` with an
:class:`Outcome`, whether it was served, refused, failed upstream or abandoned by its client.
"""

from __future__ import annotations

import enum
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

from tailgate.usage import Usage


class Outcome(enum.StrEnum):
    OK = "ok"
    """The upstream answered 2xx and the answer reached the client whole."""
    UPSTREAM_ERROR = "upstream_error"
    """The upstream answered with an error status; its body was relayed unchanged."""
    DENIED = "denied"
    """Refused by the gateway: unknown caller, no role, model not granted (401/403)."""
    QUOTA_EXCEEDED = "quota_exceeded"
    """Refused by the gateway: a quota bucket was empty (429)."""
    INVALID = "invalid"
    """Refused by the gateway: bad input, unknown model or path, body too large (4xx)."""
    UPSTREAM_FAILED = "upstream_failed"
    """The upstream could not be reached, timed out, sent garbage or died mid-stream."""
    CLIENT_DISCONNECTED = "client_disconnected"
    """The client went away before the answer was complete; the upstream call was cancelled."""
    ERROR = "error"
    """A failure inside the gateway itself."""


@dataclass(slots=True)
class Capture:
    """The full exchange, with credentials redacted and bodies decoded."""

    request_headers: list[tuple[str, str]] = field(default_factory=list)
    request_body: bytes = b""
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: bytes = b""
    """Decoded (gzip/deflate/br removed). For a stream, the raw events as received."""
    reassembled: dict[str, Any] | None = None
    """For a stream: the final response object, as if the call had not streamed."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """``[{"name": …, "params": {…}}]`` extracted from the answer."""


@dataclass(slots=True)
class Record:
    id: str
    ts_ms: int
    """When the request arrived, epoch milliseconds UTC."""
    principal: str
    identity_kind: str = ""
    identity_source: str = ""
    node_id: str | None = None
    tags: str = ""
    """Comma-joined sorted tags, empty for user nodes."""
    display_name: str | None = None
    method: str = "POST"
    path: str = ""
    """The request path with credentials (``?key=``) removed."""
    dialect: str = ""
    operation: str = ""
    provider: str | None = None
    model: str | None = None
    stream: bool = False
    status: int = 0
    outcome: Outcome = Outcome.OK
    error: str | None = None
    duration_us: int = 0
    ttfb_us: int | None = None
    """Microseconds from arrival to the first response byte sent to the client."""
    usage: Usage | None = None
    cost_nd: int | None = None
    """Nanodollars; ``None`` when the model has no price (shown as unpriced, never $0)."""
    cost_basis: str | None = None
    price_version: str | None = None
    session_id: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    """The upstream's request id header, when it sent one."""
    capture: Capture | None = None


_random = random.Random(os.urandom(16))
_last = [0, 0]  # the last id's milliseconds and random part


def _reseed() -> None:
    # Forked workers must not share a sequence (same millisecond + same bits = same id).
    _random.seed(os.urandom(16))
    _last[:] = [0, 0]


os.register_at_fork(after_in_child=_reseed)


def new_record_id(now_ms: int | None = None) -> str:
    """A 26-character id: 12 hex digits of milliseconds, then 14 of a random part.

    Ids increase strictly within a process (a second id in the same millisecond takes the
    previous random part plus one), so they sort in arrival order. They need to be unique, not
    unpredictable: a generator seeded once per process avoids a system call per request.
    """
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    last_ms, last_rand = _last
    if now_ms <= last_ms:
        now_ms, rand = last_ms, last_rand + 1
    else:
        rand = _random.getrandbits(55)  # leaves room to count up within a millisecond
    _last[0], _last[1] = now_ms, rand
    return f"{now_ms:012x}{rand:014x}"
