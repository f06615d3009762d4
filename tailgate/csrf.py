"""Cross-site request forgery: refuse state-changing requests a browser sends from another origin.

The gateway has no login and no cookies: a caller is whoever the connection says they are. A
page on another site that makes the admin's browser POST to the gateway would therefore act
with the admin's identity. Browsers say where a request comes from (``Sec-Fetch-Site``, else
``Origin``); clients that are not browsers send neither and are never refused.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tailgate.errors import AccessDenied
from tailgate.http.messages import Request

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
REFUSAL = "access denied: cross-origin request refused (a page on another site may not change this gateway)"


def same_origin(sec_fetch_site: str | None, origin: str | None, host: str | None) -> bool:
    """Whether a browser request may change state (pure).

    Allowed when ``Sec-Fetch-Site`` is ``same-origin`` or ``none`` (typed by the user), or, from
    browsers that do not send it, when ``Origin`` is absent or names the ``Host`` asked for.
    """
    if sec_fetch_site is not None:
        return sec_fetch_site.strip().lower() in _ALLOWED_FETCH_SITES
    if origin is None:
        return True
    source = _origin(origin)
    target = _host(host) if host is not None else None
    if source is None or target is None:
        return False
    scheme, name, port = source
    default = _DEFAULT_PORTS[scheme]
    return name == target[0] and (port or default) == (target[1] or default)


def request_allowed(request: Request) -> bool:
    """Whether ``request`` passes the check (always, for GET, HEAD and OPTIONS)."""
    if request.method not in STATE_CHANGING:
        return True
    return same_origin(
        request.header_str(b"sec-fetch-site"), request.header_str(b"origin"), request.header_str(b"host")
    )


def require_same_origin(request: Request) -> None:
    """Raise ``AccessDenied`` (403) when ``request`` is a cross-origin state change."""
    if not request_allowed(request):
        raise AccessDenied(REFUSAL)


def _origin(origin: str) -> tuple[str, str, int | None] | None:
    """``scheme://host[:port]`` → (scheme, host, port); ``None`` for ``null`` or anything else."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None  # "null" (sandboxed frames, file: pages) and non-web schemes
    return parts.scheme, parts.hostname, port


def _host(host: str) -> tuple[str, int | None] | None:
    """A ``Host`` header (``name``, ``name:port``, ``[v6]:port``) → (host, port)."""
    try:
        parts = urlsplit("//" + host.strip())
        port = parts.port
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None
