"""The ``server`` section: tailgate's own settings (listeners, database, limits, identity).

A listener or database that cannot be understood is an error (the gateway must not serve on,
or record into, a place nobody asked for); every other bad value is a warning and keeps its
default.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar

from tailgate.config.fields import Reader, did_you_mean
from tailgate.config.grants import DEFAULT_CAPABILITY
from tailgate.config.hujson import key_path
from tailgate.config.model import IdentitySettings, ServerSettings
from tailgate.config.units import parse_byte_size, parse_seconds

SERVER_KEYS = (
    "listen",
    "database",
    "max_body_bytes",
    "upstream_connect_timeout",
    "upstream_timeout",
    "workers",
    "public_url",
    "recording",
    "identity",
)
RECORDING_MODES = ("process", "thread")
IDENTITY_KEYS = (
    "sources",
    "tailscale_socket",
    "whois_timeout",
    "whois_cache_ttl",
    "capability",
    "serve_headers",
)
IDENTITY_SOURCES = ("whois", "serve", "keys", "loopback")
SERVE_HEADER_MODES = ("off", "unix", "loopback")
_HOST = re.compile(r"\[[0-9A-Fa-f:.%a-zA-Z]+\]|[A-Za-z0-9.\-_]*")
_N = TypeVar("_N", int, Decimal)


def listen_problem(address: str) -> str | None:
    """Why ``address`` is not ``host:port`` or ``unix:/path``; None when it is fine."""
    if address.startswith("unix:"):
        return None if address[5:] else "unix: needs a socket path"
    host, colon, port = address.rpartition(":")
    if not colon and address.isdigit():
        return f'"{address}" needs a host, as in 127.0.0.1:{address}'
    if not colon:
        return f'"{address}" is not host:port or unix:/path'
    if not port.isdigit() or int(port) > 65535:
        return f'"{address}" has an invalid port'
    if not _HOST.fullmatch(host):
        return f'"{address}" has an invalid host (IPv6 addresses go in brackets: [::1]:8080)'
    return None


def database_problem(url: str) -> str | None:
    """Why ``url`` is not ``""``, a file path, ``sqlite:///path`` or ``postgresql://…``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    if scheme in ("postgresql", "postgres"):
        return None if rest else "a postgresql:// URL needs a host or a database"
    if scheme == "sqlite":
        return (
            None if rest.startswith("/") and len(rest) > 1 else "use sqlite:///absolute/path or a plain path"
        )
    return f'unsupported database scheme "{scheme}" (use a file path, sqlite:///path or postgresql://…)'


def read_server(reader: Reader, value: object) -> ServerSettings:
    """The ``server`` object (absent → the defaults)."""
    defaults = ServerSettings()
    fields = reader.obj(value, "server", SERVER_KEYS)
    if fields is None:
        return defaults
    listen = _listen(reader, fields.get("listen"))
    database = reader.string(fields, "database", "server")
    problem = database_problem(database)
    if problem is not None:
        reader.problems.errors.append(f"server.database: {problem}")
    workers = reader.integer(fields, "workers", "server", defaults.workers)
    if workers < 0:
        reader.warn("server.workers must be 0 (one per CPU core) or more; using the default")
        workers = defaults.workers
    public_url = reader.string(fields, "public_url", "server").rstrip("/")
    if public_url and not public_url.startswith(("http://", "https://")):
        reader.warn(
            f'server.public_url "{fields["public_url"]}" must start with http:// or https://; ignored'
        )
        public_url = ""
    recording = reader.string(fields, "recording", "server") or defaults.recording
    if recording not in RECORDING_MODES:
        reader.warn(f'server.recording must be "process" or "thread", not "{recording}"; using "process"')
        recording = defaults.recording
    return ServerSettings(
        listen=listen or defaults.listen,
        database=database,
        max_body_bytes=_positive(
            reader, fields, "server", "max_body_bytes", parse_byte_size, defaults.max_body_bytes
        ),
        upstream_connect_timeout=_seconds(
            reader, fields, "server", "upstream_connect_timeout", defaults.upstream_connect_timeout
        ),
        upstream_timeout=_seconds(reader, fields, "server", "upstream_timeout", defaults.upstream_timeout),
        identity=_identity(reader, fields.get("identity")),
        workers=workers,
        public_url=public_url,
        recording=recording,
    )


def _listen(reader: Reader, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or not all(isinstance(item, str) for item in entries):
        reader.problems.errors.append("server.listen: expected a string or an array of strings")
        return ()
    addresses = tuple(reader.expand(item).strip() for item in entries)
    for address in addresses:
        problem = listen_problem(address)
        if problem is not None:
            reader.problems.errors.append(f"server.listen: {problem}")
    if not addresses:
        reader.problems.errors.append("server.listen: needs at least one address")
    return addresses


def _identity(reader: Reader, value: object) -> IdentitySettings:
    path = key_path("server", "identity")
    defaults = IdentitySettings()
    fields = reader.obj(value, path, IDENTITY_KEYS)
    if fields is None:
        return defaults
    sources = reader.strings(fields, "sources", path)
    unknown = [source for source in sources if source not in IDENTITY_SOURCES]
    for source in unknown:
        reader.warn(
            f'{path}.sources: unknown identity source "{source}"{did_you_mean(source, IDENTITY_SOURCES)}'
            f" (expected: {', '.join(IDENTITY_SOURCES)})"
        )
    sources = tuple(dict.fromkeys(source for source in sources if source in IDENTITY_SOURCES))
    if "sources" in fields and not sources:
        reader.warn(f"{path}.sources: no valid identity source; using the default")
    capability = reader.string(fields, "capability", path, defaults.capability).strip()
    return IdentitySettings(
        sources=sources or defaults.sources,
        tailscale_socket=reader.string(fields, "tailscale_socket", path) or None,
        whois_timeout=_seconds(reader, fields, path, "whois_timeout", defaults.whois_timeout),
        whois_cache_ttl=_seconds(
            reader, fields, path, "whois_cache_ttl", defaults.whois_cache_ttl, zero=True
        ),
        capability=capability or DEFAULT_CAPABILITY,
        serve_headers=reader.choice(
            fields,
            "serve_headers",
            path,
            SERVE_HEADER_MODES,
            defaults.serve_headers,
            f"{path}.serve_headers must be one of {', '.join(SERVE_HEADER_MODES)}, not",
        ),
    )


def _seconds(
    reader: Reader, fields: Mapping[str, Any], path: str, key: str, default: float, *, zero: bool = False
) -> float:
    def parse(value: object) -> Decimal:
        return parse_seconds(reader.expand(value) if isinstance(value, str) else value)

    seconds = _positive(reader, fields, path, key, parse, Decimal(str(default)), zero=zero)
    return float(seconds)


def _positive(
    reader: Reader,
    fields: Mapping[str, Any],
    path: str,
    key: str,
    parse: Callable[[Any], _N],
    default: _N,
    *,
    zero: bool = False,
) -> _N:
    value = fields.get(key)
    if value is None:
        return default
    try:
        parsed = parse(value)
    except ValueError as exc:
        reader.warn(f"{key_path(path, key)}: {exc}; using the default")
        return default
    if parsed < 0 or (parsed == 0 and not zero):
        reader.warn(
            f"{key_path(path, key)} must be {'zero or more' if zero else 'more than zero'}; using the default"
        )
        return default
    return parsed
