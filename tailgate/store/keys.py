"""Gateway API keys in the ``api_keys`` table, as statements over one transaction.

:class:`~tailgate.store.sql.SQLStore` exposes them as the
:class:`~tailgate.identity.keys.KeyStore` methods. Times are kept as epoch microseconds UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tailgate.identity.keys import KeyInfo

if TYPE_CHECKING:
    from tailgate.store.sql import Tx

_COLUMNS = "id, principal, key_hash, prefix, note, created_at, expires_at, revoked_at"


def _us(t: datetime | None) -> int | None:
    return None if t is None else round(t.timestamp() * 1_000_000)


def _time(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1_000_000, UTC)


def _info(row: Sequence[Any]) -> KeyInfo:
    return KeyInfo(
        id=row[0],
        principal=row[1],
        key_hash=row[2],
        prefix=row[3],
        note=row[4],
        created_at=datetime.fromtimestamp(row[5] / 1_000_000, UTC),
        expires_at=_time(row[6]),
        revoked_at=_time(row[7]),
    )


def insert_key(tx: Tx, info: KeyInfo) -> None:
    tx.execute(
        f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            info.id,
            info.principal,
            info.key_hash,
            info.prefix,
            info.note,
            _us(info.created_at),
            _us(info.expires_at),
            _us(info.revoked_at),
        ),
    )


def all_keys(tx: Tx) -> list[KeyInfo]:
    return [_info(r) for r in tx.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")]


def revoke(tx: Tx, key_id: str, now: datetime) -> bool:
    """Revoke an active key; ``False`` if there is no such key or it was revoked already."""
    rows = tx.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING id",
        (_us(now), key_id),
    )
    return bool(rows)


def key_by_hash(tx: Tx, key_hash: str) -> KeyInfo | None:
    rows = tx.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,))
    return _info(rows[0]) if rows else None
