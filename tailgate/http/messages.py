"""Request and response values exchanged between the HTTP server and the gateway's handlers.

Header names are lower-case ``bytes``; values are ``bytes`` as received. Handlers that only answer
with a complete body return a :class:`Response`; the proxy writes to the connection itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import orjson

from tailgate.errors import BadRequest

if TYPE_CHECKING:
    from tailgate.http.server import Connection

Headers = list[tuple[bytes, bytes]]


class Request:
    __slots__ = (
        "_query",
        "body",
        "conn",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query_string",
        "target",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: Headers,
        body: bytes,
        conn: Connection,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.target = target
        path, _, query = target.partition(b"?")
        raw_path = path.decode("latin-1")
        self.path = unquote(raw_path) if "%" in raw_path else raw_path
        self.query_string = query.decode("latin-1")
        self.headers = headers
        self.body = body
        self.conn = conn
        self.keep_alive = keep_alive
        self._query: dict[str, list[str]] | None = None

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_str(self, name: bytes) -> str | None:
        value = self.header(name)
        return None if value is None else value.decode("latin-1")

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_qs(self.query_string, keep_blank_values=True)
        return self._query

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def cookies(self) -> dict[str, str]:
        jar: dict[str, str] = {}
        raw = self.header_str(b"cookie")
        if raw:
            for part in raw.split(";"):
                key, sep, value = part.strip().partition("=")
                if sep:
                    jar[key] = value
        return jar


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object, parsed; ``BadRequest`` in plain words if not."""
    if not raw:
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


class HeaderView(Mapping[str, str]):
    """A request's headers as a read-only ``str`` mapping, decoded only when looked up.

    Lower-case names; the first value of a repeated header. Identity looks at a handful of
    headers per request, so decoding all of them up front is wasted work.
    """

    __slots__ = ("_headers",)

    def __init__(self, headers: Headers) -> None:
        self._headers = headers

    def __getitem__(self, name: str) -> str:
        key = name.encode("latin-1")
        for header, value in self._headers:
            if header == key:
                return value.decode("latin-1")
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.encode("latin-1")
        return any(header == key for header, _ in self._headers)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(header.decode("latin-1") for header, _ in self._headers))

    def __len__(self) -> int:
        return len({header for header, _ in self._headers})


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: Headers | None = None,
        content_type: bytes | None = b"application/json",
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else []
        if content_type is not None:
            self.headers.append((b"content-type", content_type))

    @classmethod
    def json(cls, value: object, status: int = 200, headers: Headers | None = None) -> Response:
        return cls(status, orjson.dumps(value), headers)

    @classmethod
    def html(cls, text: str, status: int = 200, headers: Headers | None = None) -> Response:
        return cls(status, text.encode(), headers, b"text/html; charset=utf-8")

    @classmethod
    def text(cls, text: str, status: int = 200, headers: Headers | None = None) -> Response:
        return cls(status, text.encode(), headers, b"text/plain; charset=utf-8")

    @classmethod
    def redirect(cls, location: str, status: int = 303) -> Response:
        return cls(status, b"", [(b"location", location.encode())], None)


class StreamingResponse:
    """A response whose body is produced piece by piece (sent with chunked encoding)."""

    __slots__ = ("chunks", "headers", "status")

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status: int = 200,
        headers: Headers | None = None,
        content_type: bytes = b"application/octet-stream",
    ) -> None:
        self.chunks = chunks
        self.status = status
        self.headers = headers if headers is not None else []
        self.headers.append((b"content-type", content_type))
