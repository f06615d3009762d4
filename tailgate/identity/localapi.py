"""A small async client for tailscaled's LocalAPI on its Unix socket: WhoIs and the node's own id.

Every failure to get an answer (socket absent, connection refused, timeout, 400/403/500,
unreadable body) raises :class:`~tailgate.errors.IdentityUnavailable`: the gateway fails
closed rather than guess who is calling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import httptools
import orjson

from tailgate.errors import IdentityUnavailable

log = logging.getLogger(__name__)

LOCALAPI_HOST = "local-tailscaled.sock"
MAX_BODY_BYTES = 8 * 1024 * 1024

# Only root-owned locations are probed; sockets under /tmp (the container image's and QNAP's
# defaults) could be planted by any local user, so they must be configured explicitly.
DEFAULT_SOCKETS: Mapping[str, tuple[str, ...]] = {
    "linux": (
        "/var/run/tailscale/tailscaled.sock",
        "/run/tailscale/tailscaled.sock",
        "/var/packages/Tailscale/var/tailscaled.sock",
        "/var/packages/Tailscale/etc/tailscaled.sock",
        "/perm/tailscaled/tailscaled.sock",
    ),
    "darwin": ("/var/run/tailscaled.socket", "/var/run/tailscale/tailscaled.sock"),
    "freebsd": ("/var/run/tailscale/tailscaled.sock",),
    "openbsd": ("/var/run/tailscale/tailscaled.sock",),
}


def configured_socket(configured: str | None, environ: Mapping[str, str]) -> str | None:
    """The socket the operator named: the config's ``tailscale_socket``, else ``$TS_SOCKET``."""
    return configured or environ.get("TS_SOCKET") or None


def discover_socket(platform: str = sys.platform, exists: Callable[[str], bool] | None = None) -> str | None:
    """The first default tailscaled socket for ``platform`` that exists, or ``None``."""
    probe = exists or _is_socket
    key = "freebsd" if platform.startswith("freebsd") else platform
    for path in DEFAULT_SOCKETS.get(key, ()):
        if probe(path):
            return path
    return None


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class _Response:
    """httptools callbacks collecting one response."""

    __slots__ = ("body", "complete", "headers_done", "keep_alive", "parser", "size")

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.size = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # Read now: once the message is complete the parser has already reset this.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size <= MAX_BODY_BYTES:
            self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.complete = True


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class LocalAPI:
    """tailscaled's LocalAPI over a Unix socket, with a few kept-alive connections."""

    def __init__(self, socket_path: str, *, timeout: float = 2.0, max_idle: int = 4) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._max_idle = max_idle
        self._idle: list[_Conn] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def whois(self, addr: str, *, proto: str | None = "tcp") -> dict[str, Any] | None:
        """The WhoIs answer for ``addr`` (``IP``, ``IP:port`` or ``[v6]:port``); ``None`` on 404."""
        query = {"addr": addr}
        if proto is not None:
            query["proto"] = proto
        status, body = await self._get("/localapi/v0/whois?" + urllib.parse.urlencode(query))
        if status == 404:
            return None
        return self._json(status, body, "WhoIs")

    async def self_node_id(self) -> str:
        """The StableID of the node tailscaled runs as (``Self.ID`` in the status without peers)."""
        status, body = await self._get("/localapi/v0/status?peers=false")
        answer = self._json(status, body, "status")
        node = answer.get("Self")
        node_id = node.get("ID") if isinstance(node, dict) else None
        if not isinstance(node_id, str) or not node_id:
            raise IdentityUnavailable("tailscaled is not logged in to a tailnet (its status has no Self.ID)")
        return node_id

    async def aclose(self) -> None:
        """Close the kept-alive connections."""
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
        for _, writer in idle:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _json(self, status: int, body: bytes, what: str) -> dict[str, Any]:
        if status != 200:
            # The body is tailscaled's one-line plain-text reason ("whois access denied" …).
            reason = body[:200].decode("utf-8", "replace").strip()
            raise IdentityUnavailable(
                f"cannot identify the caller: tailscaled answered {what} with {status} {reason}".rstrip()
            )
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise IdentityUnavailable(
                f"cannot identify the caller: tailscaled sent unreadable {what} JSON"
            ) from None
        if not isinstance(answer, dict):
            raise IdentityUnavailable(f"cannot identify the caller: tailscaled sent unexpected {what} JSON")
        return answer

    async def _get(self, target: str) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._exchange(target)
        except TimeoutError:
            raise IdentityUnavailable(
                f"cannot identify the caller: tailscaled did not answer within {self.timeout:g}s"
            ) from None
        except (OSError, httptools.HttpParserError) as exc:
            raise IdentityUnavailable(
                f"cannot identify the caller: tailscaled's LocalAPI at {self.socket_path} "
                f"is unreachable ({exc.__class__.__name__})"
            ) from None

    async def _exchange(self, target: str) -> tuple[int, bytes]:
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {LOCALAPI_HOST}\r\nAccept: application/json\r\n\r\n"
        ).encode("ascii")
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._roundtrip(conn, request)
            except (OSError, _StaleConnection):
                pass  # the daemon closed a kept-alive connection; retry once on a fresh one
        conn = await asyncio.open_unix_connection(self.socket_path)
        try:
            return await self._roundtrip(conn, request)
        except _StaleConnection:
            raise ConnectionResetError("connection closed before any answer") from None

    async def _roundtrip(self, conn: _Conn, request: bytes) -> tuple[int, bytes]:
        reader, writer = conn
        done = False
        try:
            writer.write(request)
            await writer.drain()
            response = _Response()
            parser = response.parser
            received = False
            while not response.complete:
                chunk = await reader.read(65536)
                if not chunk:
                    if not received:
                        raise _StaleConnection
                    if response.headers_done and not response.keep_alive:
                        break  # body delimited by the connection closing
                    raise ConnectionResetError("tailscaled closed the connection mid-answer")
                received = True
                parser.feed_data(chunk)
                if response.size > MAX_BODY_BYTES:
                    raise ConnectionResetError("tailscaled sent an oversized answer")
            status = parser.get_status_code()
            keep = response.complete and response.keep_alive
            done = True
            if keep:
                self._give_back(conn)
            else:
                writer.close()
            return status, b"".join(response.body)
        finally:
            if not done:
                writer.close()

    def _take_idle(self) -> _Conn | None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Connections belong to the loop that opened them.
            self._idle.clear()
            self._loop = loop
        while self._idle:
            conn = self._idle.pop()
            if not conn[0].at_eof():
                return conn
            conn[1].close()
        return None

    def _give_back(self, conn: _Conn) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn[1].close()


class _StaleConnection(Exception):
    """A kept-alive connection was closed before it sent any byte of the answer."""
