"""The Logs pages: sessions, a session's requests, one request's capture.

Listings are newest first with keyset pagination (an "older" link carries the store's opaque
cursor), never OFFSET, so the thousandth page costs what the first does. A filter on model,
provider, status or outcome lists requests (sessions have no such columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from urllib.parse import quote

from tailgate.errors import BadRequest, NotFound
from tailgate.http.messages import Request, Response
from tailgate.record import Outcome, Record
from tailgate.store import Page, RecordFilter, SessionFilter, SessionSummary, Store, Totals, UsageQuery
from tailgate.store.sql import record_totals
from tailgate.usage import Usage
from tailgate.web import format
from tailgate.web.common import TimeRange, Viewer, Web, link, now_ms, time_range
from tailgate.web.dashboard import sum_totals

PAGE_SIZE = 50
SESSION_PAGE = 100
SESSION_SCAN_PAGES = 20
"""A session's header sums at most this many pages of 1000 requests (then says "at least")."""
BODY_LIMIT = 512 * 1024
PRINCIPALS_LISTED = 500
SUGGESTION_DAYS = 30


@dataclass(frozen=True, slots=True)
class LogFilters:
    """What the Logs page was asked to show."""

    window: TimeRange
    principal: str | None
    model: str | None
    provider: str | None
    status: int | None
    outcome: str | None
    view: str
    """``sessions`` or ``requests``."""

    @property
    def args(self) -> dict[str, str]:
        """The query parameters that ask for these filters again (without a cursor)."""
        return {
            **self.window.args,
            "principal": self.principal or "",
            "model": self.model or "",
            "provider": self.provider or "",
            "status": str(self.status) if self.status is not None else "",
            "outcome": self.outcome or "",
            "view": "requests" if self.view == "requests" else "",
        }

    @property
    def narrowed(self) -> bool:
        return any((self.principal, self.model, self.provider, self.status is not None, self.outcome))

    def records(self) -> RecordFilter:
        return RecordFilter(
            principal=self.principal,
            model=self.model,
            provider=self.provider,
            status=self.status,
            outcome=self.outcome,
            since_ms=self.window.since_ms,
            until_ms=self.window.until_ms,
        )

    def sessions(self) -> SessionFilter:
        return SessionFilter(
            principal=self.principal, since_ms=self.window.since_ms, until_ms=self.window.until_ms
        )


def log_filters(request: Request, viewer: Viewer, now: int) -> LogFilters:
    def text(name: str) -> str | None:
        value = (request.query_value(name) or "").strip()
        return value or None

    status_text = text("status")
    status: int | None = None
    if status_text is not None:
        if not status_text.isdigit() or not 100 <= int(status_text) <= 599:
            raise BadRequest(f'"status" must be an HTTP status code such as 200 or 429, not {status_text!r}')
        status = int(status_text)
    outcome = text("outcome")
    if outcome is not None and outcome not in {o.value for o in Outcome}:
        raise BadRequest(f'unknown outcome "{outcome}"')
    principal = text("principal")
    if not viewer.is_admin:
        principal = None  # a user's listing is scoped to them anyway
    model, provider = text("model"), text("provider")
    wants_requests = text("view") == "requests" or any((model, provider, status is not None, outcome))
    return LogFilters(
        window=time_range(request, "all", now),
        principal=principal,
        model=model,
        provider=provider,
        status=status,
        outcome=outcome,
        view="requests" if wants_requests else "sessions",
    )


@dataclass(slots=True)
class Listing:
    sessions: Page[SessionSummary] | None
    records: Page[Record] | None
    principals: list[str]


def load_listing(store: Store, filters: LogFilters, cursor: str | None, viewer_scope: str | None) -> Listing:
    principals: list[str] = []
    if viewer_scope is None:
        # Suggestions for the principal filter: those active in the range, or in the last 30 days
        # when the range is open (all time would read every roll-up row for a hint).
        query = filters.window.usage_query()
        if query.since is None:
            today = datetime.now(UTC).date()
            query = UsageQuery(since=today - timedelta(days=SUGGESTION_DAYS), until=query.until)
        rows = store.usage(query, ("principal",), order="requests", limit=PRINCIPALS_LISTED)
        principals = [r.principal for r in rows if r.principal]
    if filters.view == "requests":
        page = store.list_records(filters.records(), limit=PAGE_SIZE, cursor=cursor, scope=viewer_scope)
        return Listing(None, page, principals)
    sessions = store.list_sessions(filters.sessions(), limit=PAGE_SIZE, cursor=cursor, scope=viewer_scope)
    return Listing(sessions, None, principals)


async def logs(web: Web, viewer: Viewer, request: Request) -> Response:
    filters = log_filters(request, viewer, now_ms())
    cursor = request.query_value("cursor") or None
    listing = await web.run(load_listing, web.gateway.store, filters, cursor, viewer.scope)
    routing = viewer.runtime.routing
    page = listing.records if listing.records is not None else listing.sessions
    next_cursor = page.next_cursor if page is not None else None
    return web.render(
        "logs.html",
        viewer,
        active="logs",
        filters=filters,
        args=filters.args,
        sessions=listing.sessions.items if listing.sessions is not None else None,
        records=listing.records.items if listing.records is not None else None,
        older=link("/ui/logs", filters.args, cursor=next_cursor) if next_cursor else None,
        paged=cursor is not None,
        providers=sorted(routing.providers),
        models=sorted({m for _, m in routing.models()}),
        principals=listing.principals,
        outcomes=[o.value for o in Outcome],
    )


# -- one session --------------------------------------------------------------------------------


@dataclass(slots=True)
class SessionView:
    page: Page[Record]
    totals: Totals
    first_ms: int | None
    last_ms: int | None
    complete: bool
    """Whether ``totals`` covers every request of the session (it stops after a bounded scan)."""


def load_session(
    store: Store, session_id: str, principal: str | None, cursor: str | None, scope: str | None
) -> SessionView:
    """One page of a session's requests, and the session's totals summed from its records."""
    filters = RecordFilter(session=session_id, principal=principal)
    page = store.list_records(filters, limit=SESSION_PAGE, cursor=cursor, scope=scope)
    records: list[Record] = []
    scan: str | None = None
    for _ in range(SESSION_SCAN_PAGES):
        batch = store.list_records(filters, limit=1000, cursor=scan, scope=scope)
        records.extend(batch.items)
        scan = batch.next_cursor
        if scan is None:
            break
    totals = sum_totals(Totals(*record_totals(r)) for r in records)
    return SessionView(
        page=page,
        totals=totals,
        first_ms=min((r.ts_ms for r in records), default=None),
        last_ms=max((r.ts_ms for r in records), default=None),
        complete=scan is None,
    )


async def session(web: Web, viewer: Viewer, request: Request) -> Response:
    session_id = request.path.removeprefix("/ui/logs/sessions/")
    if not session_id:
        return Response.redirect("/ui/logs")
    principal = (request.query_value("principal") or None) if viewer.is_admin else None
    cursor = request.query_value("cursor") or None
    view = await web.run(load_session, web.gateway.store, session_id, principal, cursor, viewer.scope)
    if not view.page.items and cursor is None:
        raise NotFound(f'no session "{session_id}"' + ("" if viewer.is_admin else " of yours"))
    here = request.path
    args = {"principal": principal or ""}
    return web.render(
        "session.html",
        viewer,
        active="logs",
        session_id=session_id,
        view=view,
        records=view.page.items,
        principals=sorted({r.principal for r in view.page.items}),
        older=link(here, args, cursor=view.page.next_cursor) if view.page.next_cursor else None,
        paged=cursor is not None,
        first_page=link(here, args),
    )


# -- one request --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CostLine:
    label: str
    tokens: int
    price: str | None
    """Dollars per million tokens (today's list price), ``None`` when the model has none."""
    nanodollars: int | None


def cost_breakdown(usage: Usage, prices: dict[str, str | None] | None) -> list[CostLine]:
    """What each kind of token costs at ``prices`` (``PriceBook.unit_prices``); reasoning at output rate."""
    prices = prices or {}
    write_1h = usage.cache_write_1h_tokens
    # (label, tokens, price key, shown even when zero)
    lines = [
        ("Input (not cached)", usage.uncached_input_tokens, "input", True),
        ("Cache read", usage.cache_read_tokens, "cache_read", False),
        ("Cache write", usage.cache_write_tokens - write_1h, "cache_write", False),
        (
            "Cache write (1 h)",
            write_1h,
            "cache_write_1h" if prices.get("cache_write_1h") else "cache_write",
            False,
        ),
        ("Output", usage.output_tokens - usage.reasoning_tokens, "output", True),
        ("Reasoning (output rate)", usage.reasoning_tokens, "output", False),
    ]
    out = []
    for label, tokens, key, always in lines:
        if tokens <= 0 and not always:
            continue
        price = prices.get(key)
        cost = None
        if price is not None:
            exact = Decimal(tokens) * Decimal(price) * 1000  # $/Mtok times tokens, in nanodollars
            cost = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
        out.append(CostLine(label, max(tokens, 0), price, cost))
    return out


@dataclass(frozen=True, slots=True)
class Body:
    text: str
    kind: str
    size: int


def body(data: bytes) -> Body:
    text, kind = format.pretty_body(data, BODY_LIMIT)
    return Body(text, kind, len(data))


async def request_detail(web: Web, viewer: Viewer, request: Request) -> Response:
    record_id = request.path.removeprefix("/ui/logs/")
    if not record_id:
        return Response.redirect("/ui/logs")
    record = await web.run(web.gateway.store.get_record, record_id, scope=viewer.scope)
    runtime = viewer.runtime
    provider = runtime.routing.providers.get(record.provider or "")
    prices = (
        await web.run(runtime.prices.unit_prices, provider, record.model)
        if provider is not None and record.model
        else None
    )
    capture = record.capture
    context: dict[str, Any] = {
        "record": record,
        "usage": record.usage,
        "breakdown": cost_breakdown(record.usage, prices) if record.usage is not None else [],
        "prices": prices,
        "capture": capture,
        "request_body": body(capture.request_body) if capture else None,
        "response_body": body(capture.response_body) if capture else None,
        "reassembled": format.pretty_json(capture.reassembled) if capture and capture.reassembled else None,
        "tool_calls": [
            (str(call.get("name", "")), format.pretty_json(call.get("params", call)))
            for call in (capture.tool_calls if capture else [])
        ],
        "session_link": _session_link(record, viewer),
    }
    return web.render("request.html", viewer, active="logs", **context)


def _session_link(record: Record, viewer: Viewer) -> str | None:
    if not record.session_id:
        return None
    path = "/ui/logs/sessions/" + quote(record.session_id, safe="")
    return link(path, {"principal": record.principal}) if viewer.is_admin else path
