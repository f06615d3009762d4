"""The Quotas page: dollar buckets with balance, capacity and refill rate; admins refill them.

A user sees the buckets their grants charge (a bucket never charged yet is full); an admin
sees every bucket in the store as well. Refilling is a same-origin form POST.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tailgate import csrf
from tailgate.api import own_buckets
from tailgate.api_json import unused_bucket_json
from tailgate.config.units import parse_dollars
from tailgate.errors import BadRequest, NotFound
from tailgate.http.messages import Request, Response
from tailgate.quotas import quota_of
from tailgate.runtime import Runtime
from tailgate.web import format
from tailgate.web.common import Viewer, Web, form_fields, link


@dataclass(frozen=True, slots=True)
class BucketView:
    name: str
    quota: str
    balance_nd: int
    capacity_nd: int
    rate: str
    updated_at: str | None
    """``None`` for a bucket never charged (it is full)."""
    mine: bool

    @property
    def fraction(self) -> float:
        return self.balance_nd / self.capacity_nd if self.capacity_nd > 0 else 0.0

    @property
    def tone(self) -> str:
        """How the bar looks: ``empty`` at or below zero, ``low`` under a fifth, else plain."""
        if self.balance_nd <= 0:
            return "empty"
        return "low" if self.fraction < 0.2 else ""

    @property
    def deficit(self) -> str:
        """The refill that fills the bucket, as a dollar amount (for the form's default)."""
        return format.exact_dollars(max(self.capacity_nd - self.balance_nd, 0))


def bucket_views(runtime: Runtime, names: Iterable[str] | None, mine: Sequence[str]) -> list[BucketView]:
    """Buckets refilled to now: the stored ``names`` (every stored one for ``None``), plus ``mine``
    at capacity when never charged. Blocking: reads the store."""
    wanted = None if names is None else list(dict.fromkeys([*names, *mine]))
    stored = runtime.quotas.view(wanted)
    seen = {entry["bucket"] for entry in stored}
    own = set(mine)
    views = [_view(entry, entry["bucket"] in own) for entry in stored]
    for name in mine:
        if name in seen:
            continue
        quota = quota_of(name, runtime.config.quotas)
        if quota is not None:
            views.append(_view(unused_bucket_json(name, quota), True))
    return sorted(views, key=lambda v: (not v.mine, v.name))


def _view(entry: dict[str, Any], mine: bool) -> BucketView:
    return BucketView(
        name=entry["bucket"],
        quota=entry["quota"],
        balance_nd=entry["balance_nd"],
        capacity_nd=entry["capacity_nd"],
        rate=entry["rate"],
        updated_at=entry["updated_at"],
        mine=mine,
    )


async def quotas_page(web: Web, viewer: Viewer, request: Request) -> Response:
    return await _render(web, viewer, request)


async def _render(
    web: Web, viewer: Viewer, request: Request, *, status: int = 200, problem: str | None = None
) -> Response:
    runtime = viewer.runtime
    mine = list(own_buckets(runtime, viewer.identity))
    buckets = await web.run(bucket_views, runtime, None if viewer.is_admin else mine, mine)
    refilled = request.query_value("refilled")
    done = None
    if refilled and request.method == "GET":
        amount = request.query_value("amount") or ""
        done = f"Refilled {refilled} by {amount}."
    return web.render(
        "quotas.html",
        viewer,
        status=status,
        active="quotas",
        buckets=buckets,
        done=done,
        problem=problem,
        defined=sorted(runtime.config.quotas.values(), key=lambda q: q.name),
    )


async def refill(web: Web, viewer: Viewer, request: Request) -> Response:
    """``POST /ui/quotas/refill`` (admins): add a dollar amount to a bucket, up to its capacity."""
    csrf.require_same_origin(request)
    fields = form_fields(request)
    bucket = fields.get("bucket", "").strip()
    amount_text = fields.get("amount", "").strip()
    try:
        if not amount_text.startswith("$"):
            amount_text = "$" + amount_text
        amount = parse_dollars(amount_text)
    except ValueError as exc:
        return await _render(web, viewer, request, status=400, problem=f"Could not refill {bucket}: {exc}")
    try:
        await web.run(viewer.runtime.quotas.refill, bucket, amount)
    except (BadRequest, NotFound) as exc:
        return await _render(
            web, viewer, request, status=exc.status, problem=f"Could not refill {bucket}: {exc.message}"
        )
    shown = format.exact_dollars(amount)
    return Response.redirect(link("/ui/quotas", {"refilled": bucket, "amount": shown}) + "#buckets")
