"""How the upstream request is built from the client's (pure): URL, credentials, headers.

Every client credential is removed (``Authorization``, ``x-api-key``, ``x-goog-api-key``,
``api-key``, ``?key=``) and the provider's own is added according to its ``authorization`` type.
Hop-by-hop headers, cookies and identity headers never travel upstream; every other header
(``anthropic-version``, ``anthropic-beta``, ``openai-beta`` …) does, unchanged.
"""

from __future__ import annotations

from functools import lru_cache

from tailgate.config.model import Provider
from tailgate.http.client import Origin
from tailgate.http.messages import Headers

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"host",
        b"content-length",
        b"expect",
    }
)
CLIENT_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key"})
IDENTITY_HEADERS = frozenset(
    {
        b"tailscale-user-login",
        b"tailscale-user-name",
        b"tailscale-user-profile-pic",
        b"tailscale-headers-info",
        b"tailscale-app-capabilities",
        b"tailscale-funnel-request",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"forwarded",
        b"x-real-ip",
    }
)
_NEVER_FORWARDED = _HOP_BY_HOP | CLIENT_CREDENTIAL_HEADERS | IDENTITY_HEADERS | {b"cookie"}
_RESPONSE_DROPPED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"content-length",
        b"proxy-authenticate",
        b"trailer",
        b"upgrade",
        b"set-cookie",
    }
)
_VERSION_SEGMENTS = ("/v1", "/v1beta", "/v1alpha")


def upstream_target(origin: Origin, path: str, query: str) -> bytes:
    """The request target on the upstream: base path + client path (+ query without ``key=``).

    A base URL ending in ``/v1`` (self-hosted servers) is not doubled with the client's ``/v1``.
    """
    base = origin.base_path
    for segment in _VERSION_SEGMENTS:
        if base.endswith(segment) and path.startswith(segment + "/"):
            path = path[len(segment) :]
            break
    target = base + path
    if query:
        query = strip_key_param(query)
        if query:
            target += "?" + query
    return target.encode("latin-1")


def strip_key_param(query: str) -> str:
    """Remove every ``key=`` parameter (a Gemini client credential) from a raw query string."""
    if "key=" not in query:
        return query
    return "&".join(p for p in query.split("&") if not (p == "key" or p.startswith("key=")))


@lru_cache(maxsize=256)
def provider_origin(provider: Provider) -> Origin:
    return Origin.from_url(provider.baseurl)


@lru_cache(maxsize=256)
def credential_headers(provider: Provider) -> tuple[tuple[bytes, bytes], ...]:
    """The headers that carry the provider's own credential, per its ``authorization`` type."""
    key = provider.apikey.encode("latin-1")
    if not key or provider.auth_mode == "none":
        return ()
    kind = provider.authorization
    if kind == "x-api-key":
        return ((b"x-api-key", key),)
    if kind == "x-goog-api-key":
        return ((b"x-goog-api-key", key),)
    if kind == "hec":
        return ((b"authorization", b"Splunk " + key),)
    if kind == "cf-aig-authorization":
        return ((b"cf-aig-authorization", b"Bearer " + key),)
    return ((b"authorization", b"Bearer " + key),)


def is_placeholder_credential(value: bytes) -> bool:
    """True for values that are not real credentials: ``-``, empty, or a gateway key."""
    token = value[7:] if value[:7].lower() == b"bearer " else value
    token = token.strip()
    return token in (b"", b"-") or token.startswith(b"tg_")


def upstream_headers(
    client_headers: Headers,
    provider: Provider,
    extra: tuple[tuple[str, str], ...] = (),
) -> Headers:
    """The headers sent upstream: the client's, filtered, plus credential and ``add_headers``.

    ``extra`` are the ``add_headers`` of the grants that matched; they and the provider's
    ``add_headers`` replace any client header of the same name.
    """
    added = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in (*provider.add_headers, *extra)]
    replaced = {name for name, _ in added}
    headers: Headers = []
    passthrough: Headers = []
    for name, value in client_headers:
        if name in _NEVER_FORWARDED:
            if (
                provider.auth_mode == "passthrough"
                and name in (b"authorization", b"x-api-key")
                and not is_placeholder_credential(value)
            ):
                passthrough.append((name, value))
            continue
        if name in replaced:
            continue
        headers.append((name, value))
    if passthrough:
        headers.extend(passthrough)
    else:
        headers.extend(credential_headers(provider))
    headers.extend(added)
    return headers


def client_response_headers(upstream: Headers) -> Headers:
    """The upstream's response headers minus hop-by-hop framing (the server adds its own)."""
    return [(n, v) for n, v in upstream if n not in _RESPONSE_DROPPED]
