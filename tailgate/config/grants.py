"""Parsing ``grants``, legacy ``temp_grants`` and capability objects; their cross-checks.

:func:`parse_capability` is public: the identity layer uses it for capability objects that
the tailnet policy delivers at run time (WhoIs ``CapMap``). :func:`src_matches` is the pure
rule for whether a principal matches one ``src`` entry.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from tailgate.config.fields import Problems, Reader
from tailgate.config.hujson import key_path
from tailgate.config.model import BucketRef, Capability, Grant, SendHook
from tailgate.identity import LOOPBACK_PRINCIPAL

DEFAULT_CAPABILITY = "tailscale.com/cap/aperture"
ROLES = ("admin", "user")
BUCKET_TEMPLATES = ("<user>", "<node>")
HOOK_EVENTS = ("pre_request", "entire_request", "tool_call_entire_request")
HOOK_SEND = (
    "request_body",
    "user_message",
    "response_body",
    "raw_responses",
    "tools",
    "estimated_cost",
    "grants",
    "quotas",
)
MCP_FIELDS = ("mcp_tools", "mcp_resources", "mcp_templates")
CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods", "Access-Control-Allow-Headers")
NOT_IMPLEMENTED: dict[str, str] = {
    "send_hooks": "hooks",
    "mcp_tools": "MCP",
    "mcp_resources": "MCP",
    "mcp_templates": "MCP",
    "connectors": "connectors",
    "enable_chat_ui": "the chat UI",
    "set_cors": "CORS",
    "cors_paths": "CORS",
    **dict.fromkeys(CORS_HEADERS, "CORS"),
    "filterable_headers": "header filters",
    "direct_paths": "direct provider access",
    "skills": "skills",
}
"""Capability fields accepted and kept in ``Capability.extra`` (or parsed) but not acted on."""
_EXTRA_TYPES: dict[str, str] = {
    **dict.fromkeys(MCP_FIELDS, "string"),
    "connectors": "strings",
    "enable_chat_ui": "boolean",
    "set_cors": "boolean",
    "cors_paths": "strings",
    **dict.fromkeys(CORS_HEADERS, "string"),
    "filterable_headers": "any",
    "direct_paths": "any",
    "skills": "any",
    "read_pricing": "any",
}
CAPABILITY_KEYS = ("role", "models", "quotas", "add_headers", "send_hooks", "read_metrics", *_EXTRA_TYPES)
GRANT_KEYS = ("src", "app", "dst", "ip")
TEMP_GRANT_KEYS = ("src", "grants")
TEMP_GRANT_PROVIDER_KEYS = ("provider", "model")
_TEMPLATE = re.compile(r"<[^<>]*>")


def parse_capability(obj: object, where: str) -> tuple[Capability | None, list[str]]:
    """Parse one capability object (from the config or the tailnet policy) → (capability, warnings).

    The capability is None only when ``obj`` is not an object. No macro expansion is done.
    """
    problems = Problems()
    capability = read_capability(Reader(None, problems), obj, where)
    return capability, problems.warnings


def read_capability(reader: Reader, obj: object, where: str) -> Capability | None:
    """One capability object, with its problems recorded on ``reader``."""
    fields = reader.obj(obj, where, CAPABILITY_KEYS)
    if fields is None:
        return None
    role: str | None = None
    if fields.get("role") is not None:
        role = reader.choice(fields, "role", where, ROLES, "", f"{where}: invalid role")
        role = role or None
    models = fields.get("models")
    if isinstance(models, list):
        globs = reader.strings(fields, "models", where)
    elif models is None or models == "":
        globs = ()
    else:
        globs = reader.strings(fields, "models", where, lenient=True)
    extra: dict[str, Any] = {}
    for key, kind in _EXTRA_TYPES.items():
        if key in fields and fields[key] is not None and _typed(reader, fields, key, where, kind):
            extra[key] = reader.expand_tree(fields[key])
    for key, feature in NOT_IMPLEMENTED.items():
        if fields.get(key) not in (None, False, "", []):
            reader.warn(f'{where}: "{key}" is accepted but {feature} is not implemented yet; ignored')
    return Capability(
        role=role,
        models=globs,
        quotas=_bucket_refs(reader, fields, where),
        add_headers=reader.headers(fields, where, f"{where}: "),
        send_hooks=_send_hooks(reader, fields, where),
        read_metrics=reader.boolean(fields, "read_metrics", where),
        extra=extra,
    )


def _typed(reader: Reader, fields: Mapping[str, Any], key: str, where: str, kind: str) -> bool:
    value = fields[key]
    if kind == "string" and not isinstance(value, str):
        reader.mismatch(key_path(where, key), "a string", value)
        return False
    if kind == "boolean" and not isinstance(value, bool):
        reader.mismatch(key_path(where, key), "a boolean (true or false)", value)
        return False
    if kind == "strings" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        reader.mismatch(key_path(where, key), "an array of strings", value)
        return False
    return True


def bad_template(name: str) -> str | None:
    """The first ``<template>`` in a bucket name that is not ``<user>``/``<node>`` after a ``prefix:``."""
    for match in _TEMPLATE.finditer(name):
        if match.group(0) not in BUCKET_TEMPLATES or ":" not in name[: match.start()]:
            return match.group(0)
    return None


def _bucket_refs(reader: Reader, fields: Mapping[str, Any], where: str) -> tuple[BucketRef, ...]:
    refs = []
    for index, item in enumerate(reader.array(fields, "quotas", where)):
        path = f"{key_path(where, 'quotas')}[{index}]"
        entry = reader.obj(item, path, ("bucket",))
        if entry is None:
            continue
        bucket = reader.string(entry, "bucket", path)
        if not bucket:
            reader.warn(f"{path}: bucket is required")
            continue
        template = bad_template(bucket)
        if template is not None:
            reader.warn(
                f'{where} quotas[{index}]: bucket ref "{bucket}" has unsupported template "{template}"'
                ' (only <user> and <node>, after a "prefix:")'
            )
        refs.append(BucketRef(bucket))
    return tuple(refs)


def _send_hooks(reader: Reader, fields: Mapping[str, Any], where: str) -> tuple[SendHook, ...]:
    hooks = []
    for index, item in enumerate(reader.array(fields, "send_hooks", where)):
        path = f"{key_path(where, 'send_hooks')}[{index}]"
        entry = reader.obj(item, path, ("name", "events", "send"))
        if entry is None:
            continue
        name = reader.string(entry, "name", path)
        if not name:
            reader.warn(f"{path}: name is required")
            continue
        events = reader.strings(entry, "events", path)
        send = reader.strings(entry, "send", path)
        for value, allowed, what in ((events, HOOK_EVENTS, "event"), (send, HOOK_SEND, "send value")):
            for unknown in (v for v in value if v not in allowed):
                reader.warn(f'{path}: unknown {what} "{unknown}" (expected one of: {", ".join(allowed)})')
        hooks.append(SendHook(name, events, send))
    return tuple(hooks)


def read_grants(reader: Reader, value: object, capability_name: str) -> list[Grant]:
    """The ``grants`` array."""
    grants = []
    for where, fields in _entries(reader, value, "grants", GRANT_KEYS):
        for ignored in ("dst", "ip"):
            if ignored in fields:
                reader.note(f"{where}: {ignored} only matters in a tailnet policy file; ignored here")
        capabilities: list[Capability] = []
        others: dict[str, Any] = {}
        app = reader.obj(fields.get("app"), key_path(where, "app")) or {}
        for app_key, caps in app.items():
            app_path = key_path(key_path(where, "app"), app_key)
            if app_key != capability_name:
                others[app_key] = reader.expand_tree(caps)
                continue
            if not isinstance(caps, list):
                reader.mismatch(app_path, "an array of capability objects", caps)
            objects = [caps] if isinstance(caps, dict) else caps if isinstance(caps, list) else []
            for position, cap in enumerate(objects):
                parsed = read_capability(reader, cap, f"{app_path}[{position}]")
                if parsed is not None:
                    capabilities.append(parsed)
        grants.append(Grant(_src(reader, fields, where), tuple(capabilities), others, where))
    return grants


def read_temp_grants(reader: Reader, value: object) -> list[Grant]:
    """The legacy ``temp_grants`` array, translated into :class:`Grant` values."""
    grants = []
    for where, fields in _entries(reader, value, "temp_grants", TEMP_GRANT_KEYS):
        capabilities: list[Capability] = []
        for position, inner in enumerate(reader.array(fields, "grants", where)):
            path = f"{where}.grants[{position}]"
            if not isinstance(inner, dict):
                reader.mismatch(path, "an object", inner)
                continue
            rest = {key: val for key, val in inner.items() if key != "providers"}
            capability = read_capability(reader, rest, path)
            if capability is None:
                continue
            if "providers" not in inner:
                capabilities.append(capability)
                continue
            for glob in _temp_grant_models(reader, inner, path):
                capabilities.append(replace(capability, models=(glob,)))
        grants.append(Grant(_src(reader, fields, where), tuple(capabilities), {}, where))
    return grants


def _temp_grant_models(reader: Reader, inner: Mapping[str, Any], path: str) -> list[str]:
    globs = []
    for index, item in enumerate(reader.array(inner, "providers", path)):
        entry_path = f"{path}.providers[{index}]"
        entry = reader.obj(item, entry_path, TEMP_GRANT_PROVIDER_KEYS)
        if entry is None:
            continue
        provider = reader.string(entry, "provider", entry_path)
        model = reader.string(entry, "model", entry_path, "*")
        if not provider:
            reader.warn(f"{entry_path}: provider is required")
            continue
        globs.append(f"{provider}/**" if model in ("*", "**", "") else f"{provider}/{model}")
    return globs


def _src(reader: Reader, fields: Mapping[str, Any], where: str) -> tuple[str, ...]:
    if "src" not in fields:
        reader.warn(f"{where}: src is required; this grant applies to nobody")
    return reader.strings(fields, "src", where)


def src_matches(entry: str, principal: str, tags: Collection[str] = (), groups: Collection[str] = ()) -> bool:
    """Whether one grant ``src`` entry matches a caller.

    ``*`` matches everyone; ``(loopback)`` the loopback principal; ``group:x`` (and a SCIM
    group's e-mail) a group the caller is in; a tag entry the caller's sorted, comma-joined
    tag string exactly; anything else the principal (login name) exactly.
    """
    if entry == "*":
        return True
    if entry == LOOPBACK_PRINCIPAL:
        return principal == LOOPBACK_PRINCIPAL
    if entry.startswith("tag:"):
        return entry == (",".join(sorted(tags)) if tags else principal)
    if entry.startswith("group:"):
        return entry in groups
    return entry == principal or entry in groups


def grants_admin(
    grants: Iterable[Grant], principal: str, tags: Collection[str] = (), groups: Collection[str] = ()
) -> bool:
    """Whether some grant whose ``src`` matches the caller gives the admin role."""
    return any(
        any(src_matches(entry, principal, tags, groups) for entry in grant.src)
        and any(cap.role == "admin" for cap in grant.capabilities)
        for grant in grants
    )


def reference_problems(
    grants: Iterable[Grant],
    providers: Collection[str],
    quotas: Collection[str],
    hooks: Collection[str],
    mcp_servers: Collection[str] | None,
) -> list[str]:
    """Grant references to providers, quotas, hooks and MCP servers that are not declared.

    ``mcp_servers`` is None when servers may register at run time (nothing to check against).
    """
    problems = []
    for grant in grants:
        for cap in grant.capabilities:
            for pattern in cap.models:
                name = pattern.split("/", 1)[0]
                if name != "**" and not any(fnmatch.fnmatchcase(p, name) for p in providers):
                    problems.append(
                        f'{grant.origin}: models pattern "{pattern}" references provider "{name}"'
                        " which does not match any declared provider"
                    )
            for field_name in MCP_FIELDS:
                mcp_pattern = cap.extra.get(field_name)
                if mcp_servers is None or not isinstance(mcp_pattern, str):
                    continue
                name = mcp_pattern.split("/", 1)[0]
                if name != "**" and not any(fnmatch.fnmatchcase(s, name) for s in mcp_servers):
                    problems.append(
                        f'{grant.origin}: {field_name} pattern "{mcp_pattern}" references server "{name}"'
                        " which does not match any declared MCP server"
                    )
            problems.extend(
                f'{grant.origin}: send_hooks references undefined hook "{hook.name}"'
                for hook in cap.send_hooks
                if hook.name not in hooks
            )
            problems.extend(
                f'{grant.origin}: quotas references undefined quota "{ref.template}"'
                for ref in cap.quotas
                if ref.template not in quotas
            )
    return problems


def _entries(
    reader: Reader, value: object, name: str, keys: Collection[str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each object of the array ``name`` with its path (``grants[2]``); a wrong shape is reported."""
    if value is None:
        return
    if not isinstance(value, list):
        reader.mismatch(name, "an array", value)
        return
    for index, item in enumerate(value):
        where = f"{name}[{index}]"
        fields = reader.obj(item, where, keys)
        if fields is not None:
            yield where, fields
