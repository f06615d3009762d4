"""Store test helpers: PostgreSQL on 127.0.0.1:5432 with one schema per test, and the
``store_url`` fixture that runs a test on both backends.

The server is started if it is down; if it still cannot be reached the tests fail, never skip.
Every schema a test run creates shares one prefix and is dropped when the run ends.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from tailgate.record import Capture, Outcome, Record
from tailgate.store import open_store
from tailgate.store.sql import SQLStore
from tailgate.usage import Usage

HOST, PORT, DATABASE = "127.0.0.1", 5432, "test"
_RUN = f"tailgate_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
_counter = iter(range(1_000_000))


def _admin_url(user: str) -> str:
    return f"postgresql://{user}@{HOST}:{PORT}/{DATABASE}"


def _try_connect() -> str | None:
    for user in dict.fromkeys(("postgres", "root", getpass.getuser())):
        try:
            with psycopg.connect(_admin_url(user), connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            return _admin_url(user)
        except psycopg.OperationalError:
            continue
    return None


def _start_server() -> None:
    for version_dir in sorted(glob.glob("/etc/postgresql/*")):
        version = os.path.basename(version_dir)
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
            capture_output=True,
            timeout=60,
        )


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A superuser URL to the ``test`` database; drops this run's schemas at the end."""
    url = _try_connect()
    if url is None:
        _start_server()
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            time.sleep(0.5)
            url = _try_connect()
    if url is None:
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 and could not be started")
    yield url
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (_RUN.replace("_", r"\_") + "%",)
        ).fetchall()
        for (schema,) in rows:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def new_schema_url(admin_url: str, host: str = HOST, port: int = PORT) -> str:
    """A fresh, empty schema of this run, as a store URL (optionally through a proxy)."""
    schema = f"{_RUN}_{next(_counter)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    user = admin_url.split("//", 1)[1].split("@", 1)[0]
    options = quote(f"-csearch_path={schema}")
    return f"postgresql://{user}@{host}:{port}/{DATABASE}?options={options}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A blank database on each backend: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "tailgate.db")
    return new_schema_url(request.getfixturevalue("pg_admin_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[SQLStore]:
    """A migrated store on ``store_url``."""
    s = open_store(store_url)
    assert isinstance(s, SQLStore)
    s.migrate()
    yield s
    s.close()


class TcpProxy:
    """A loopback TCP forwarder that can be cut (refusing and dropping connections) and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening and reset every open connection."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        if listener is not None:
            listener.close()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


PRINCIPALS = ("alice@example.com", "bob@example.com", "tag:ci,tag:prod")
MODELS = (("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4"), ("gemini", "gemini-2.5-pro"))
DAY_MS = 86_400_000


def sample_record(i: int, ts_ms: int, *, prefix: str = "", capture: bool = False) -> Record:
    """A varied, deterministic record: principal, model, status, session and cost follow ``i``."""
    provider, model = MODELS[i % 3]
    failed = i % 7 == 3
    return Record(
        id=f"{prefix}{ts_ms:012x}{i:014x}",
        ts_ms=ts_ms,
        principal=PRINCIPALS[i % len(PRINCIPALS)],
        identity_kind="user",
        identity_source="whois",
        node_id=f"n{i % 4}",
        path="/v1/chat/completions",
        dialect="openai",
        operation="chat",
        provider=provider,
        model=model,
        stream=i % 2 == 0,
        status=502 if failed else 200,
        outcome=Outcome.UPSTREAM_ERROR if failed else Outcome.OK,
        duration_us=1000 + i,
        ttfb_us=None if failed else 300,
        usage=None
        if failed
        else Usage(
            input_tokens=100 + i,
            cache_read_tokens=i % 50,
            cache_write_tokens=i % 11,
            cache_write_5m_tokens=i % 11,
            output_tokens=20 + i % 13,
            reasoning_tokens=i % 5,
            tool_calls=i % 2,
        ),
        cost_nd=None if failed or i % 5 == 4 else 1_000 * (i + 1),
        cost_basis="openai" if i % 5 != 4 else None,
        price_version="0.2.3",
        session_id=f"s{i % 6}",
        user_agent="codex/1.0" if i % 2 else "claude-cli/2.0",
        capture=Capture(
            request_headers=[("content-type", "application/json")],
            request_body=b'{"model": "%d"}' % i,
            response_headers=[("x-request-id", f"r{i}")],
            response_body=bytes(range(256)),
            reassembled={"id": i},
            tool_calls=[{"name": "search", "params": {"q": str(i)}}] if i % 2 else [],
        )
        if capture
        else None,
    )
