"""The API's JSON shapes: records, captures, sessions, keys, quota buckets, grant explanations.

Shared by the JSON API, the dashboard and the CLI, so that every surface shows the same facts
the same way: money as integer nanodollars next to a dollar string, times as UTC ISO-8601.
"""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from tailgate.config.model import QuotaDef
from tailgate.config.units import format_dollars
from tailgate.grants import GrantTable
from tailgate.identity import Identity
from tailgate.identity.keys import KeyInfo
from tailgate.record import Capture, Record
from tailgate.store import SessionSummary, Totals

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso_ms(ts_ms: int | None) -> str | None:
    """Epoch milliseconds → ``2026-01-02T03:04:05.678Z`` (UTC)."""
    if ts_ms is None:
        return None
    moment = _EPOCH + timedelta(milliseconds=ts_ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_json(r: Record) -> dict[str, Any]:
    """Every field of a record but its capture; money as nanodollars and as a dollar string."""
    doc: dict[str, Any] = {}
    for f in dataclasses.fields(Record):
        if f.name not in ("capture", "usage"):
            doc[f.name] = getattr(r, f.name)
    doc["time"] = iso_ms(r.ts_ms)
    doc["outcome"] = r.outcome.value
    doc["usage"] = None
    if r.usage is not None:
        doc["usage"] = {**dataclasses.asdict(r.usage), "total_tokens": r.usage.total_tokens}
    doc["cost"] = format_dollars(r.cost_nd) if r.cost_nd is not None else None
    doc["unpriced"] = r.cost_nd is None and r.usage is not None
    return doc


def capture_json(c: Capture) -> dict[str, Any]:
    """A capture: bodies as text when they are UTF-8, else base64 (``*_encoding`` says which)."""
    request_body, request_encoding = _body_text(c.request_body)
    response_body, response_encoding = _body_text(c.response_body)
    return {
        "request_headers": [list(pair) for pair in c.request_headers],
        "request_body": request_body,
        "request_body_encoding": request_encoding,
        "response_headers": [list(pair) for pair in c.response_headers],
        "response_body": response_body,
        "response_body_encoding": response_encoding,
        "reassembled": c.reassembled,
        "tool_calls": c.tool_calls,
    }


def _body_text(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def totals_json(t: Totals) -> dict[str, Any]:
    doc = dataclasses.asdict(t)
    doc["total_tokens"] = t.total_tokens
    doc["cost"] = format_dollars(t.cost_nd)
    return doc


def session_json(s: SessionSummary) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "principal": s.principal,
        "first_ts_ms": s.first_ts_ms,
        "last_ts_ms": s.last_ts_ms,
        "first_time": iso_ms(s.first_ts_ms),
        "last_time": iso_ms(s.last_ts_ms),
        "last_model": s.last_model,
        "user_agent": s.user_agent,
        "totals": totals_json(s.totals),
    }


def key_json(k: KeyInfo, now: datetime) -> dict[str, Any]:
    """A key's public facts: never its hash."""
    return {
        "id": k.id,
        "principal": k.principal,
        "prefix": k.prefix,
        "note": k.note,
        "created_at": _iso(k.created_at),
        "expires_at": _iso(k.expires_at),
        "revoked_at": _iso(k.revoked_at),
        "state": k.state(now),
    }


def explain_json(grants: GrantTable, subject: Identity, provider_id: str, model: str) -> dict[str, Any]:
    decision = grants.decide(subject, provider_id, model)
    return {
        "principal": subject.principal,
        "model": f"{provider_id}/{model}",
        "allowed": decision.allowed,
        "role": decision.role,
        "reason": decision.reason,
        "matched": [
            {
                "origin": m.origin,
                "src": m.src,
                "role": m.capability.role,
                "models": list(m.capability.models),
                "quotas": [q.template for q in m.capability.quotas],
            }
            for m in decision.matched
        ],
        "quotas": [q.template for q in decision.quotas],
        "add_headers": [name for name, _ in decision.add_headers],
        "hooks": [h.name for h in decision.send_hooks],
        "explanation": grants.explain(subject, provider_id, model),
    }


def unused_bucket_json(bucket: str, quota: QuotaDef) -> dict[str, Any]:
    """A bucket never charged yet, in :meth:`QuotaPolicy.view`'s shape: it is at capacity."""
    return {
        "bucket": bucket,
        "quota": quota.name,
        "balance_nd": quota.capacity,
        "capacity_nd": quota.capacity,
        "balance": format_dollars(quota.capacity),
        "capacity": format_dollars(quota.capacity),
        "rate": quota.rate_text,
        "updated_at": None,
    }
