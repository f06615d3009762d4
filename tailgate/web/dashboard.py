"""The Dashboard page: one principal's tokens and cost by model over time, recent activity, stats.

``/ui/`` shows the viewer's own; admins open anyone's at ``/ui/dashboard/{principal}``.
Everything comes from the daily roll-ups and two short keyset reads, so it stays fast at any
size of the request log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import date
from urllib.parse import quote

from markupsafe import Markup

from tailgate.errors import AccessDenied
from tailgate.http.messages import Request, Response
from tailgate.record import Record
from tailgate.store import RecordFilter, SessionFilter, SessionSummary, Store, Totals, UsageRow
from tailgate.web import charts, format
from tailgate.web.common import DAY_MS, TimeRange, Viewer, Web, now_ms, principal_path, time_range

RECENT_RECORDS = 10
RECENT_SESSIONS = 6
ACTIVE_SESSIONS_CAP = 200
PRINCIPALS_LISTED = 500


def add_totals(into: Totals, more: Totals) -> None:
    """Add ``more``'s counters to ``into``."""
    for f in fields(Totals):
        setattr(into, f.name, getattr(into, f.name) + getattr(more, f.name))


def sum_totals(rows: Iterable[Totals]) -> Totals:
    out = Totals()
    for t in rows:
        add_totals(out, t)
    return out


@dataclass(slots=True)
class ModelLine:
    provider: str
    model: str
    totals: Totals = field(default_factory=Totals)


@dataclass(slots=True)
class Charts:
    """Tokens and cost per model over the days of a range, as SVG, with the legend's series."""

    tokens: Markup
    cost: Markup
    series: list[charts.Series]
    first: date
    last: date


def model_charts(rows: Sequence[UsageRow], window: TimeRange, today: date) -> Charts | None:
    """Stacked daily bars of tokens and of cost per model; ``None`` when there is no usage."""
    dated = [r for r in rows if r.day is not None]
    if not dated:
        return None
    first = window.since_day or min(r.day for r in dated if r.day is not None)
    last = window.until_day or max(today, *(r.day for r in dated if r.day is not None))
    labels, step = charts.day_buckets(first, last)
    tokens: dict[str, list[int]] = {}
    cost: dict[str, list[int]] = {}
    for r in dated:
        if r.day is None or r.day < first or r.day > last:
            continue
        name = r.model or "(no model)"
        i = min((r.day - first).days // step, len(labels) - 1)
        tokens.setdefault(name, [0] * len(labels))[i] += r.totals.total_tokens
        cost.setdefault(name, [0] * len(labels))[i] += r.totals.cost_nd
    token_series = charts.top_series(tokens)
    colours = {s.name: s.css for s in token_series}
    # The cost chart keeps each model's colour from the token chart.
    cost_series = [
        charts.Series(s.name, _column_sum(cost, s.name, colours, len(labels)), s.css) for s in token_series
    ]
    return Charts(
        tokens=charts.stacked_bars(
            labels,
            token_series,
            describe=lambda v: f"{format.integer(v)} tokens",
            axis=format.compact,
            title="Tokens per day by model",
            bucket_days=step,
        ),
        cost=charts.stacked_bars(
            labels,
            cost_series,
            describe=format.dollars,
            axis=format.dollars,
            title="Cost per day by model",
            bucket_days=step,
        ),
        series=token_series,
        first=first,
        last=last,
    )


def _column_sum(by_name: dict[str, list[int]], name: str, kept: dict[str, str], size: int) -> list[int]:
    if name != charts.OTHER:
        return by_name.get(name, [0] * size)
    rest = [values for n, values in by_name.items() if n not in kept]
    return [sum(column) for column in zip(*rest, strict=True)] if rest else [0] * size


def by_model(rows: Iterable[UsageRow]) -> list[ModelLine]:
    """Totals per (provider, model), costliest first, then busiest."""
    lines: dict[tuple[str, str], ModelLine] = {}
    for r in rows:
        key = (r.provider or "", r.model or "")
        line = lines.setdefault(key, ModelLine(*key))
        add_totals(line.totals, r.totals)
    return sorted(lines.values(), key=lambda m: (-m.totals.cost_nd, -m.totals.requests, m.model))


@dataclass(slots=True)
class Overview:
    rows: list[UsageRow]
    recent: list[Record]
    sessions: list[SessionSummary]
    more_sessions: bool
    principals: list[UsageRow]


def load_overview(store: Store, principal: str, window: TimeRange, now: int, admin: bool) -> Overview:
    """Every read the page needs, in one worker-thread call."""
    rows = store.usage(window.usage_query(), ("day", "provider", "model"), scope=principal)
    recent = store.list_records(RecordFilter(), limit=RECENT_RECORDS, scope=principal).items
    active = store.list_sessions(
        SessionFilter(since_ms=now - DAY_MS), limit=ACTIVE_SESSIONS_CAP, scope=principal
    )
    principals = (
        store.usage(window.usage_query(), ("principal",), order="cost", limit=PRINCIPALS_LISTED)
        if admin
        else []
    )
    return Overview(rows, recent, active.items, active.next_cursor is not None, principals)


async def own_dashboard(web: Web, viewer: Viewer, request: Request) -> Response:
    return await _dashboard(web, viewer, request, viewer.principal)


async def principal_dashboard(web: Web, viewer: Viewer, request: Request) -> Response:
    """``/ui/dashboard/{principal}``; ``/ui/dashboard/?principal=…`` (the picker) redirects there."""
    principal = request.path.removeprefix("/ui/dashboard/")
    if not principal:
        chosen = (request.query_value("principal") or "").strip()
        return Response.redirect(principal_path(chosen) if chosen else "/ui/")
    if principal != viewer.principal and not viewer.is_admin:
        raise AccessDenied("access denied: only admins may open another principal's dashboard")
    return await _dashboard(web, viewer, request, principal)


async def _dashboard(web: Web, viewer: Viewer, request: Request, principal: str) -> Response:
    now = now_ms()
    window = time_range(request, "30d", now)
    data = await web.run(load_overview, web.gateway.store, principal, window, now, viewer.is_admin)
    today = format.utc_datetime(now).date()
    drawn = model_charts(data.rows, window, today)
    base = "/ui/" if principal == viewer.principal else principal_path(principal)
    return web.render(
        "dashboard.html",
        viewer,
        active="dashboard",
        principal=principal,
        own=principal == viewer.principal,
        base=base,
        window=window,
        totals=sum_totals(r.totals for r in data.rows),
        models=by_model(data.rows),
        charts=drawn,
        recent=data.recent,
        sessions=data.sessions[:RECENT_SESSIONS],
        active_sessions=len(data.sessions),
        more_sessions=data.more_sessions,
        principals=data.principals,
        csv_link=f"/ui/usage.csv?{_csv_args(window, principal, viewer)}",
    )


def _csv_args(window: TimeRange, principal: str, viewer: Viewer) -> str:
    args = dict(window.args)
    if viewer.is_admin:
        args["principal"] = principal
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in args.items() if v)
