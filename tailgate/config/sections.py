"""The smaller top-level sections: ``database``, and the accepted but not yet implemented
``exporters``, ``mcp``, ``connectors`` and ``flags`` (checked, kept in ``Config.extra``)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from tailgate.config.fields import Reader
from tailgate.config.hujson import key_path
from tailgate.config.model import DatabaseSettings, Retention
from tailgate.config.units import parse_duration

DATABASE_KEYS = ("retention", "headers")
RETENTION_KEYS = ("duration", "require_export", "purge")
PURGE_TARGETS = ("captures", "tools")
MIN_RETENTION = 3600
MAX_RETENTION = 3650 * 86_400
S3_KEYS = ("bucket_name", "region", "endpoint", "prefix", "access_key_id", "access_secret", "every", "limit")
S3_MAX_LIMIT = 10_000
MCP_KEYS = ("accept_registrations", "servers")
FLAGS = ("connectors", "chat_ui")


def read_database(reader: Reader, value: object) -> DatabaseSettings:
    """The ``database`` section (absent → the defaults)."""
    fields = reader.obj(value, "database", DATABASE_KEYS)
    if fields is None:
        return DatabaseSettings()
    retention = Retention()
    section = reader.obj(fields.get("retention"), "database.retention", RETENTION_KEYS)
    if section is not None:
        purge = (
            reader.strings(section, "purge", "database.retention") if "purge" in section else retention.purge
        )
        for target in purge:
            if target not in PURGE_TARGETS:
                reader.warn(
                    f'database.retention.purge: unknown target "{target}" (expected captures or tools)'
                )
        retention = Retention(
            duration=_retention_seconds(reader, section),
            require_export=reader.boolean(section, "require_export", "database.retention"),
            purge=tuple(target for target in purge if target in PURGE_TARGETS),
        )
    filterable = []
    headers = reader.obj(fields.get("headers"), "database.headers", ("filterable",))
    for index, item in enumerate(reader.array(headers or {}, "filterable", "database.headers")):
        where = f"database.headers.filterable[{index}]"
        entry = reader.obj(item, where, ("name", "redact_values"))
        name = reader.string(entry, "name", where).strip().lower() if entry is not None else ""
        if entry is not None and not name:
            reader.warn(f"{where}: name is required")
        elif entry is not None:
            filterable.append((name, reader.boolean(entry, "redact_values", where)))
    return DatabaseSettings(retention=retention, filterable_headers=tuple(filterable))


def _retention_seconds(reader: Reader, section: Mapping[str, Any]) -> int | None:
    """``duration``: ``""`` → None (forever), ``"0"`` → 0, else clamped to [1h, 3650d]."""
    written = reader.string(section, "duration", "database.retention").strip()
    if not written:
        return None
    try:
        seconds = parse_duration(written, allow_days=True)
    except ValueError as exc:
        reader.warn(f"database.retention.duration: {exc}; captures are kept forever")
        return None
    if seconds == 0:
        return 0
    if seconds < MIN_RETENTION or seconds > MAX_RETENTION:
        bound = MIN_RETENTION if seconds < MIN_RETENTION else MAX_RETENTION
        reader.warn(
            f'database.retention.duration "{written}" must be between 1h and 3650d, or "0"; using {bound}s'
        )
        return bound
    return int(seconds)


def read_extras(reader: Reader, root: Mapping[str, Any]) -> dict[str, Any]:
    """``exporters``, ``mcp``, ``connectors`` and ``flags``: checked, kept, not acted on."""
    extra: dict[str, Any] = {}
    exporters = reader.obj(root.get("exporters"), "exporters", ("s3",))
    if exporters is not None:
        s3 = reader.obj(exporters.get("s3"), "exporters.s3", S3_KEYS)
        if s3 is not None:
            s3 = reader.expand_tree(s3)
            for key in ("bucket_name", "region", "endpoint", "prefix", "access_key_id", "access_secret"):
                reader.raw_string(s3, key, "exporters.s3")
            if str(s3.get("prefix") or "").endswith("/"):
                reader.warn("exporters.s3.prefix must not end with a slash")
            if reader.integer(s3, "limit", "exporters.s3", 1000) > S3_MAX_LIMIT:
                s3["limit"] = S3_MAX_LIMIT
            reader.integer(s3, "every", "exporters.s3")
            if s3.get("bucket_name"):
                reader.warn("exporters.s3: S3 export is not implemented yet; nothing will be exported")
            extra["exporters"] = {"s3": s3}
    mcp = reader.obj(root.get("mcp"), "mcp", MCP_KEYS)
    if mcp is not None:
        servers = _servers(reader, mcp, "mcp", "mcp server", ("url",))
        if servers or reader.boolean(mcp, "accept_registrations", "mcp"):
            reader.warn("mcp: MCP proxying is not implemented yet; no MCP server will be reached")
        extra["mcp"] = {"accept_registrations": mcp.get("accept_registrations") is True, "servers": servers}
    connectors = reader.obj(root.get("connectors"), "connectors", ("servers",))
    if connectors is not None:
        servers = _servers(reader, connectors, "connectors", "connector", None)
        for cid in servers:
            if not (cid[:1].isalpha() and cid.isalnum() and cid.isascii()):
                reader.warn(f'connector id "{cid}" must start with a letter and hold only letters and digits')
        if servers:
            reader.warn("connectors: connectors are not implemented yet; no connector will be reached")
        extra["connectors"] = {"servers": servers}
    flags = reader.obj(root.get("flags"), "flags", FLAGS)
    if flags is not None:
        for name, item in flags.items():
            entry = reader.obj(item, key_path("flags", name), ("value",))
            enabled = entry is not None and reader.boolean(entry, "value", key_path("flags", name))
            if name == "connectors":
                reader.note("flags.connectors is deprecated and has no effect")
            elif name == "chat_ui" and enabled:
                reader.warn("flags.chat_ui: the chat UI is not implemented yet")
        extra["flags"] = reader.expand_tree(flags)
    return extra


def _servers(
    reader: Reader, section: Mapping[str, Any], path: str, what: str, known: Collection[str] | None
) -> dict[str, Any]:
    servers = {}
    for sid, item in (reader.obj(section.get("servers"), f"{path}.servers") or {}).items():
        where = key_path(f"{path}.servers", sid)
        entry = reader.obj(item, where, known)
        if entry is None:
            continue
        if not reader.string(entry, "url", where).strip():
            reader.warn(f"{what} {sid} has no url configured")
        servers[sid] = reader.expand_tree(entry)
    return servers
