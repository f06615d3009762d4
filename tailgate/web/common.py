"""What every dashboard page shares: who is looking, templates, time ranges, links, error pages.

A page handler is ``async def (web, viewer, request) -> Response``; :func:`page` wraps it into
a router handler that identifies the caller exactly as the API does (no role → 403), refuses
non-admins on admin pages, and renders every :class:`~tailgate.errors.GatewayError` as an
HTML page instead of JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import parse_qs, quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from tailgate import __version__
from tailgate.errors import AccessDenied, BadRequest, GatewayError
from tailgate.grants import NO_ROLE
from tailgate.http.messages import Headers, Request, Response, StreamingResponse
from tailgate.identity import Identity
from tailgate.store import UsageQuery
from tailgate.web import charts, format

if TYPE_CHECKING:
    from tailgate.app import Gateway
    from tailgate.router import Handler
    from tailgate.runtime import Runtime

log = logging.getLogger("tailgate.web")

P = ParamSpec("P")
R = TypeVar("R")

HERE = Path(__file__).parent
DAY_MS = 86_400_000
ADMIN_ONLY = "access denied: this page needs the admin role"
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)
NAV = (
    ("dashboard", "/ui/", "Dashboard", False),
    ("logs", "/ui/logs", "Logs", False),
    ("usage", "/ui/usage", "Usage", True),
    ("models", "/ui/models", "Models", False),
    ("quotas", "/ui/quotas", "Quotas", False),
    ("settings", "/ui/settings", "Settings", True),
    ("quickstart", "/ui/quickstart", "Quick start", False),
)
RANGES = (("24h", "Last 24 hours", 1), ("7d", "7 days", 7), ("30d", "30 days", 30), ("90d", "90 days", 90))
_TITLES = {
    400: "Bad request",
    401: "Not signed in",
    403: "Access denied",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    503: "Unavailable",
}


@dataclass(frozen=True, slots=True)
class Viewer:
    """The person looking at the dashboard, their role, and the configuration they see."""

    identity: Identity
    role: str
    runtime: Runtime

    @property
    def principal(self) -> str:
        return self.identity.principal

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> str | None:
        """The principal a store read is restricted to: ``None`` (everyone) for admins."""
        return None if self.is_admin else self.identity.principal

    def require_admin(self) -> None:
        if not self.is_admin:
            raise AccessDenied(ADMIN_ONLY)


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A window of time chosen on a page: a preset (``7d``), ``all``, or ``custom`` days."""

    key: str
    label: str
    since_ms: int | None
    until_ms: int | None
    """Exclusive."""
    since_day: date | None
    until_day: date | None
    """Inclusive (roll-ups are by UTC day)."""

    def usage_query(self, **dimensions: str | None) -> UsageQuery:
        return UsageQuery(since=self.since_day, until=self.until_day, **dimensions)

    @property
    def args(self) -> dict[str, str]:
        """The query parameters that select this range again."""
        if self.key == "custom":
            return {
                "since": self.since_day.isoformat() if self.since_day else "",
                "until": self.until_day.isoformat() if self.until_day else "",
            }
        return {"range": self.key}


def time_range(request: Request, default: str, now_ms: int) -> TimeRange:
    """The range a page's query asks for: ``range=24h|7d|30d|90d|all`` or ``since``/``until`` days."""
    since_text = request.query_value("since") or ""
    until_text = request.query_value("until") or ""
    today = format.utc_datetime(now_ms).date()
    if since_text or until_text:
        since = _day(since_text, "since") if since_text else None
        until = _day(until_text, "until") if until_text else None
        if since and until and until < since:
            raise BadRequest(f"the range ends ({until}) before it starts ({since})")
        label = f"{since or 'the beginning'} to {until or 'today'}"
        return TimeRange(
            "custom",
            label,
            _day_ms(since) if since else None,
            _day_ms(until) + DAY_MS if until else None,
            since,
            until,
        )
    key = request.query_value("range") or default
    if key == "all":
        return TimeRange("all", "All time", None, None, None, None)
    for preset, label, days in RANGES:
        if key == preset:
            since_ms = now_ms - days * DAY_MS
            return TimeRange(preset, label, since_ms, None, format.utc_datetime(since_ms).date(), today)
    raise BadRequest(f'unknown range "{key}": use 24h, 7d, 30d, 90d, all, or since/until dates')


def _day(text: str, name: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f'"{name}" must be a date like 2026-01-31, not {text!r}') from None


def _day_ms(day: date) -> int:
    return (day - date(1970, 1, 1)).days * DAY_MS


def link(path: str, args: Mapping[str, str | None] | None = None, **changes: str | None) -> str:
    """``path`` with the non-empty ``args`` (updated by ``changes``) as its query string."""
    merged = {**(args or {}), **changes}
    kept = {k: v for k, v in merged.items() if v}
    return f"{path}?{urlencode(kept)}" if kept else path


def principal_path(principal: str) -> str:
    return "/ui/dashboard/" + quote(principal, safe="@:,()+")


def form_fields(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body; first value of each field."""
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the form must be sent as UTF-8") from None
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: bytes
    version: str


def _load_static() -> dict[str, StaticFile]:
    types = {".css": b"text/css; charset=utf-8", ".js": b"text/javascript; charset=utf-8"}
    files = {}
    for path in sorted((HERE / "static").iterdir()):
        if path.suffix in types:
            body = path.read_bytes()
            files[path.name] = StaticFile(body, types[path.suffix], hashlib.sha256(body).hexdigest()[:12])
    return files


class Web:
    """The dashboard's shared state: the gateway, the template environment, the static files."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.static = _load_static()
        env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(
            dollars=format.dollars,
            exact_dollars=format.exact_dollars,
            integer=format.integer,
            compact=format.compact,
            duration_us=format.duration_us,
            duration_ms=format.duration_ms,
            per_million=format.per_million,
            utc=format.utc_text,
            iso=format.iso,
            principal_path=principal_path,
            urlpart=partial(quote, safe=""),
        )
        env.globals.update(
            link=link, bar=charts.bar, swatch=charts.swatch, version=__version__, nav=NAV, ranges=RANGES
        )
        self.env = env

    async def viewer(self, request: Request) -> Viewer:
        """The caller, as the API identifies them; ``AccessDenied`` without a role."""
        identity = await self.gateway.identify(request)
        runtime = self.gateway.runtime
        role = runtime.grants.role_of(identity)
        if role is None:
            raise AccessDenied(NO_ROLE)
        return Viewer(identity, role, runtime)

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Call a blocking (store) function in a worker thread."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def render(
        self,
        template: str,
        viewer: Viewer | None,
        *,
        status: int = 200,
        active: str = "",
        **context: Any,
    ) -> Response:
        """A page rendered whole before anything is sent (a template error cannot half-write it)."""
        now = now_ms()
        html = self.env.get_template(template).render(
            viewer=viewer,
            active=active,
            now_ms=now,
            when=partial(_when, now_ms=now),
            static=self.static_url,
            **context,
        )
        return Response.html(html, status, list(SECURITY_HEADERS))

    def static_url(self, name: str) -> str:
        return f"/ui/static/{name}?v={self.static[name].version}"

    def error_page(self, error: GatewayError, viewer: Viewer | None) -> Response:
        title = _TITLES.get(error.status, "Something went wrong")
        if error.status >= 500 and error.status != 503:
            log.error("dashboard error: %s", error.message)
        response = self.render(
            "error.html", viewer, status=error.status, title=title, message=error.message, error=error
        )
        response.headers.extend((n.encode(), v.encode()) for n, v in error.headers)
        return response

    async def serve_static(self, request: Request) -> Response:
        name = request.path.removeprefix("/ui/static/")
        found = self.static.get(name)
        if found is None:
            return Response.text("not found", 404)
        headers: Headers = [(b"x-content-type-options", b"nosniff")]
        if request.query_value("v") == found.version:
            headers.append((b"cache-control", b"public, max-age=31536000, immutable"))
        else:
            headers.append((b"cache-control", b"no-cache"))
        return Response(200, found.body, headers, found.content_type)


def _when(ts_ms: int, now_ms: int) -> dict[str, str]:
    return {
        "iso": format.iso(ts_ms),
        "utc": format.utc_text(ts_ms),
        "relative": format.relative(ts_ms, now_ms),
    }


PageHandler = Callable[[Web, Viewer, Request], Awaitable[Response | StreamingResponse]]


def page(web: Web, handler: PageHandler, *, admin: bool = False) -> Handler:
    """A router handler for a dashboard page: identify, check the role, render errors as HTML."""

    async def serve(request: Request) -> Response | StreamingResponse:
        viewer: Viewer | None = None
        try:
            viewer = await web.viewer(request)
            if admin:
                viewer.require_admin()
            return await handler(web, viewer, request)
        except GatewayError as error:
            return web.error_page(error, viewer)

    return serve
