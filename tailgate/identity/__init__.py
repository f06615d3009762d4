"""Who is calling: the caller's identity, as established by one identity source."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class IdentityKind(enum.StrEnum):
    USER = "user"
    """A tailnet node owned by a user."""
    TAGGED = "tagged"
    """A tailnet node with tags and no user; named by its sorted, comma-joined tags."""
    KEY = "key"
    """A caller holding a gateway API key, named by the key's principal."""
    LOOPBACK = "loopback"
    """A local connection no other source identified: the principal ``(loopback)``."""


class IdentitySource(enum.StrEnum):
    WHOIS = "whois"
    SERVE = "serve"
    KEY = "key"
    LOOPBACK = "loopback"


LOOPBACK_PRINCIPAL = "(loopback)"


@dataclass(frozen=True, slots=True)
class Identity:
    principal: str
    """What grants' ``src`` match, what ``<user>`` expands to, what records are keyed by:
    a login name, a tag string such as ``tag:api,tag:prod``, a key's principal, or ``(loopback)``.
    Never the shared ``tagged-devices`` login."""
    kind: IdentityKind
    source: IdentitySource
    display_name: str | None = None
    node_id: str | None = None
    """The node's stable id (``<node>`` in quota bucket names)."""
    tags: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    profile_pic: str | None = None
    capabilities: tuple[Mapping[str, Any], ...] = field(default=())
    """Capability objects delivered by the tailnet policy (WhoIs ``CapMap``) for the
    configured capability name; merged with the config's grants."""
    other_capabilities: Mapping[str, Any] = field(default_factory=dict)
    """Every other app capability the caller holds (passed to hooks, never interpreted)."""
    key_id: str | None = None
    node_name: str | None = None
    """The caller's device: its MagicDNS name without the trailing dot (``alice-mbp.tail9f3c2.ts.net``)."""
    shared_in: bool = False
    """The node was shared in from another tailnet; its login belongs to that tailnet."""


LOOPBACK_IDENTITY = Identity(
    principal=LOOPBACK_PRINCIPAL, kind=IdentityKind.LOOPBACK, source=IdentitySource.LOOPBACK
)
