"""The configuration, as frozen values. Parsing and validation live in :mod:`tailgate.config.loader`.

The file format and keys are Aperture's (``providers``, ``grants``, ``quotas``, ``hooks``,
``database`` …); tailgate's own settings live under the top-level ``server`` object.
Money is integer nanodollars ($1 = 10**9).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

NANODOLLARS_PER_DOLLAR = 1_000_000_000

COMPATIBILITY_FLAGS = (
    "openai_chat",
    "openai_responses",
    "anthropic_messages",
    "gemini_generate_content",
    "google_generate_content",
    "google_raw_predict",
    "bedrock_model_invoke",
    "bedrock_converse",
    "experimental_gemini_cli_vertex_compat",
)

AUTHORIZATION_TYPES = ("bearer", "x-api-key", "x-goog-api-key", "hec", "cf-aig-authorization")


@dataclass(frozen=True, slots=True)
class Compatibility:
    """Which client-facing endpoints a provider serves. Aperture's defaults: chat only."""

    openai_chat: bool = True
    openai_responses: bool = False
    anthropic_messages: bool = False
    gemini_generate_content: bool = False
    google_generate_content: bool = False
    google_raw_predict: bool = False
    bedrock_model_invoke: bool = False
    bedrock_converse: bool = False
    experimental_gemini_cli_vertex_compat: bool = False

    def enabled(self, flag: str) -> bool:
        return bool(getattr(self, flag, False))

    def as_dict(self) -> dict[str, bool]:
        return {flag: self.enabled(flag) for flag in COMPATIBILITY_FLAGS}


@dataclass(frozen=True, slots=True)
class CostMapEntry:
    match: str
    """A Go ``path.Match`` glob over the model id (``*`` never crosses ``/``)."""
    as_model: str
    adjustment: Decimal = Decimal(1)


@dataclass(frozen=True, slots=True)
class Provider:
    id: str
    models: tuple[str, ...]
    type: str = "http"
    """``http`` (a real upstream at ``baseurl``) or ``demo`` (the built-in demo provider)."""
    baseurl: str = ""
    apikey: str = field(default="", repr=False)
    authorization: str = "bearer"
    name: str = ""
    description: str = ""
    compatibility: Compatibility = Compatibility()
    cost_basis: str | None = None
    model_cost_map: tuple[CostMapEntry, ...] = ()
    preference: int = 0
    disabled: bool = False
    add_headers: tuple[tuple[str, str], ...] = ()
    auth_mode: str = "override"
    """``override`` (inject ``apikey``), ``passthrough`` (forward the client's own credential,
    falling back to ``apikey``) or ``none`` (send no credential)."""


@dataclass(frozen=True, slots=True)
class BucketRef:
    template: str
    """A quota name, optionally with a template after a ``prefix:`` (``daily:<user>``)."""


@dataclass(frozen=True, slots=True)
class SendHook:
    name: str
    events: tuple[str, ...] = ()
    send: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Capability:
    """One object in a grant's ``app["tailscale.com/cap/aperture"]`` array."""

    role: str | None = None
    models: tuple[str, ...] = ()
    """``provider/model`` globs; empty means the object is *floating* (applies to any model)."""
    quotas: tuple[BucketRef, ...] = ()
    add_headers: tuple[tuple[str, str], ...] = ()
    send_hooks: tuple[SendHook, ...] = ()
    read_metrics: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Fields parsed and kept but not acted on (CORS, connectors, chat UI …)."""


@dataclass(frozen=True, slots=True)
class Grant:
    src: tuple[str, ...]
    capabilities: tuple[Capability, ...] = ()
    other_capabilities: Mapping[str, Any] = field(default_factory=dict)
    """App capabilities other than the gateway's own, passed to hooks untouched."""
    origin: str = "grants"
    """Where the grant came from: ``grants[3]``, ``temp_grants[0]``, or ``tailnet policy``."""


@dataclass(frozen=True, slots=True)
class QuotaDef:
    name: str
    capacity: int
    """Nanodollars; the bucket's maximum and starting balance."""
    rate_amount: int
    """Nanodollars refilled per ``rate_period`` seconds, continuously."""
    rate_period: int
    rate_text: str = ""
    capacity_text: str = ""
    on_exceed: str = "reject"
    invalid: str | None = None
    """Why the definition could not be parsed; requests that reference it are refused (429)."""


@dataclass(frozen=True, slots=True)
class HookDef:
    name: str
    url: str = ""
    apikey: str = field(default="", repr=False)
    authorization: str = "bearer"
    timeout: float = 5.0
    disabled: bool = False
    fail_policy: str = "fail_open"
    preference: int = 0


@dataclass(frozen=True, slots=True)
class Retention:
    duration: int | None = None
    """Seconds to keep captures; ``None`` keeps them forever, ``0`` never stores bodies."""
    require_export: bool = False
    purge: tuple[str, ...] = ("captures",)


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    retention: Retention = Retention()
    filterable_headers: tuple[tuple[str, bool], ...] = ()
    """(header name, redact_values) pairs from ``database.headers.filterable``."""


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    sources: tuple[str, ...] = ("whois", "serve", "keys", "loopback")
    """Identity sources, tried in order. ``whois`` is skipped when no tailscaled socket exists
    unless ``tailscale_socket`` is set explicitly."""
    tailscale_socket: str | None = None
    whois_timeout: float = 2.0
    whois_cache_ttl: float = 2.0
    capability: str = "tailscale.com/cap/aperture"
    serve_headers: str = "off"
    """``off``, ``unix`` (trust serve headers on the Unix-socket listener) or ``loopback``."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: tuple[str, ...] = ("127.0.0.1:8080",)
    """``host:port`` or ``unix:/path`` listeners."""
    database: str = ""
    """``""`` = a SQLite file in the user's data directory; a path; or a ``postgresql://`` URL."""
    max_body_bytes: int = 32 * 1024 * 1024
    upstream_connect_timeout: float = 10.0
    upstream_timeout: float = 600.0
    """Seconds to wait for the upstream's response head, and between two body chunks."""
    identity: IdentitySettings = IdentitySettings()
    workers: int = 0
    """Worker processes; ``0`` means one per CPU core."""
    public_url: str = ""
    """How clients reach this gateway (``http://ai``); shown on the quick-start page."""
    recording: str = "process"
    """Where records are metered and stored: ``process`` (a child process per worker, at a lower
    CPU priority) or ``thread`` (a thread of the worker)."""


@dataclass(frozen=True, slots=True)
class Config:
    providers: Mapping[str, Provider] = field(default_factory=dict)
    grants: tuple[Grant, ...] = ()
    quotas: Mapping[str, QuotaDef] = field(default_factory=dict)
    hooks: Mapping[str, HookDef] = field(default_factory=dict)
    database: DatabaseSettings = DatabaseSettings()
    auto_cost_basis: bool = True
    server: ServerSettings = ServerSettings()
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """Accepted top-level sections tailgate does not act on yet (``exporters``, ``mcp``,
    ``connectors``, ``flags``), with macros expanded. May hold secrets: never log it."""
    warnings: tuple[str, ...] = ()
    """Every non-fatal problem found at load (including refused quota definitions)."""
    source_text: str = field(default="", repr=False)
    """The HuJSON text the config was loaded from (for the dashboard's editor)."""
    source_path: str | None = None
