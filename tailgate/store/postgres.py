"""The shared store: PostgreSQL, for several gateway processes or machines on one database."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from tailgate.store.base import Row
from tailgate.store.migrations import Backend
from tailgate.store.serialize import RECORD_COLUMNS
from tailgate.store.sql import SQLStore, Tx

R = TypeVar("R")

_INT = {"stream", "status", "usage_partial"}
_BIGINT = {"ts_ms", "duration_us", "ttfb_us", "cost_nd", "tool_calls", "web_search_requests"} | {
    c for c in RECORD_COLUMNS if c.endswith("_tokens")
}


def _array_type(column: str) -> str:
    if column in _BIGINT:
        return "bigint[]"
    if column in _INT:
        return "integer[]"
    return "text[]"


# One statement for a whole batch: each column travels as one array parameter.
_INSERT_RECORDS = (
    f"INSERT INTO records ({', '.join(RECORD_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"%s::{_array_type(c)}" for c in RECORD_COLUMNS)
    + ") ON CONFLICT (id) DO NOTHING RETURNING id"
)
_PLACEHOLDER = re.compile(r"\?")
_MIGRATION_LOCK = 0x7461696C67617465  # "tailgate"


def _pg(sql: str) -> str:
    # Store SQL has no literal '?' or '%' (checked here), so the rewrite is exact.
    if "%" in sql:
        raise ValueError("store SQL must not contain '%'")
    return _PLACEHOLDER.sub("%s", sql)


class _PostgresTx:
    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = self.conn.execute(_pg(sql), params)
        return cur.fetchall() if cur.description is not None else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(_pg(sql), rows)


class PostgresStore(SQLStore):
    """A PostgreSQL database reached through a small connection pool.

    The URL is a libpq URL; a schema other than ``public`` is chosen with
    ``?options=-csearch_path%3Dname``.
    """

    backend: Backend = "postgres"
    least = "LEAST"
    greatest = "GREATEST"
    iso_day = "to_char(DATE '1970-01-01' + day, 'YYYY-MM-DD')"

    def __init__(
        self, url: str, *, pool_size: int = 8, timeout: float = 10.0, connect_timeout: int = 5
    ) -> None:
        self.url = url
        self._purged = 0
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=timeout,
            # A connection broken while idle (server restart, network drop) is replaced on checkout.
            check=ConnectionPool.check_connection,
            kwargs={
                "connect_timeout": connect_timeout,
                # Without it a dead peer can hang a write for the kernel's full TCP timeout.
                "tcp_user_timeout": connect_timeout * 2000,
                "application_name": "tailgate",
            },
            open=True,
            name="tailgate-store",
        )

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._pool.connection() as conn:
            return _PostgresTx(conn).execute(sql, params)

    def transaction(self, work: Callable[[Tx], R]) -> R:
        with self._pool.connection() as conn, conn.transaction():
            return work(_PostgresTx(conn))

    def _insert_new(self, tx: Tx, rows: list[Row]) -> set[str]:
        assert isinstance(tx, _PostgresTx)
        columns = [list(col) for col in zip(*rows, strict=True)]
        cur = tx.conn.execute(_INSERT_RECORDS, columns)
        return {row[0] for row in cur.fetchall()}

    def _lock_migrations(self, tx: Tx) -> None:
        tx.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")

    def _after_purge(self, deleted: int, batch_size: int) -> None:
        # At the end of a purge run, make the freed space (TOAST included) reusable at once,
        # rather than waiting for autovacuum, so the capture tables do not keep growing.
        self._purged += deleted
        if self._purged and deleted < batch_size:
            self._purged = 0
            with self._pool.connection() as conn:
                conn.autocommit = True
                try:
                    conn.execute("VACUUM capture_bodies, capture_tools")
                finally:
                    conn.autocommit = False

    def close(self) -> None:
        self._pool.close()
