"""A fake tailscaled LocalAPI on a Unix socket, serving WhoIs answers from JSON fixtures.

It checks what tailscaled checks (``Host``, no ``Origin``/``Referer``, a valid ``addr``), looks an
address up as ``ip:port`` first and then as the bare IP (as the ProxyMapper does for netstack
forwards), and answers 404 ``no match for IP:port`` otherwise. It runs its own event loop in a
background thread, so sync tests use it as a context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "whois"
SELF_ID = "nSelf01CNTRL"


def fixture(name: str) -> dict[str, Any]:
    """The WhoIs answer in ``tests/fixtures/whois/<name>.json``."""
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return loaded


@dataclass
class SeenRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeLocalAPI:
    answers: Mapping[str, str | dict[str, Any]] = field(default_factory=dict)
    """``ip:port`` or ``ip`` → fixture name or a WhoIs answer."""
    self_id: str = SELF_ID
    chunked: bool = False
    """Send 200 bodies with ``Transfer-Encoding: chunked`` in small chunks."""
    delay: float = 0.0
    """Seconds to wait before answering (timeout tests)."""
    fail_status: int | None = None
    """Answer every request with this status (500 ``server has no local backend``, 403 …)."""
    close_idle: bool = False
    """Close each connection after one answer (``Connection: close``)."""
    requests: list[SeenRequest] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="tsfake-", dir="/tmp")
        self.socket_path = os.path.join(self._dir, "tailscaled.sock")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> FakeLocalAPI:
        self._thread.start()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def start(self) -> None:
        """Listen on :attr:`socket_path` (again)."""
        self._run(self._start())

    def stop(self) -> None:
        """Stop listening, drop open connections and remove the socket: the daemon is down."""
        self._run(self._stop())

    def whois_requests(self) -> list[SeenRequest]:
        return [r for r in self.requests if r.path == "/localapi/v0/whois"]

    def _run(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=5)

    async def _start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.socket_path)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                status, body, content_type = self._answer(head)
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(self._response(status, body, content_type))
                await writer.drain()
                if self.close_idle:
                    return
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    def _answer(self, head: bytes) -> tuple[int, bytes, str]:
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        url = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.requests.append(SeenRequest(method, url.path, query, headers))
        if headers.get("host", "") not in ("", "local-tailscaled.sock") or (
            "origin" in headers or "referer" in headers
        ):
            return 403, b"invalid localapi request\n", "text/plain"
        if self.fail_status is not None:
            reasons = {500: b"server has no local backend\n", 403: b"whois access denied\n"}
            return self.fail_status, reasons.get(self.fail_status, b"failed\n"), "text/plain"
        if method != "GET":
            return 405, b"want GET\n", "text/plain"
        if url.path == "/localapi/v0/status":
            return (
                200,
                json.dumps({"Self": {"ID": self.self_id, "HostName": "ai"}}).encode(),
                "application/json",
            )
        if url.path != "/localapi/v0/whois":
            return 404, b"404 page not found\n", "text/plain"
        addr = query.get("addr")
        if not addr:
            return 400, b"missing 'addr' parameter\n", "text/plain"
        bare = _bare_ip(addr)
        if bare is None:
            return 400, b"invalid 'addr' parameter\n", "text/plain"
        found = self.answers.get(addr, self.answers.get(bare))
        if found is None:
            return 404, b"no match for IP:port\n", "text/plain"
        answer = fixture(found) if isinstance(found, str) else found
        return 200, json.dumps(answer, indent="\t").encode(), "application/json"

    def _response(self, status: int, body: bytes, content_type: str) -> bytes:
        head = f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nTailscale-Version: 1.103.0\r\n"
        if self.close_idle:
            head += "Connection: close\r\n"
        if self.chunked and status == 200:
            pieces = [body[i : i + 700] for i in range(0, len(body), 700)]
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
            return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
        return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _bare_ip(addr: str) -> str | None:
    """The IP in ``IP``, ``IP:port`` or ``[v6]:port``; ``None`` if invalid (as tailscaled's parser)."""
    text = addr
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not port.isdigit():
            return None
        text = host
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
