"""The Usage page (admins) and the usage CSV: who uses what, how much, at what cost.

Everything is read from the daily roll-ups. The CSV has one row per day, principal, provider
and model, with the cost in dollars to the nanodollar; admins get everyone's rows (or one
principal's), anyone else only their own.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from markupsafe import Markup

from tailgate.http.messages import Request, Response, StreamingResponse
from tailgate.store import Store, UsageQuery, UsageRow
from tailgate.store.base import USAGE_ROW_COLUMNS
from tailgate.web import charts, format
from tailgate.web.common import TimeRange, Viewer, Web, now_ms, time_range
from tailgate.web.dashboard import by_model, model_charts, sum_totals

TOP = 10
CSV_HEADINGS = {"cost_nd": "cost_usd", "unpriced": "unpriced_requests"}
CSV_COLUMNS = tuple(CSV_HEADINGS.get(c, c) for c in USAGE_ROW_COLUMNS)
"""day, principal, provider, model, requests, input/output/cache read/cache write/reasoning
tokens, cost_usd (dollars with all nine decimals), unpriced_requests."""
CSV_DAYS_PER_QUERY = 7


@dataclass(slots=True)
class Adoption:
    rows: list[UsageRow]
    """By day, provider and model."""
    principals: list[UsageRow]
    """By principal, costliest first."""
    active: list[tuple[date, int]]


async def load_adoption(web: Web, window: TimeRange) -> Adoption:
    """The page's three roll-up reads, side by side in worker threads (SQLite reads in parallel)."""
    store = web.gateway.store
    query = window.usage_query()
    rows, principals, active = await asyncio.gather(
        web.run(store.usage, query, ("day", "provider", "model")),
        web.run(store.usage, query, ("principal",), order="cost"),
        web.run(store.active_principals, query),
    )
    return Adoption(rows, principals, active)


def active_chart(active: Sequence[tuple[date, int]], window: TimeRange, today: date) -> Markup | None:
    """Bars of distinct principals per day (the busiest day of a week when bucketed by week)."""
    if not active:
        return None
    first = window.since_day or active[0][0]
    last = window.until_day or max(today, active[-1][0])
    labels, step = charts.day_buckets(first, last)
    values = [0] * len(labels)
    for day, count in active:
        if first <= day <= last:
            i = min((day - first).days // step, len(labels) - 1)
            values[i] = max(values[i], count)
    return charts.stacked_bars(
        labels,
        [charts.Series("active principals", values, "s0")],
        describe=lambda v: f"{v} active",
        axis=str,
        title="Active principals per day",
        bucket_days=step,
        height=160,
    )


async def usage_page(web: Web, viewer: Viewer, request: Request) -> Response:
    now = now_ms()
    window = time_range(request, "30d", now)
    data = await load_adoption(web, window)
    today = format.utc_datetime(now).date()
    models = by_model(data.rows)
    by_tokens = sorted(data.principals, key=lambda r: (-r.totals.total_tokens, r.principal or ""))
    return web.render(
        "usage.html",
        viewer,
        active="usage",
        window=window,
        totals=sum_totals(r.totals for r in data.rows),
        principal_count=len(data.principals),
        charts=model_charts(data.rows, window, today),
        active_chart=active_chart(data.active, window, today),
        top_cost=data.principals[:TOP],
        top_tokens=by_tokens[:TOP],
        popular=sorted(models, key=lambda m: (-m.totals.requests, m.model)),
        costly=models,
        csv_since=window.since_day.isoformat() if window.since_day else "",
        csv_until=(window.until_day or today).isoformat(),
    )


# -- CSV ----------------------------------------------------------------------------------------


COST_COLUMN = USAGE_ROW_COLUMNS.index("cost_nd")


def csv_rows(rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    """Rows of ``Store.usage_rows`` as CSV rows (:data:`CSV_COLUMNS`): the cost in dollars."""
    cost = COST_COLUMN
    return [(*r[:cost], format.plain_dollars(r[cost]), *r[cost + 1 :]) for r in rows]


def _encode(rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def first_day(store: Store, until: date, principal: str | None, scope: str | None) -> date | None:
    """The first day with usage up to ``until`` (for an export of "all time")."""
    rows = store.usage(UsageQuery(until=until, principal=principal), ("day",), limit=1, scope=scope)
    return rows[0].day if rows else None


async def usage_csv(web: Web, viewer: Viewer, request: Request) -> StreamingResponse:
    """The usage CSV, streamed a week at a time so a long range never waits for one big query."""
    now = now_ms()
    window = time_range(request, "30d", now)
    principal = (request.query_value("principal") or None) if viewer.is_admin else None
    store = web.gateway.store
    last = window.until_day or format.utc_datetime(now).date()
    first = window.since_day or await web.run(first_day, store, last, principal, viewer.scope)

    async def chunks() -> AsyncIterator[bytes]:
        yield _encode([list(CSV_COLUMNS)])
        day = first
        while day is not None and day <= last:
            end = min(day + timedelta(days=CSV_DAYS_PER_QUERY - 1), last)
            query = UsageQuery(since=day, until=end, principal=principal)
            rows = await web.run(store.usage_rows, query, scope=viewer.scope)
            if rows:
                yield _encode(csv_rows(rows))
            day = end + timedelta(days=1)

    name = f"tailgate-usage-{first or last}-to-{last}.csv"
    headers = [
        (b"content-disposition", f'attachment; filename="{name}"'.encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
    return StreamingResponse(chunks(), 200, headers, b"text/csv; charset=utf-8")
