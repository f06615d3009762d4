"""The request log store. :func:`open_store` picks the backend from ``server.database``."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from tailgate.store.base import (
    USAGE_ROW_COLUMNS,
    Page,
    RecordFilter,
    SessionFilter,
    SessionSummary,
    Store,
    Totals,
    Tx,
    UsageDimension,
    UsageQuery,
    UsageRow,
)
from tailgate.store.postgres import PostgresStore
from tailgate.store.sqlite import SQLiteStore

__all__ = [
    "USAGE_ROW_COLUMNS",
    "Page",
    "PostgresStore",
    "RecordFilter",
    "SQLiteStore",
    "SessionFilter",
    "SessionSummary",
    "Store",
    "Totals",
    "Tx",
    "UsageDimension",
    "UsageQuery",
    "UsageRow",
    "default_database_path",
    "open_store",
]


def default_database_path() -> str:
    """``$XDG_DATA_HOME/tailgate/tailgate.db``, else ``~/.local/share/tailgate/tailgate.db``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "tailgate", "tailgate.db")


def open_store(url: str) -> Store:
    """``""`` → SQLite in the user data dir; a path or ``sqlite:///path`` → SQLite;
    ``postgresql://`` or ``postgres://`` → PostgreSQL. Migrations are not applied here."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if url == "":
        return SQLiteStore(default_database_path())
    if url.startswith("sqlite:"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"a sqlite URL names a local file: sqlite:///path, not {url!r}")
        return SQLiteStore(unquote(parts.path))
    if "://" in url:
        raise ValueError(f"unsupported database URL scheme: {url.split('://', maxsplit=1)[0]!r}")
    return SQLiteStore(os.path.expanduser(url))
