"""The Settings page (admins): the configuration as HuJSON, a read-only view of it, gateway keys.

Saving validates exactly as ``PUT /api/config`` does: every warning refuses the save, and so
does a config that would take away the saver's own admin role. A refused save shows the
messages next to the editor and keeps the text as the admin wrote it. Provider keys are never
shown, only whether one is set; a new gateway key's secret is shown once, on the page that
created it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tailgate import csrf
from tailgate.api import MAX_KEY_DAYS, save_config, save_problems
from tailgate.config.model import Capability, Config, Grant
from tailgate.errors import BadRequest
from tailgate.http.messages import Request, Response
from tailgate.identity import Identity
from tailgate.identity.keys import KeyInfo
from tailgate.web.common import Viewer, Web, form_fields, link
from tailgate.web.models import endpoints


@dataclass(slots=True)
class Outcome:
    """What became of a validate or save: the problems, or what was done."""

    problems: list[str] = field(default_factory=list)
    message: str | None = None
    notes: list[str] = field(default_factory=list)


async def save(web: Web, text: str, saver: Identity) -> Outcome:
    """Save ``text`` exactly as ``PUT /api/config`` does, and say what happened."""
    saved = await save_config(web.gateway, text, saver)
    if saved.problems:
        return Outcome(saved.problems)
    where = (
        f"saved to {saved.path}"
        if saved.path
        else "in effect in memory only (this gateway has no config file)"
    )
    notes = [*saved.notes]
    notes.extend(f"{name} changed: it takes effect at the next restart" for name in saved.restart_required)
    return Outcome(message=f"Configuration {saved.generation} {where} and applied.", notes=notes)


@dataclass(frozen=True, slots=True)
class ProviderRow:
    id: str
    name: str
    type: str
    baseurl: str
    key: str
    """``set`` or ``not set``: a provider key is never shown."""
    authorization: str
    auth_mode: str
    models: tuple[str, ...]
    endpoints: list[str]
    cost_basis: str | None
    preference: int
    disabled: bool
    headers: list[str]


def provider_rows(viewer: Viewer) -> list[ProviderRow]:
    config = viewer.runtime.config
    prices = viewer.runtime.prices
    return [
        ProviderRow(
            id=p.id,
            name=p.name,
            type=p.type,
            baseurl=p.baseurl,
            key="set" if p.apikey else "not set",
            authorization=p.authorization,
            auth_mode=p.auth_mode,
            models=p.models,
            endpoints=endpoints(p),
            cost_basis=prices.basis_for(p),
            preference=p.preference,
            disabled=p.disabled,
            headers=[name for name, _ in p.add_headers],
        )
        for p in config.providers.values()
    ]


def capability_text(c: Capability) -> list[str]:
    """A capability in words; header values and hook settings are left out (they may be secret)."""
    parts = []
    if c.role:
        parts.append(f"role {c.role}")
    if c.models:
        parts.append("models " + ", ".join(c.models))
    if c.quotas:
        parts.append("quotas " + ", ".join(q.template for q in c.quotas))
    if c.add_headers:
        parts.append("adds headers " + ", ".join(name for name, _ in c.add_headers))
    if c.send_hooks:
        parts.append("hooks " + ", ".join(h.name for h in c.send_hooks))
    if c.read_metrics:
        parts.append("read_metrics")
    parts.extend(sorted(c.extra))
    return parts or ["(empty)"]


def grant_rows(grants: tuple[Grant, ...]) -> list[tuple[Grant, list[list[str]]]]:
    return [(g, [capability_text(c) for c in g.capabilities]) for g in grants]


async def settings_page(web: Web, viewer: Viewer, request: Request) -> Response:
    revoked = request.query_value("revoked")
    return await _render(web, viewer, key_done=f"Key {revoked} revoked." if revoked else None)


async def _render(
    web: Web,
    viewer: Viewer,
    *,
    status: int = 200,
    text: str | None = None,
    outcome: Outcome | None = None,
    new_key: tuple[KeyInfo, str] | None = None,
    key_problem: str | None = None,
    key_done: str | None = None,
) -> Response:
    config: Config = web.gateway.config
    keys = await web.run(web.gateway.store.list_keys)
    now = datetime.now(UTC)
    context: dict[str, Any] = {
        "text": config.source_text if text is None else text,
        "path": config.source_path,
        "warnings": list(config.warnings),
        "generation": web.gateway.runtime.generation,
        "outcome": outcome,
        "providers": provider_rows(viewer),
        "grants": grant_rows(config.grants),
        "keys": sorted(keys, key=lambda k: (k.state(now) != "active", k.created_at)),
        "key_state": lambda k: k.state(now),
        "new_key": new_key,
        "key_problem": key_problem,
        "key_done": key_done,
        "max_key_days": MAX_KEY_DAYS,
    }
    return web.render("settings.html", viewer, status=status, active="settings", **context)


async def post_config(web: Web, viewer: Viewer, request: Request) -> Response:
    """``POST /ui/settings``: ``action=validate`` checks the text, ``action=save`` also saves it."""
    csrf.require_same_origin(request)
    fields = form_fields(request)
    # Browsers send a textarea's line breaks as CRLF; the file keeps the LF it was written with.
    text = fields.get("config", "").replace("\r\n", "\n")
    if fields.get("action") == "validate":
        problems = await web.run(save_problems, text, viewer.identity)
        message = None if problems else "Valid: this configuration can be saved."
        return await _render(web, viewer, text=text, outcome=Outcome(problems, message))
    outcome = await save(web, text, viewer.identity)
    if outcome.problems:
        return await _render(web, viewer, status=422, text=text, outcome=outcome)
    # The new runtime may have changed the viewer's grants; render with the config now in force.
    fresh = Viewer(
        viewer.identity, web.gateway.runtime.grants.role_of(viewer.identity) or "", web.gateway.runtime
    )
    return await _render(web, fresh, outcome=outcome)


async def create_key(web: Web, viewer: Viewer, request: Request) -> Response:
    """``POST /ui/settings/keys``: mint a key; its secret appears on this response only."""
    csrf.require_same_origin(request)
    fields = form_fields(request)
    principal = fields.get("principal", "").strip()
    note = fields.get("note", "").strip()
    days_text = fields.get("expires_in_days", "").strip()
    try:
        days = _days(days_text)
        if len(note) > 500:
            raise BadRequest("the note may be at most 500 characters")
        expires = datetime.now(UTC) + timedelta(days=days) if days is not None else None
        try:
            created = await web.run(web.gateway.store.create_key, principal, expires_at=expires, note=note)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    except BadRequest as exc:
        return await _render(web, viewer, status=400, key_problem=exc.message)
    return await _render(web, viewer, new_key=created)


def _days(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_KEY_DAYS:
        raise BadRequest(f"expiry must be a whole number of days from 1 to {MAX_KEY_DAYS}")
    return int(text)


async def revoke_key(web: Web, viewer: Viewer, request: Request) -> Response:
    """``POST /ui/settings/keys/revoke`` with the key's ``id``."""
    csrf.require_same_origin(request)
    key_id = form_fields(request).get("id", "").strip()
    revoked = bool(key_id) and await web.run(web.gateway.store.revoke_key, key_id)
    if not revoked:
        return await _render(web, viewer, status=404, key_problem=f'no active gateway key "{key_id}"')
    return Response.redirect(link("/ui/settings", {"revoked": key_id}) + "#keys")
