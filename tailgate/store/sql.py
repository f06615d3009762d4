"""The store's queries, written once in the SQL both backends share.

A backend supplies connections and transactions (:meth:`SQLStore.read`,
:meth:`SQLStore.transaction`) and the one statement that differs in substance: inserting a batch
of records and telling which ids were new. Statements use ``?`` placeholders; the PostgreSQL
backend rewrites them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, TypeVar

from tailgate.config.model import Retention
from tailgate.errors import BadRequest, NotFound
from tailgate.identity.keys import KeyInfo, mint_key
from tailgate.record import Capture, Record
from tailgate.store import keys
from tailgate.store.base import (
    USAGE_ROW_COLUMNS,
    Page,
    RecordFilter,
    Row,
    SessionFilter,
    SessionSummary,
    Totals,
    Tx,
    UsageDimension,
    UsageOrder,
    UsageQuery,
    UsageRow,
)
from tailgate.store.batch import TOTALS, PreparedBatch, prepare, record_totals
from tailgate.store.migrations import MIGRATIONS as STEPS
from tailgate.store.migrations import Backend, MigrationContext, migration_names
from tailgate.store.serialize import (
    RECORD_COLUMNS,
    date_of,
    day_of,
    decode_bodies,
    decode_cursor,
    decode_tools,
    encode_cursor,
    row_record,
)

__all__ = ["TOTALS", "SQLStore", "Tx", "record_totals"]

log = logging.getLogger(__name__)
R = TypeVar("R")

MAX_PAGE = 1000
_RECORD_SELECT = "SELECT " + ", ".join(RECORD_COLUMNS) + " FROM records"
_ADD_TOTALS = ", ".join(f"{c} = {{t}}.{c} + excluded.{c}" for c in TOTALS)
_SUM_TOTALS = ", ".join(f"SUM({c})" for c in TOTALS)


def _totals(values: Sequence[Any]) -> Totals:
    # SUM over NOT NULL integer columns is an int, or NULL when nothing matched.
    return Totals(*values) if values[0] is not None else Totals()


def _page_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
    return limit


class SQLStore:
    """Everything but connections: subclasses implement ``read``, ``transaction`` and the hooks."""

    backend: Backend
    least = "min"
    greatest = "max"
    iso_day = "date(day * 86400, 'unixepoch')"
    """SQL for a roll-up's ``day`` as ISO text."""

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    def transaction(self, work: Callable[[Tx], R]) -> R:
        raise NotImplementedError

    # The names the quota ledger and older callers use.
    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.read(sql, params)

    def _write(self, work: Callable[[Tx], R]) -> R:
        return self.transaction(work)

    def _insert_new(self, tx: Tx, rows: list[Row]) -> set[str]:
        """Insert the rows whose id is not stored yet; return the ids inserted."""
        raise NotImplementedError

    def _index_hint(self, index: str) -> str:
        """How to make the planner read a listing through ``index`` (nothing when it needs no help)."""
        return ""

    def _lock_migrations(self, tx: Tx) -> None:
        """Serialise concurrent migrators (another process starting at the same time)."""

    def _after_purge(self, deleted: int, batch_size: int) -> None:
        """Give freed space back (or make it reusable) after a purge batch."""

    # -- migrations -----------------------------------------------------------------------

    def migrate(self, upto: str | None = None) -> list[str]:
        names = migration_names()
        if upto is not None and upto not in names:
            raise ValueError(f"unknown migration {upto!r}")
        steps = STEPS[: names.index(upto) + 1] if upto else STEPS

        def work(tx: Tx) -> list[str]:
            self._lock_migrations(tx)
            tx.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at_ms BIGINT)")
            done = {row[0] for row in tx.execute("SELECT name FROM _migrations")}
            ctx = MigrationContext(self.backend, tx.execute)
            applied = []
            for step in steps:
                if step.__name__ in done:
                    continue
                step(ctx)
                tx.execute(
                    "INSERT INTO _migrations (name, applied_at_ms) VALUES (?, ?)",
                    (step.__name__, _now_ms()),
                )
                applied.append(step.__name__)
            return applied

        applied = self.transaction(work)
        if applied:
            log.info("store migrated: %s", ", ".join(applied))
        return applied

    def applied_migrations(self) -> list[str]:
        return [row[0] for row in self.read("SELECT name FROM _migrations ORDER BY name")]

    # -- writes ---------------------------------------------------------------------------

    def insert_records(self, records: Iterable[Record]) -> int:
        batch = prepare(records)  # before the transaction: the write lock is for SQL only
        if not batch.records:
            return 0
        return self.transaction(partial(self._store_batch, batch=batch))

    def _store_batch(self, tx: Tx, batch: PreparedBatch) -> int:
        fresh = batch.only(self._insert_new(tx, batch.rows))
        tx.executemany("INSERT INTO capture_bodies (record_id, ts_ms, data) VALUES (?, ?, ?)", fresh.bodies)
        tx.executemany("INSERT INTO capture_tools (record_id, ts_ms, data) VALUES (?, ?, ?)", fresh.tools)
        tx.executemany(self._rollup_upsert, fresh.rollups)
        tx.executemany(self._session_upsert, fresh.sessions)
        return len(fresh.records)

    @property
    def _rollup_upsert(self) -> str:
        return (
            f"INSERT INTO rollups (day, principal, provider, model, {', '.join(TOTALS)}) "
            f"VALUES ({', '.join('?' * (4 + len(TOTALS)))}) "
            f"ON CONFLICT (day, principal, provider, model) DO UPDATE SET {_ADD_TOTALS.format(t='rollups')}"
        )

    @property
    def _session_upsert(self) -> str:
        return (
            "INSERT INTO sessions (principal, session_id, first_ts_ms, last_ts_ms, last_model, user_agent, "
            f"{', '.join(TOTALS)}) VALUES ({', '.join('?' * (6 + len(TOTALS)))}) "
            "ON CONFLICT (principal, session_id) DO UPDATE SET "
            f"first_ts_ms = {self.least}(sessions.first_ts_ms, excluded.first_ts_ms), "
            f"last_ts_ms = {self.greatest}(sessions.last_ts_ms, excluded.last_ts_ms), "
            "last_model = CASE WHEN excluded.last_ts_ms >= sessions.last_ts_ms "
            "THEN excluded.last_model ELSE sessions.last_model END, "
            "user_agent = CASE WHEN excluded.first_ts_ms < sessions.first_ts_ms "
            "THEN excluded.user_agent ELSE sessions.user_agent END, "
            f"{_ADD_TOTALS.format(t='sessions')}"
        )

    # -- reads ----------------------------------------------------------------------------

    def list_records(
        self, filters: RecordFilter, *, limit: int = 50, cursor: str | None = None, scope: str | None = None
    ) -> Page[Record]:
        limit = _page_limit(limit)
        where, params = _record_conditions(filters, scope)
        if cursor is not None:
            where.append("(ts_ms, id) < (?, ?)")
            params.extend(decode_cursor(cursor, (int, str)))
        hint = self._index_hint(_listing_index(filters, scope))
        sql = f"{_RECORD_SELECT}{hint}{_where(where)} ORDER BY ts_ms DESC, id DESC LIMIT ?"
        rows = self.read(sql, (*params, limit + 1))
        items = [row_record(row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_cursor(items[-1].ts_ms, items[-1].id) if more else None)

    def get_record(self, record_id: str, *, scope: str | None = None) -> Record:
        where, params = ["id = ?"], [record_id]
        if scope is not None:
            where.append("principal = ?")
            params.append(scope)
        rows = self.read(f"{_RECORD_SELECT}{_where(where)}", params)
        if not rows:
            raise NotFound(f"no record {record_id!r}")
        record = row_record(rows[0])
        bodies = self.read("SELECT data FROM capture_bodies WHERE record_id = ?", (record_id,))
        tools = self.read("SELECT data FROM capture_tools WHERE record_id = ?", (record_id,))
        if bodies or tools:
            record.capture = Capture()
            if bodies:
                decode_bodies(bytes(bodies[0][0]), record.capture)
            if tools:
                record.capture.tool_calls = decode_tools(bytes(tools[0][0]))
        return record

    def list_sessions(
        self, filters: SessionFilter, *, limit: int = 50, cursor: str | None = None, scope: str | None = None
    ) -> Page[SessionSummary]:
        limit = _page_limit(limit)
        where, params = _conditions(
            ("principal = ?", filters.principal),
            ("principal = ?", scope),
            ("last_ts_ms >= ?", filters.since_ms),
            ("first_ts_ms < ?", filters.until_ms),
        )
        if cursor is not None:
            where.append("(last_ts_ms, principal, session_id) < (?, ?, ?)")
            params.extend(decode_cursor(cursor, (int, str, str)))
        sql = (
            "SELECT session_id, principal, first_ts_ms, last_ts_ms, last_model, user_agent, "
            f"{', '.join(TOTALS)} FROM sessions{_where(where)} "
            "ORDER BY last_ts_ms DESC, principal DESC, session_id DESC LIMIT ?"
        )
        rows = self.read(sql, (*params, limit + 1))
        items = [
            SessionSummary(
                session_id=row[0],
                principal=row[1],
                first_ts_ms=row[2],
                last_ts_ms=row[3],
                last_model=row[4],
                user_agent=row[5],
                totals=_totals(row[6:]),
            )
            for row in rows[:limit]
        ]
        if len(rows) <= limit:
            return Page(items, None)
        last = items[-1]
        return Page(items, encode_cursor(last.last_ts_ms, last.principal, last.session_id))

    def usage(
        self,
        query: UsageQuery,
        by: Sequence[UsageDimension],
        *,
        order: UsageOrder = "key",
        limit: int | None = None,
        scope: str | None = None,
    ) -> list[UsageRow]:
        dims = list(dict.fromkeys(by))
        if any(d not in ("day", "principal", "provider", "model") for d in dims):
            raise BadRequest(f"cannot group usage by {by!r}")
        where, params = _usage_conditions(query, scope)
        group = f" GROUP BY {', '.join(dims)}" if dims else ""
        keys = ", ".join(dims)
        ordering = {
            "key": keys,
            "cost": "SUM(cost_nd) DESC",
            "tokens": "SUM(input_tokens) + SUM(output_tokens) DESC",
            "requests": "SUM(requests) DESC",
        }[order]
        if order != "key" and keys:
            ordering += f", {keys}"
        sql = f"SELECT {keys + ', ' if keys else ''}{_SUM_TOTALS} FROM rollups{_where(where)}{group}"
        if ordering:
            sql += f" ORDER BY {ordering}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        result = []
        for row in self.read(sql, params):
            totals = _totals(row[len(dims) :])
            if not dims and totals.requests == 0:
                return []
            out = UsageRow(totals)
            for name, value in zip(dims, row, strict=False):
                if name == "day":
                    out.day = date_of(value)
                else:
                    setattr(out, name, value or None)
            result.append(out)
        return result

    def active_principals(self, query: UsageQuery, *, scope: str | None = None) -> list[tuple[date, int]]:
        where, params = _usage_conditions(query, scope)
        sql = f"SELECT day, COUNT(DISTINCT principal) FROM rollups{_where(where)} GROUP BY day ORDER BY day"
        return [(date_of(int(day)), int(n)) for day, n in self.read(sql, params)]

    def usage_rows(self, query: UsageQuery, *, scope: str | None = None) -> list[Row]:
        where, params = _usage_conditions(query, scope)
        # One roll-up row per key already: a range scan in key order, no grouping, no sort.
        sql = (
            f"SELECT {self.iso_day}, {', '.join(USAGE_ROW_COLUMNS[1:])} FROM rollups{_where(where)}"
            " ORDER BY day, principal, model, provider"
        )
        return self.read(sql, params)

    # -- gateway API keys (the KeyStore protocol) -----------------------------------------

    def create_key(
        self, principal: str, *, expires_at: datetime | None, note: str = ""
    ) -> tuple[KeyInfo, str]:
        """Mint a key for ``principal`` and store its hash; return it with the secret (shown once)."""
        info, secret = mint_key(principal, expires_at=expires_at, note=note)
        self.transaction(partial(keys.insert_key, info=info))
        return info, secret

    def list_keys(self) -> list[KeyInfo]:
        return keys.all_keys(_ReadTx(self))

    def revoke_key(self, key_id: str) -> bool:
        return self.transaction(partial(keys.revoke, key_id=key_id, now=datetime.now(UTC)))

    def find_key(self, key_hash: str) -> KeyInfo | None:
        return keys.key_by_hash(_ReadTx(self), key_hash)

    # -- retention ------------------------------------------------------------------------

    def purge(self, retention: Retention, now_ms: int, *, batch_size: int = 1000) -> int:
        # require_export keeps unexported captures; with no exporter, that is all of them.
        if retention.duration is None or retention.require_export:
            return 0
        cutoff = now_ms - retention.duration * 1000
        kinds = (("captures", "capture_bodies"), ("tools", "capture_tools"))
        deleted = 0
        for kind, table in kinds:
            if kind in retention.purge:
                deleted += self.transaction(
                    partial(_purge_batch, table=table, cutoff_ms=cutoff, limit=batch_size)
                )
        self._after_purge(deleted, batch_size)
        return deleted


class _ReadTx:
    """A store's autocommit reads, shaped as a :class:`Tx`."""

    def __init__(self, store: SQLStore) -> None:
        self.execute = store.read

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise TypeError("read-only")


def _purge_batch(tx: Tx, *, table: str, cutoff_ms: int, limit: int) -> int:
    gone = tx.execute(
        f"DELETE FROM {table} WHERE record_id IN "
        f"(SELECT record_id FROM {table} WHERE ts_ms < ? ORDER BY ts_ms LIMIT ?) RETURNING record_id",
        (cutoff_ms, limit),
    )
    return len(gone)


def _where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def _conditions(*pairs: tuple[str, Any]) -> tuple[list[str], list[Any]]:
    """The conditions whose value is given (not ``None``), and their parameters."""
    kept = [(condition, value) for condition, value in pairs if value is not None]
    return [c for c, _ in kept], [v for _, v in kept]


def _listing_index(f: RecordFilter, scope: str | None) -> str:
    """The index that yields a filtered listing already in order, scanning the fewest rows."""
    principal = f.principal or scope
    if f.session is not None:
        return "records_session_id_idx"
    if principal is not None:
        return "records_principal_model_idx" if f.model is not None else "records_principal_idx"
    for column, value in (
        ("model", f.model),
        ("status", f.status),
        ("outcome", f.outcome),
        ("provider", f.provider),
    ):
        if value is not None:
            return f"records_{column}_idx"
    return "records_ts_idx"


def _record_conditions(f: RecordFilter, scope: str | None) -> tuple[list[str], list[Any]]:
    return _conditions(
        ("principal = ?", f.principal),
        ("principal = ?", scope),
        ("model = ?", f.model),
        ("provider = ?", f.provider),
        ("status = ?", f.status),
        ("outcome = ?", f.outcome),
        ("session_id = ?", f.session),
        ("ts_ms >= ?", f.since_ms),
        ("ts_ms < ?", f.until_ms),
    )


def _usage_conditions(q: UsageQuery, scope: str | None) -> tuple[list[str], list[Any]]:
    return _conditions(
        ("day >= ?", day_of(q.since) if q.since else None),
        ("day <= ?", day_of(q.until) if q.until else None),
        ("principal = ?", q.principal),
        ("principal = ?", scope),
        ("provider = ?", q.provider),
        ("model = ?", q.model),
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
