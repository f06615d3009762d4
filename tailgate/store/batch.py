"""A batch of records made ready for the database before its write transaction begins.

Everything that needs only Python (rows, compressed captures, the batch's roll-up and session
sums) is computed here, outside the transaction, so the write lock is held for SQL alone. The
sums assume every record is new; :meth:`PreparedBatch.only` recomputes them for the records
that were, when some of the batch was stored before (a replay).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from tailgate.record import Outcome, Record
from tailgate.store.base import Row
from tailgate.store.serialize import day_number, encode_bodies, encode_tools, record_row

TOTALS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "tool_calls",
    "web_search_requests",
    "cost_nd",
    "unpriced",
    "duration_us",
)

Totals = tuple[int, ...]


def record_totals(r: Record) -> Totals:
    """The roll-up counters one record adds, in :data:`TOTALS` order."""
    u = r.usage
    errors = int(r.outcome != Outcome.OK)
    if u is None:
        return (1, errors, 0, 0, 0, 0, 0, 0, 0, 0, 0, r.cost_nd or 0, 0, r.duration_us)
    return (
        1,
        errors,
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
        u.cache_write_5m_tokens,
        u.cache_write_1h_tokens,
        u.reasoning_tokens,
        u.tool_calls,
        u.web_search_requests,
        r.cost_nd or 0,
        int(r.cost_nd is None),
        r.duration_us,
    )


@dataclass(slots=True)
class PreparedBatch:
    """Rows for every table a batch of distinct records touches."""

    records: list[Record]
    rows: list[Row]
    """``records`` rows, in :data:`~tailgate.store.serialize.RECORD_COLUMNS` order."""
    bodies: list[Row]
    """``capture_bodies`` rows: (record id, ts_ms, compressed data)."""
    tools: list[Row]
    """``capture_tools`` rows, for the records whose capture has tool calls."""
    totals: list[Totals]
    rollups: list[Row]
    """(day, principal, provider, model, *totals), sorted by key."""
    sessions: list[Row]
    """(principal, session id, first ts, last ts, last model, first user agent, *totals), sorted."""

    def only(self, ids: Collection[str]) -> PreparedBatch:
        """The same batch restricted to the records whose id is in ``ids``."""
        if len(ids) == len(self.records):
            return self
        keep = [i for i, r in enumerate(self.records) if r.id in ids]
        records = [self.records[i] for i in keep]
        totals = [self.totals[i] for i in keep]
        rollups, sessions = sums(records, totals)
        return PreparedBatch(
            records,
            [self.rows[i] for i in keep],
            [b for b in self.bodies if b[0] in ids],
            [t for t in self.tools if t[0] in ids],
            totals,
            rollups,
            sessions,
        )


def prepare(records: Iterable[Record]) -> PreparedBatch:
    """The batch of ``records``, the first of each id kept."""
    distinct: dict[str, Record] = {}
    for r in records:
        distinct.setdefault(r.id, r)
    batch = list(distinct.values())
    bodies: list[Row] = []
    tools: list[Row] = []
    for r in batch:
        c = r.capture
        if c is not None:
            bodies.append((r.id, r.ts_ms, encode_bodies(c)))
            if c.tool_calls:
                tools.append((r.id, r.ts_ms, encode_tools(c)))
    totals = [record_totals(r) for r in batch]
    rollups, sessions = sums(batch, totals)
    return PreparedBatch(batch, [record_row(r) for r in batch], bodies, tools, totals, rollups, sessions)


@dataclass(slots=True)
class _Session:
    first: tuple[int, str]
    """(ts_ms, id) of the session's first record in the batch."""
    last: tuple[int, str]
    last_model: str | None
    user_agent: str | None
    totals: Totals


def sums(records: list[Record], totals: list[Totals]) -> tuple[list[Row], list[Row]]:
    """The roll-up and session rows that ``records`` add, each key once, sorted by key.

    Sorted, so that concurrent writers take row locks in one order and never deadlock.
    """
    rollups: dict[tuple[int, str, str, str], Totals] = {}
    sessions: dict[tuple[str, str], _Session] = {}
    for r, t in zip(records, totals, strict=True):
        key = (day_number(r.ts_ms), r.principal, r.provider or "", r.model or "")
        before = rollups.get(key)
        rollups[key] = t if before is None else tuple(map(int.__add__, before, t))
        if r.session_id is None:
            continue
        order = (r.ts_ms, r.id)
        s = sessions.get((r.principal, r.session_id))
        if s is None:
            sessions[(r.principal, r.session_id)] = _Session(order, order, r.model, r.user_agent, t)
            continue
        if order < s.first:
            s.first, s.user_agent = order, r.user_agent
        if order > s.last:
            s.last, s.last_model = order, r.model
        s.totals = tuple(map(int.__add__, s.totals, t))
    rollup_rows = [(*k, *rollups[k]) for k in sorted(rollups)]
    session_rows = [
        (*k, s.first[0], s.last[0], s.last_model, s.user_agent, *s.totals)
        for k, s in sorted(sessions.items(), key=lambda item: item[0])
    ]
    return rollup_rows, session_rows
