"""The identity headers ``tailscale serve`` adds, and how to read them when (and only when) they are trusted.

Whether a request's headers may be trusted is decided by the resolver (the hop must be serve's
own: the Unix-socket backend, or a loopback connection WhoIs does not know). This module only
decodes: RFC 2047 Q-encoded values, the ``Tailscale-App-Capabilities`` JSON, ``X-Forwarded-For``.
"""

from __future__ import annotations

import email.errors
import email.header
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from tailgate.errors import AccessDenied
from tailgate.identity import Identity, IdentityKind, IdentitySource
from tailgate.identity.peer import parse_ip
from tailgate.identity.whois import split_capabilities

log = logging.getLogger(__name__)

USER_LOGIN = "tailscale-user-login"
USER_NAME = "tailscale-user-name"
USER_PROFILE_PIC = "tailscale-user-profile-pic"
HEADERS_INFO = "tailscale-headers-info"
APP_CAPABILITIES = "tailscale-app-capabilities"
FUNNEL_REQUEST = "tailscale-funnel-request"
FORWARDED_FOR = "x-forwarded-for"

IDENTITY_HEADERS = frozenset(
    {USER_LOGIN, USER_NAME, USER_PROFILE_PIC, HEADERS_INFO, APP_CAPABILITIES, FUNNEL_REQUEST}
)
"""Headers that claim an identity. Never forwarded upstream, whoever sent them."""

FORWARDING_HEADERS = frozenset({FORWARDED_FOR, "x-forwarded-host", "x-forwarded-proto", "forwarded"})
"""Headers naming the caller's address; tailnet addresses are not the provider's business."""

SERVE_MARKERS = IDENTITY_HEADERS | {FORWARDED_FOR}


def came_through_serve(headers: Mapping[str, str]) -> bool:
    """Whether the request carries anything ``tailscale serve`` would have added."""
    return any(name in headers for name in SERVE_MARKERS)


def decode_header_value(value: str) -> str | None:
    """``value`` with RFC 2047 encoded-words decoded (serve Q-encodes non-ASCII); ``None`` if malformed."""
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
        return None


def parse_app_capabilities(value: str) -> dict[str, Any]:
    """The ``{capability: [values…]}`` in ``Tailscale-App-Capabilities``; ``{}`` (and a warning) if bad."""
    decoded = decode_header_value(value)
    parsed: object = None
    if decoded is not None:
        try:
            parsed = orjson.loads(decoded)
        except orjson.JSONDecodeError:
            parsed = None
    if not isinstance(parsed, dict):
        log.warning("ignoring a malformed Tailscale-App-Capabilities header (%d bytes)", len(value))
        return {}
    return parsed


def forwarded_for(headers: Mapping[str, str]) -> str | None:
    """The caller IP in ``X-Forwarded-For``; ``None`` if absent; ``AccessDenied`` unless exactly one IP."""
    value = headers.get(FORWARDED_FOR)
    if value is None:
        return None
    parsed = parse_ip(value) if "," not in value else None
    if parsed is None:
        raise AccessDenied("could not identify the caller: X-Forwarded-For is not a single IP address")
    return str(parsed)


def reject_funnel(headers: Mapping[str, str]) -> None:
    """Refuse a request that came from the public internet through Tailscale Funnel."""
    if FUNNEL_REQUEST in headers:
        raise AccessDenied("access denied: requests through Tailscale Funnel carry no identity")


def identity_from_serve_headers(headers: Mapping[str, str], capability: str) -> Identity:
    """The caller as serve's user headers name it (used only where tailscaled cannot be asked)."""
    reject_funnel(headers)
    raw_login = headers.get(USER_LOGIN)
    login = decode_header_value(raw_login) if raw_login else None
    capmap = parse_app_capabilities(headers[APP_CAPABILITIES]) if APP_CAPABILITIES in headers else {}
    if not login:
        # Serve sends no user headers for tagged nodes, and their tags only WhoIs can tell.
        raise AccessDenied(
            "could not identify the caller: tailscale serve sent no user login "
            "(tagged devices behind serve need tailscaled's LocalAPI to be identified)"
        )
    capabilities, others = split_capabilities(capmap, capability)
    raw_name = headers.get(USER_NAME)
    return Identity(
        principal=login,
        kind=IdentityKind.USER,
        source=IdentitySource.SERVE,
        display_name=decode_header_value(raw_name) if raw_name else None,
        profile_pic=headers.get(USER_PROFILE_PIC) or None,
        capabilities=capabilities,
        other_capabilities=others,
    )
