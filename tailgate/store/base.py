"""The request log store: one narrow, synchronous interface with a SQLite and a PostgreSQL backend.

Methods are blocking; the gateway calls them from worker threads, never on the event loop.
Every read takes an optional ``scope``: a principal the caller is restricted to (a non-admin
sees only their own data). A record that exists outside the scope is reported as not found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Generic, Literal, Protocol, TypeVar

from tailgate.config.model import Retention
from tailgate.identity.keys import KeyStore
from tailgate.record import Record

T = TypeVar("T")
R = TypeVar("R")
Row = tuple[Any, ...]

UsageDimension = Literal["day", "principal", "provider", "model"]
USAGE_DIMENSIONS: tuple[UsageDimension, ...] = ("day", "principal", "provider", "model")
UsageOrder = Literal["key", "cost", "tokens", "requests"]


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Conditions on the request log; ``None`` means "any". Times are epoch ms UTC, ``until`` exclusive."""

    principal: str | None = None
    model: str | None = None
    provider: str | None = None
    status: int | None = None
    outcome: str | None = None
    session: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """Sessions of ``principal`` active in ``[since_ms, until_ms)``; ``None`` means "any"."""

    principal: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """A range of UTC days (both ends inclusive) and optional dimension values."""

    since: date | None = None
    until: date | None = None
    principal: str | None = None
    provider: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a newest-first listing; ``next_cursor`` is ``None`` on the last page."""

    items: list[T]
    next_cursor: str | None


@dataclass(slots=True)
class Totals:
    """Counters summed over a group of records. ``cost_nd`` covers priced requests only."""

    requests: int = 0
    errors: int = 0
    """Requests whose outcome was not ``ok``."""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    tool_calls: int = 0
    web_search_requests: int = 0
    cost_nd: int = 0
    unpriced: int = 0
    """Requests with usage but no price: their cost is unknown, not zero."""
    duration_us: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class UsageRow:
    """Totals for one combination of the requested dimensions; the others are ``None``."""

    totals: Totals
    day: date | None = None
    principal: str | None = None
    provider: str | None = None
    model: str | None = None


@dataclass(slots=True)
class SessionSummary:
    session_id: str
    principal: str
    first_ts_ms: int
    last_ts_ms: int
    totals: Totals
    last_model: str | None = None
    user_agent: str | None = None


USAGE_ROW_COLUMNS = (
    "day",
    "principal",
    "provider",
    "model",
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_nd",
    "unpriced",
)
"""The columns of :meth:`Store.usage_rows`: ``day`` is ISO text (``2026-01-31``), ``provider`` and
``model`` are ``""`` when the requests had none, the rest are integers."""


class Tx(Protocol):
    """One open transaction (or autocommit connection) of a backend; ``?`` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Store(KeyStore, Protocol):
    """The request log, roll-ups, sessions and gateway API keys."""

    url: str
    """Where the data is (a SQLite path or a PostgreSQL URL): what another process opens."""

    def transaction(self, work: Callable[[Tx], R]) -> R:
        """Run ``work`` in one write transaction, committed if it returns, rolled back if it raises.

        Within one process, write transactions on a SQLite file run one at a time.
        """
        ...

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of one read-only statement, outside any transaction."""
        ...

    def migrate(self, upto: str | None = None) -> list[str]:
        """Apply pending migrations (through ``upto`` when given); return the names applied."""
        ...

    def applied_migrations(self) -> list[str]:
        """Names of the migrations applied to this database, in order."""
        ...

    def insert_records(self, records: Iterable[Record]) -> int:
        """Store records with their captures; idempotent on ``id``. Return how many were new."""
        ...

    def list_records(
        self, filters: RecordFilter, *, limit: int = 50, cursor: str | None = None, scope: str | None = None
    ) -> Page[Record]:
        """Records matching ``filters``, newest first, without captures."""
        ...

    def get_record(self, record_id: str, *, scope: str | None = None) -> Record:
        """One record with its capture (``None`` once purged); raises ``NotFound``."""
        ...

    def list_sessions(
        self, filters: SessionFilter, *, limit: int = 50, cursor: str | None = None, scope: str | None = None
    ) -> Page[SessionSummary]:
        """Sessions, most recently active first, with their totals."""
        ...

    def usage(
        self,
        query: UsageQuery,
        by: Sequence[UsageDimension],
        *,
        order: UsageOrder = "key",
        limit: int | None = None,
        scope: str | None = None,
    ) -> list[UsageRow]:
        """Totals grouped by ``by`` (read from the daily roll-ups, never the raw log).

        ``order="key"`` sorts by the dimensions ascending; the others sort by that total, largest first.
        """
        ...

    def active_principals(self, query: UsageQuery, *, scope: str | None = None) -> list[tuple[date, int]]:
        """How many distinct principals made requests, per UTC day, oldest day first."""
        ...

    def usage_rows(self, query: UsageQuery, *, scope: str | None = None) -> list[Row]:
        """One tuple of :data:`USAGE_ROW_COLUMNS` per day, principal, provider and model, for exports.

        Ordered by day, principal, model, provider (the roll-ups' key, so nothing is sorted);
        plain tuples, no object per row.
        """
        ...

    def purge(self, retention: Retention, now_ms: int, *, batch_size: int = 1000) -> int:
        """Delete one batch of captures older than the retention window; return how many went.

        Metric records, roll-ups and sessions are always kept. Call again until it returns 0.
        ``require_export`` keeps every capture: there is no exporter yet, so none is exported.
        """
        ...

    def close(self) -> None: ...
