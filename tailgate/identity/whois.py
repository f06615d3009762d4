"""Who a WhoIs answer names: a user, or a tagged node named by its sorted tags."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tailgate.errors import AccessDenied, IdentityUnavailable
from tailgate.identity import Identity, IdentityKind, IdentitySource

log = logging.getLogger(__name__)

TAGGED_DEVICES_LOGIN = "tagged-devices"
"""The placeholder login every tagged node is owned by; never a principal."""


def split_capabilities(
    capmap: Mapping[str, Any], capability: str
) -> tuple[tuple[Mapping[str, Any], ...], dict[str, Any]]:
    """The values of ``capability`` (or its ``https://`` spelling), and every other capability.

    ``null`` means the capability is present with no values. Values that are not JSON objects
    cannot be capability objects and are dropped with a warning.
    """
    names = {capability, "https://" + capability}
    ours: list[Mapping[str, Any]] = []
    others: dict[str, Any] = {}
    for name, values in capmap.items():
        if name not in names:
            others[name] = values
            continue
        if values is None:
            continue
        if not isinstance(values, list):
            log.warning("ignoring capability %s: its value is not a list", name)
            continue
        for index, value in enumerate(values):
            if isinstance(value, dict):
                ours.append(value)
            else:
                log.warning("ignoring %s[%d]: not a JSON object", name, index)
    return tuple(ours), others


def identity_from_whois(
    answer: Mapping[str, Any], capability: str, *, source: IdentitySource = IdentitySource.WHOIS
) -> Identity:
    """The caller a WhoIs answer names; ``AccessDenied`` for a node with neither a user nor tags."""
    node = answer.get("Node")
    profile = answer.get("UserProfile") or {}
    capmap = answer.get("CapMap") or {}
    if not isinstance(node, dict) or not isinstance(profile, dict) or not isinstance(capmap, dict):
        raise IdentityUnavailable(
            "cannot identify the caller: tailscaled sent a WhoIs answer of unknown shape"
        )
    node_name = _text(node.get("Name"))
    node_name = node_name.rstrip(".") if node_name else None
    hostinfo = node.get("Hostinfo")
    hostinfo = hostinfo if isinstance(hostinfo, dict) else {}
    capabilities, others = split_capabilities(capmap, capability)
    common: dict[str, Any] = {
        "source": source,
        "node_id": _text(node.get("StableID")),
        "node_name": node_name,
        "capabilities": capabilities,
        "other_capabilities": others,
        "shared_in": bool(hostinfo.get("ShareeNode")) or bool(node.get("Sharer")),
    }
    tags = node.get("Tags")
    if isinstance(tags, list) and tags and all(isinstance(t, str) and t for t in tags):
        ordered = tuple(sorted(set(tags)))
        return Identity(
            principal=",".join(ordered),
            kind=IdentityKind.TAGGED,
            tags=ordered,
            display_name=_text(node.get("ComputedName")) or _text(hostinfo.get("Hostname")),
            **common,
        )
    login = _text(profile.get("LoginName"))
    if login and login != TAGGED_DEVICES_LOGIN:
        groups = profile.get("Groups")
        return Identity(
            principal=login,
            kind=IdentityKind.USER,
            display_name=_text(profile.get("DisplayName")),
            profile_pic=_text(profile.get("ProfilePicURL")),
            groups=tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else (),
            **common,
        )
    raise AccessDenied(
        f"could not identify the caller: node {node_name or common['node_id'] or '?'} "
        "has neither a user nor tags"
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
