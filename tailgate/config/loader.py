"""Loading and validating the config: Aperture-compatible HuJSON text → :class:`Config`.

A load sorts what it finds into four lists (:class:`LoadResult`):

* ``errors`` — the text cannot be used (bad HuJSON, unresolved ``${VAR}``, a bad listener or
  database); ``config`` is None.
* ``fail_closed`` — a bad quota definition. The config still loads, with that quota marked
  ``invalid``, so the running gateway refuses (429) exactly the requests that reference it.
  Validation and saves treat these as errors. They are listed in ``warnings`` too, so whatever
  reports the warnings reports them.
* ``warnings`` — the messages of Aperture's validator (unknown keys, type mismatches, dangling
  references, …). Startup and reload log them and go on; a save through the API is refused.
* ``notes`` — accepted legacy or ignored fields; informational only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tailgate.config import hujson
from tailgate.config.fields import Problems, Reader, did_you_mean, macro_names
from tailgate.config.grants import (
    CAPABILITY_KEYS,
    DEFAULT_CAPABILITY,
    GRANT_KEYS,
    HOOK_EVENTS,
    HOOK_SEND,
    ROLES,
    TEMP_GRANT_KEYS,
    TEMP_GRANT_PROVIDER_KEYS,
    bad_template,
    grants_admin,
    parse_capability,
    read_grants,
    read_temp_grants,
    reference_problems,
    src_matches,
)
from tailgate.config.hujson import key_path
from tailgate.config.model import (
    AUTHORIZATION_TYPES,
    COMPATIBILITY_FLAGS,
    Compatibility,
    Config,
    CostMapEntry,
    HookDef,
    Provider,
    QuotaDef,
)
from tailgate.config.sections import (
    DATABASE_KEYS,
    FLAGS,
    MCP_KEYS,
    PURGE_TARGETS,
    RETENTION_KEYS,
    S3_KEYS,
    read_database,
    read_extras,
)
from tailgate.config.server import (
    IDENTITY_KEYS,
    IDENTITY_SOURCES,
    SERVE_HEADER_MODES,
    SERVER_KEYS,
    read_server,
)
from tailgate.config.units import (
    RATE_PERIODS,
    parse_dollars,
    parse_rate,
    parse_seconds,
    type_name,
)

__all__ = [
    "ACCEPTED_KEYS",
    "ACCEPTED_VALUES",
    "AdminCheck",
    "LoadResult",
    "load_config",
    "load_config_file",
    "parse_capability",
    "src_matches",
    "validate_for_save",
]

EMPTY_CONFIG = "config must not be empty"
NO_ADMIN = "no grant in grants or temp_grants assigns role:admin; nobody will be able to manage this instance"
TOP_LEVEL_KEYS = (
    "providers",
    "grants",
    "temp_grants",
    "quotas",
    "hooks",
    "exporters",
    "auto_cost_basis",
    "mcp",
    "connectors",
    "database",
    "flags",
    "server",
)
PROVIDER_KEYS = (
    "type",
    "baseurl",
    "apikey",
    "authorization",
    "models",
    "name",
    "description",
    "compatibility",
    "cost_basis",
    "model_cost_map",
    "preference",
    "disabled",
    "add_headers",
    "auth_mode",
    "tailnet",
    "upstream",
)
PROVIDER_TYPES = ("http", "demo")
AUTH_MODES = ("override", "passthrough", "none")
COST_BASES = (
    "anthropic",
    "openai",
    "google",
    "vertex",
    "bedrock",
    "bedrock-us",
    "bedrock-eu",
    "bedrock-ap",
    "azure",
    "azure-eu",
    "openrouter",
    "vercel",
)
COST_MAP_KEYS = ("match", "as", "adjustment")
QUOTA_KEYS = ("capacity", "rate", "on_exceed")
HOOK_KEYS = ("url", "apikey", "authorization", "timeout", "disabled", "fail_policy", "preference")
FAIL_POLICIES = ("fail_open", "fail_closed")

ACCEPTED_KEYS: Mapping[str, tuple[str, ...]] = {
    "(top level)": TOP_LEVEL_KEYS,
    "providers.<id>": PROVIDER_KEYS,
    "providers.<id>.compatibility": COMPATIBILITY_FLAGS,
    "providers.<id>.model_cost_map[]": COST_MAP_KEYS,
    "grants[]": GRANT_KEYS,
    "capability object": CAPABILITY_KEYS,
    "capability quotas[]": ("bucket",),
    "capability send_hooks[]": ("name", "events", "send"),
    "temp_grants[]": TEMP_GRANT_KEYS,
    "temp_grants[].grants[].providers[]": TEMP_GRANT_PROVIDER_KEYS,
    "quotas.<name>": QUOTA_KEYS,
    "hooks.<name>": HOOK_KEYS,
    "exporters": ("s3",),
    "exporters.s3": S3_KEYS,
    "mcp": MCP_KEYS,
    "mcp.servers.<id>": ("url",),
    "connectors": ("servers",),
    "flags": FLAGS,
    "flags.<flag>": ("value",),
    "database": DATABASE_KEYS,
    "database.retention": RETENTION_KEYS,
    "database.headers": ("filterable",),
    "database.headers.filterable[]": ("name", "redact_values"),
    "server": SERVER_KEYS,
    "server.identity": IDENTITY_KEYS,
}
"""Every key the loader accepts, by where it may appear (the docs are tested against it)."""

ACCEPTED_VALUES: Mapping[str, tuple[str, ...]] = {
    "providers.<id>.type": PROVIDER_TYPES,
    "providers.<id>.authorization": AUTHORIZATION_TYPES,
    "providers.<id>.auth_mode": AUTH_MODES,
    "providers.<id>.cost_basis": COST_BASES,
    "role": ROLES,
    "send_hooks[].events": HOOK_EVENTS,
    "send_hooks[].send": HOOK_SEND,
    "quotas.<name>.rate units": tuple(RATE_PERIODS),
    "hooks.<name>.fail_policy": FAIL_POLICIES,
    "database.retention.purge": PURGE_TARGETS,
    "server.identity.sources": IDENTITY_SOURCES,
    "server.identity.serve_headers": SERVE_HEADER_MODES,
}
"""Every enumerated value the loader accepts."""

AdminCheck = Callable[[Config], bool]
"""Whether the saving principal would hold the admin role under a candidate config."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    config: Config | None
    """None exactly when ``errors`` is not empty."""
    errors: list[str]
    warnings: list[str]
    """Every non-fatal problem, refused quota definitions (``fail_closed``) first."""
    fail_closed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """What validation reports and a save refuses: errors, then warnings."""
        return [*self.errors, *self.warnings]


def load_config(text: str, *, environ: Mapping[str, str], path: str | None = None) -> LoadResult:
    """Parse and validate config ``text``; ``path`` is only used in messages and ``source_path``."""
    problems = Problems()
    config = _load(text, environ, path, problems)
    return LoadResult(
        config=config if not problems.errors else None,
        errors=problems.errors,
        warnings=problems.fail_closed + problems.warnings,
        fail_closed=problems.fail_closed,
        notes=problems.notes,
    )


def load_config_file(path: str | os.PathLike[str], environ: Mapping[str, str] = os.environ) -> LoadResult:
    """Read and load a config file (UTF-8, an optional BOM is ignored)."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8-sig") as file:
            text = file.read()
    except OSError as exc:
        return LoadResult(None, [f"cannot read config file {name}: {exc.strerror or exc}"], [])
    except UnicodeDecodeError as exc:
        return LoadResult(None, [f"config file {name} is not UTF-8 (byte {exc.start})"], [])
    return load_config(text, environ=environ, path=name)


def validate_for_save(
    text: str,
    *,
    environ: Mapping[str, str],
    saver: str | None,
    saver_is_admin_now: bool,
    grants_evaluator: AdminCheck | None = None,
) -> list[str]:
    """Why a save of ``text`` must be refused (empty when it may be saved).

    Every warning counts. A save is also refused when the saver is an admin now and would not
    be one under the new config; ``grants_evaluator`` decides that (it should know the saver's
    tags, groups and tailnet-policy grants); without it, only the saver's principal is matched
    against the config's own grants.
    """
    result = load_config(text, environ=environ)
    problems = result.problems
    if result.config is not None and saver is not None and saver_is_admin_now:
        still_admin = (
            grants_evaluator(result.config) if grants_evaluator else grants_admin(result.config.grants, saver)
        )
        if not still_admin:
            problems.append(f"this config would remove your own admin role ({saver}); refusing to save it")
    return problems


def _load(text: str, environ: Mapping[str, str], path: str | None, problems: Problems) -> Config | None:
    text = text.removeprefix("\ufeff")
    if hujson.is_blank(text):
        problems.errors.append(EMPTY_CONFIG)
        return None
    try:
        parsed = hujson.parse(text, parse_float=Decimal)
    except hujson.HujsonError as exc:
        problems.errors.append(f"{path or 'config'}:{exc.line}:{exc.column}: {exc.message}")
        return None
    for dup in parsed.duplicates:
        problems.warnings.append(f'duplicate config key "{dup.path}" (line {dup.line}, column {dup.column})')
    root = parsed.value
    if not isinstance(root, dict):
        problems.errors.append(f"config must be a JSON object, not {type_name(root)}")
        return None
    missing = [name for name in dict.fromkeys(macro_names(root)) if name not in environ]
    if missing:
        problems.errors.append(f"unsubstituted macros: [{', '.join(missing)}]")
    reader = Reader(environ, problems)
    reader.check_keys(root, "", TOP_LEVEL_KEYS)
    server = read_server(reader, root.get("server"))
    providers = _providers(reader, root.get("providers"))
    quotas = _quotas(reader, root.get("quotas"))
    hooks = _hooks(reader, root.get("hooks"))
    database = read_database(reader, root.get("database"))
    extra = read_extras(reader, root)
    grants = read_grants(reader, root.get("grants"), server.identity.capability or DEFAULT_CAPABILITY)
    grants += read_temp_grants(reader, root.get("temp_grants"))
    auto_cost_basis = reader.boolean(root, "auto_cost_basis", "", True)

    mcp = extra.get("mcp", {})
    known_servers = None if mcp.get("accept_registrations") else {*mcp.get("servers", {}), "internal"}
    problems.warnings.extend(reference_problems(grants, providers, quotas, hooks, known_servers))
    if not providers and not mcp.get("servers") and not extra.get("connectors", {}).get("servers"):
        reader.warn("no providers or mcp servers defined; users will not be able to access any models")
    if not any(cap.role == "admin" for grant in grants if grant.src for cap in grant.capabilities):
        reader.warn(NO_ADMIN)
    if providers and not grants:
        reader.warn(
            "providers are configured but no grants or temp_grants defined; all access will be denied"
        )
    if problems.errors:
        return None
    return Config(
        providers=providers,
        grants=tuple(grants),
        quotas=quotas,
        hooks=hooks,
        database=database,
        auto_cost_basis=auto_cost_basis,
        server=server,
        extra=extra,
        warnings=tuple(problems.fail_closed + problems.warnings),
        source_text=text,
        source_path=path,
    )


def _section(reader: Reader, value: object, name: str) -> dict[str, Any]:
    """A top-level map section (``providers``, ``quotas`` …) as a dict; anything else → {}."""
    return reader.obj(value, name) or {}


def _providers(reader: Reader, value: object) -> dict[str, Provider]:
    providers = {}
    for pid, item in _section(reader, value, "providers").items():
        provider = _provider(reader, pid, item)
        if provider is not None:
            providers[pid] = provider
    return providers


def _provider(reader: Reader, pid: str, value: object) -> Provider | None:
    path = key_path("providers", pid)
    fields = reader.obj(value, path, PROVIDER_KEYS)
    if fields is None:
        return None
    if "/" in pid or not pid.strip():
        reader.warn(f'provider id "{pid}" must be non-empty and must not contain "/"')
    kind = reader.choice(fields, "type", path, PROVIDER_TYPES, "http", f"provider {pid} has invalid type")
    baseurl = reader.string(fields, "baseurl", path).strip().rstrip("/")
    if kind == "http" and not baseurl:
        reader.warn(f"provider {pid} has no baseurl configured")
    elif baseurl and not baseurl.startswith(("http://", "https://")):
        reader.warn(
            f"provider {pid} has invalid baseurl (must start with http:// or https://): {fields['baseurl']}"
        )
    if "tailnet" in fields:
        reader.note(f"{path}.tailnet is a legacy field; ignored")
    if "upstream" in fields:
        reader.warn(f"provider {pid}: upstream is not supported yet; ignored")
    cost_basis = reader.string(fields, "cost_basis", path) or None
    if cost_basis is not None and cost_basis not in COST_BASES:
        reader.warn(
            f"provider {pid} has unknown cost_basis: {cost_basis}{did_you_mean(cost_basis, COST_BASES)}"
        )
        cost_basis = None
    return Provider(
        id=pid,
        models=reader.strings(fields, "models", path),
        type=kind,
        baseurl=baseurl,
        apikey=reader.string(fields, "apikey", path),
        authorization=reader.choice(
            fields,
            "authorization",
            path,
            AUTHORIZATION_TYPES,
            "bearer",
            f"provider {pid} has invalid authorization type",
        ),
        name=reader.string(fields, "name", path),
        description=reader.string(fields, "description", path),
        compatibility=_compatibility(reader, pid, fields.get("compatibility")),
        cost_basis=cost_basis,
        model_cost_map=_cost_map(reader, fields, path),
        preference=reader.integer(fields, "preference", path),
        disabled=reader.boolean(fields, "disabled", path),
        add_headers=reader.headers(fields, path, f"provider {pid}: "),
        auth_mode=reader.choice(
            fields, "auth_mode", path, AUTH_MODES, "override", f"provider {pid} has invalid auth_mode"
        ),
    )


def _compatibility(reader: Reader, pid: str, value: object) -> Compatibility:
    """Absent → Aperture's default (``openai_chat`` only); present → the flags it sets, others off."""
    path = key_path(key_path("providers", pid), "compatibility")
    fields = reader.obj(value, path, COMPATIBILITY_FLAGS)
    if fields is None:
        return Compatibility()
    flags = {flag: reader.boolean(fields, flag, path) for flag in COMPATIBILITY_FLAGS}
    if not any(flags.values()):
        reader.warn(f"provider {pid}: compatibility enables no API; no client request can reach it")
    return Compatibility(**flags)


def _cost_map(reader: Reader, fields: Mapping[str, Any], path: str) -> tuple[CostMapEntry, ...]:
    entries = []
    for index, item in enumerate(reader.array(fields, "model_cost_map", path)):
        where = f"{key_path(path, 'model_cost_map')}[{index}]"
        entry = reader.obj(item, where, COST_MAP_KEYS)
        if entry is None:
            continue
        match, as_model = reader.string(entry, "match", where), reader.string(entry, "as", where)
        adjustment = reader.decimal(entry, "adjustment", where)
        if not match or not as_model:
            reader.warn(f'{where}: needs both "match" and "as"; ignored')
        elif not _valid_glob(match):
            reader.warn(f'{where}: match "{match}" is not a valid pattern; ignored')
        elif adjustment is not None and adjustment <= 0:
            reader.warn(f"{where}: adjustment must be more than zero; ignored")
        else:
            entries.append(CostMapEntry(match, as_model, Decimal(1) if adjustment is None else adjustment))
    return tuple(entries)


def _valid_glob(pattern: str) -> bool:
    """Go ``path.Match`` syntax: no dangling ``\\`` and every ``[`` closed."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 1
            if i == len(pattern):
                return False
        elif pattern[i] == "[":
            close = pattern.find("]", i + 2)
            if close < 0:
                return False
            i = close
        i += 1
    return True


def _quotas(reader: Reader, value: object) -> dict[str, QuotaDef]:
    return {name: _quota(reader, name, item) for name, item in _section(reader, value, "quotas").items()}


def _quota(reader: Reader, name: str, value: object) -> QuotaDef:
    """One bucket definition; a bad one is refused (``invalid``), never silently relaxed."""
    fields = value if isinstance(value, dict) else {}
    reader.check_keys(fields, key_path("quotas", name), QUOTA_KEYS)
    capacity_text, rate_text = fields.get("capacity"), fields.get("rate")
    capacity, rate_amount, rate_period, faults = 0, 0, 86_400, []
    if not isinstance(value, dict):
        faults.append(f"must be an object, not {type_name(value)}")
    elif not isinstance(capacity_text, str):
        faults.append('capacity is required, as a string like "$10.00"')
    else:
        try:
            capacity = parse_dollars(reader.expand(capacity_text))
        except ValueError as exc:
            faults.append(f"capacity: {exc}")
    if rate_text is not None and not isinstance(rate_text, str):
        faults.append('rate must be a string like "$5.00/day"')
    elif rate_text:
        try:
            rate_amount, rate_period = parse_rate(reader.expand(rate_text))
        except ValueError as exc:
            faults.append(f"rate: {exc}")
    on_exceed = reader.expand_tree(fields.get("on_exceed"))
    if on_exceed not in ("reject", None):
        faults.append(f'on_exceed "{on_exceed}" is not supported (only "reject")')
    for fault in faults:
        reader.problems.fail_closed.append(f"quota {name}: {fault}")
    template = bad_template(name)
    if template is not None:
        where = "after colon" if ":" in name.partition(template)[0] else 'without a "prefix:" before it'
        reader.warn(f'quota "{name}": quota name "{name}" has unsupported template "{template}" {where}')
        faults.append(f'unsupported template "{template}" in its name')
    return QuotaDef(
        name=name,
        capacity=capacity,
        rate_amount=rate_amount,
        rate_period=rate_period,
        rate_text=rate_text if isinstance(rate_text, str) else "",
        capacity_text=capacity_text if isinstance(capacity_text, str) else "",
        invalid="; ".join(faults) or None,
    )


def _hooks(reader: Reader, value: object) -> dict[str, HookDef]:
    hooks = {}
    for name, item in _section(reader, value, "hooks").items():
        path = key_path("hooks", name)
        fields = reader.obj(item, path, HOOK_KEYS)
        if fields is None:
            continue
        url = reader.string(fields, "url", path).strip()
        if not url:
            reader.warn(f"hook {name} has no url configured")
        elif not url.startswith(("http://", "https://")):
            reader.warn(f"hook {name} has invalid URL scheme (must be http:// or https://): {fields['url']}")
        timeout = 5.0
        if fields.get("timeout") is not None:
            try:
                timeout = float(parse_seconds(reader.expand_tree(fields["timeout"])))
            except ValueError:
                reader.warn(f"hook {name} has invalid timeout: {fields['timeout']}")
        hooks[name] = HookDef(
            name=name,
            url=url,
            apikey=reader.string(fields, "apikey", path),
            authorization=reader.choice(
                fields,
                "authorization",
                path,
                AUTHORIZATION_TYPES,
                "bearer",
                f"hook {name} has invalid authorization type",
            ),
            timeout=max(timeout, 0.0),
            disabled=reader.boolean(fields, "disabled", path),
            fail_policy=reader.choice(
                fields,
                "fail_policy",
                path,
                FAIL_POLICIES,
                "fail_open",
                f"hook {name} has invalid fail_policy",
            ),
            preference=reader.integer(fields, "preference", path),
        )
    return hooks
