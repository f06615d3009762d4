"""The Usage page (admins) and the usage CSV: who uses what, how much, at what cost.

Everything is read from the daily roll-ups. The CSV has one row per day, principal, provider
and model, with the cost in dollars to the nanodollar; admins get everyone's rows (or one
principal's), anyone else only their own.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date

from markupsafe import Markup

from tailgate.http.messages import Request, Response, StreamingResponse
from tailgate.store import Store, UsageRow
from tailgate.web import charts, format
from tailgate.web.common import TimeRange, Viewer, Web, now_ms, time_range
from tailgate.web.dashboard import by_model, model_charts, sum_totals

TOP = 10
CSV_COLUMNS = (
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
    "cost_usd",
    "unpriced_requests",
)
CSV_CHUNK_ROWS = 2000


@dataclass(slots=True)
class Adoption:
    rows: list[UsageRow]
    """By day, provider and model."""
    principals: list[UsageRow]
    """By principal, costliest first."""
    active: list[tuple[date, int]]


def load_adoption(store: Store, window: TimeRange) -> Adoption:
    query = window.usage_query()
    return Adoption(
        rows=store.usage(query, ("day", "provider", "model")),
        principals=store.usage(query, ("principal",), order="cost"),
        active=store.active_principals(query),
    )


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
    data = await web.run(load_adoption, web.gateway.store, window)
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


def csv_rows(rows: Sequence[UsageRow]) -> list[list[str]]:
    """The CSV's data rows (:data:`CSV_COLUMNS`), in the store's order: day, principal, provider, model."""
    out = []
    for r in rows:
        t = r.totals
        out.append(
            [
                r.day.isoformat() if r.day else "",
                r.principal or "",
                r.provider or "",
                r.model or "",
                str(t.requests),
                str(t.input_tokens),
                str(t.output_tokens),
                str(t.cache_read_tokens),
                str(t.cache_write_tokens),
                str(t.reasoning_tokens),
                format.plain_dollars(t.cost_nd),
                str(t.unpriced),
            ]
        )
    return out


def _encode(rows: Sequence[Sequence[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


async def usage_csv(web: Web, viewer: Viewer, request: Request) -> StreamingResponse:
    now = now_ms()
    window = time_range(request, "30d", now)
    principal = (request.query_value("principal") or None) if viewer.is_admin else None
    query = window.usage_query(principal=principal)
    rows = await web.run(
        web.gateway.store.usage, query, ("day", "principal", "provider", "model"), scope=viewer.scope
    )
    table = csv_rows(rows)

    async def chunks() -> AsyncIterator[bytes]:
        yield _encode([list(CSV_COLUMNS)])
        for start in range(0, len(table), CSV_CHUNK_ROWS):
            yield _encode(table[start : start + CSV_CHUNK_ROWS])

    today = format.utc_datetime(now).date()
    first = window.since_day.isoformat() if window.since_day else "all"
    last = (window.until_day or today).isoformat()
    name = f"tailgate-usage-{first}-to-{last}.csv"
    headers = [
        (b"content-disposition", f'attachment; filename="{name}"'.encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
    return StreamingResponse(chunks(), 200, headers, b"text/csv; charset=utf-8")
