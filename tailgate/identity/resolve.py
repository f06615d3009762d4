"""Who is calling: the identity sources tried in the configured order for each request.

``whois``    the TCP peer address, asked of tailscaled (authoritative; a known peer ends the search)
``serve``    ``tailscale serve``'s headers, only on a hop that can be nothing but serve
``keys``     a gateway API key (``tg_…``) in the request's credential headers
``loopback`` a local connection nothing else identified: ``(loopback)``

Failing to ask tailscaled is a 503, never a fallback to a weaker source. WhoIs answers are kept
on the connection for ``whois_cache_ttl`` seconds, so a keep-alive connection asks rarely.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from tailgate.config.model import IdentitySettings
from tailgate.errors import AccessDenied
from tailgate.identity import LOOPBACK_IDENTITY, Identity, IdentityKind, IdentitySource
from tailgate.identity.keys import KeyStore, KeyVerifier, presented_key
from tailgate.identity.localapi import LocalAPI, configured_socket, discover_socket
from tailgate.identity.peer import ConnectionCache, Peer, is_loopback, whois_addr
from tailgate.identity.serve import (
    came_through_serve,
    forwarded_for,
    identity_from_serve_headers,
    reject_funnel,
)
from tailgate.identity.whois import identity_from_whois

__all__ = ["ConnectionCache", "IdentityResolver", "WhoisLookup"]

log = logging.getLogger(__name__)

SOURCES = ("whois", "serve", "keys", "loopback")
SERVE_MODES = ("off", "unix", "loopback")
SOCKET_PROBE_INTERVAL = 1.0
SELF_NODE_TTL = 60.0
MAX_LOOKUPS_PER_CONNECTION = 32


@dataclass(frozen=True, slots=True)
class WhoisLookup:
    """What tailscaled said about one address, as the resolver reads it."""

    identity: Identity | None
    """``None``: tailscaled does not know the address (404)."""
    denial: str | None = None
    """The node is known but may not call: no user nor tags, or shared in from elsewhere."""


class IdentityResolver:
    """Turns a connection's peer and a request's headers into an :class:`Identity`, or refuses."""

    def __init__(
        self,
        settings: IdentitySettings,
        keys: KeyStore,
        *,
        localapi: LocalAPI | None = None,
        allow_shared_in: bool = False,
        environ: Mapping[str, str] | None = None,
        platform: str = sys.platform,
        socket_exists: Callable[[str], bool] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        key_cache_ttl: float = 1.0,
    ) -> None:
        unknown = [s for s in settings.sources if s not in SOURCES]
        if unknown:
            raise ValueError(f"unknown identity source {unknown[0]!r} (expected one of {', '.join(SOURCES)})")
        if settings.serve_headers not in SERVE_MODES:
            raise ValueError(f"serve_headers must be one of {', '.join(SERVE_MODES)}")
        self._settings = settings
        self._sources = tuple(dict.fromkeys(settings.sources))
        self._serve_mode = settings.serve_headers if "serve" in self._sources else "off"
        self._allow_shared_in = allow_shared_in
        self._platform = platform
        self._socket_exists = socket_exists
        self._monotonic = monotonic
        self._keys = KeyVerifier(keys, ttl=key_cache_ttl, monotonic=monotonic)
        self._owns_localapi = localapi is None
        self._localapi = localapi
        self._probed_at: float | None = None
        self._self_node: tuple[float, str] | None = None
        if localapi is None:
            named = configured_socket(settings.tailscale_socket, os.environ if environ is None else environ)
            if named is not None:
                # Named explicitly: used even while absent, so a missing daemon is a 503.
                self._localapi = LocalAPI(named, timeout=settings.whois_timeout)
                self._probed_at = float("inf")

    async def resolve(self, peer: Peer, headers: Mapping[str, str], cache: ConnectionCache) -> Identity:
        """The caller of this request, or ``AccessDenied``, ``Unauthenticated``, ``IdentityUnavailable``."""
        for source in self._sources:
            if source == "whois":
                found = await self._from_whois(peer, cache)
            elif source == "serve":
                found = await self._from_serve(peer, headers, cache)
            elif source == "keys":
                found = await self._from_key(headers)
            else:
                found = self._from_loopback(peer)
            if found is not None:
                return found
        where = f" at {peer.ip}" if peer.ip else f" on {peer.listener}"
        raise AccessDenied(
            f"could not identify the caller{where}: not a tailnet peer tailscaled knows, "
            "and no gateway API key was presented"
        )

    async def aclose(self) -> None:
        """Release the LocalAPI connections this resolver opened."""
        if self._localapi is not None and self._owns_localapi:
            await self._localapi.aclose()

    @property
    def localapi(self) -> LocalAPI | None:
        """The LocalAPI in use, if a tailscaled socket is configured or was found."""
        return self._current_localapi()

    async def _from_whois(self, peer: Peer, cache: ConnectionCache) -> Identity | None:
        if peer.transport != "tcp" or peer.ip is None:
            return None
        lookup = await self._lookup(cache, peer.ip, peer.port)
        if lookup is None:
            return None
        if lookup.denial is not None:
            raise AccessDenied(lookup.denial)
        return lookup.identity

    async def _from_serve(
        self, peer: Peer, headers: Mapping[str, str], cache: ConnectionCache
    ) -> Identity | None:
        if self._serve_mode == "unix" and peer.transport == "unix":
            if not came_through_serve(headers):
                raise AccessDenied(
                    "could not identify the caller: a request on the serve socket "
                    "without tailscale serve's headers"
                )
        elif self._serve_mode == "loopback" and is_loopback(peer) and peer.ip is not None:
            # A loopback connection tailscaled knows is a netstack forward from a tailnet peer,
            # not serve: its headers are the peer's own and worth nothing.
            lookup = await self._lookup(cache, peer.ip, peer.port)
            if lookup is None or lookup.identity is not None or lookup.denial is not None:
                return None
            if not came_through_serve(headers):
                return None
        else:
            return None
        reject_funnel(headers)
        caller_ip = forwarded_for(headers)
        if caller_ip is None:
            if peer.transport == "unix":
                raise AccessDenied("could not identify the caller: tailscale serve sent no X-Forwarded-For")
            return None
        if self._current_localapi() is None:
            return identity_from_serve_headers(headers, self._settings.capability)
        lookup = await self._lookup(cache, caller_ip, None)
        if lookup is None or lookup.identity is None:
            raise AccessDenied(
                lookup.denial
                if lookup is not None and lookup.denial is not None
                else f"could not identify the caller: tailscaled does not know {caller_ip}"
            )
        if lookup.identity.source is IdentitySource.WHOIS:
            return replace(lookup.identity, source=IdentitySource.SERVE)
        return lookup.identity

    async def _from_key(self, headers: Mapping[str, str]) -> Identity | None:
        secret = presented_key(headers)
        if secret is None:
            return None
        info = await self._keys.verify(secret)
        return Identity(
            principal=info.principal, kind=IdentityKind.KEY, source=IdentitySource.KEY, key_id=info.id
        )

    def _from_loopback(self, peer: Peer) -> Identity | None:
        local_socket = peer.transport == "unix" and self._serve_mode != "unix"
        return LOOPBACK_IDENTITY if local_socket or is_loopback(peer) else None

    async def _lookup(self, cache: ConnectionCache, ip: str, port: int | None) -> WhoisLookup | None:
        """What tailscaled says of ``ip[:port]`` (cached per connection); ``None`` if it cannot be asked."""
        localapi = self._current_localapi()
        if localapi is None:
            return None
        now = self._monotonic()
        ttl = self._settings.whois_cache_ttl
        key = (ip, port)
        hit = cache.lookups.get(key)
        if hit is not None and now - hit[0] < ttl:
            return hit[1]
        addr = whois_addr(ip, port)
        if addr is None:
            return WhoisLookup(None)
        answer = await localapi.whois(addr, proto="tcp" if port is not None else None)
        lookup = await self._interpret(localapi, answer)
        if ttl > 0:
            if len(cache.lookups) >= MAX_LOOKUPS_PER_CONNECTION:
                cache.lookups.clear()
            cache.lookups[key] = (now, lookup)
        return lookup

    async def _interpret(self, localapi: LocalAPI, answer: Mapping[str, object] | None) -> WhoisLookup:
        if answer is None:
            return WhoisLookup(None)
        try:
            identity = identity_from_whois(answer, self._settings.capability)
        except AccessDenied as denied:
            return WhoisLookup(None, denied.message)
        if identity.node_id is not None and identity.node_id == await self._self_node_id(localapi):
            # A process on the gateway's own host dialling its tailnet address: WhoIs names the
            # node's owner, but the caller is just something local.
            if "loopback" in self._sources:
                return WhoisLookup(LOOPBACK_IDENTITY)
            return WhoisLookup(None, "access denied: calls from the gateway's own node are not accepted")
        if identity.shared_in and not self._allow_shared_in:
            return WhoisLookup(
                None,
                f"access denied: {identity.principal} reached this gateway through a node shared "
                "from another tailnet, and shared-in callers are not accepted",
            )
        return WhoisLookup(identity)

    async def _self_node_id(self, localapi: LocalAPI) -> str:
        now = self._monotonic()
        if self._self_node is None or now - self._self_node[0] >= SELF_NODE_TTL:
            self._self_node = (now, await localapi.self_node_id())
        return self._self_node[1]

    def _current_localapi(self) -> LocalAPI | None:
        if self._localapi is not None:
            return self._localapi
        now = self._monotonic()
        if self._probed_at is not None and now - self._probed_at < SOCKET_PROBE_INTERVAL:
            return None
        self._probed_at = now
        path = discover_socket(self._platform, self._socket_exists)
        if path is not None:
            log.info("asking tailscaled at %s who is calling", path)
            self._localapi = LocalAPI(path, timeout=self._settings.whois_timeout)
        return self._localapi
