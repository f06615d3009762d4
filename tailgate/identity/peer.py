"""The other end of a connection, as the socket reports it, and the address forms WhoIs needs."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tailgate.identity.resolve import WhoisLookup


@dataclass(frozen=True, slots=True)
class Peer:
    transport: Literal["tcp", "unix"]
    ip: str | None
    """The peer IP as the socket reports it (may be ``::ffff:a.b.c.d``); ``None`` on a Unix socket."""
    port: int | None
    listener: str
    """The listener the connection arrived on: ``127.0.0.1:8080`` or ``unix:/path``."""


class ConnectionCache:
    """Scratch the server keeps on one client connection: WhoIs answers, each for ``whois_cache_ttl`` s.

    Never shared between connections: a new connection is a new peer and is asked about afresh.
    """

    __slots__ = ("lookups",)

    def __init__(self) -> None:
        self.lookups: dict[tuple[str, int | None], tuple[float, WhoisLookup]] = {}
        """``(ip, port)`` → (monotonic time asked, what tailscaled said)."""


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in ``text`` with any zone removed and IPv4-mapped IPv6 unmapped; ``None`` if not an IP.

    Memoised: the same few peer addresses are parsed on every request.
    """
    try:
        ip = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def whois_addr(ip: str, port: int | None) -> str | None:
    """The ``addr`` WhoIs expects: ``IP``, ``IP:port`` or ``[v6]:port``; ``None`` if ``ip`` is not an IP."""
    parsed = parse_ip(ip)
    if parsed is None:
        return None
    if port is None:
        return str(parsed)
    if parsed.version == 6:
        return f"[{parsed}]:{port}"
    return f"{parsed}:{port}"


def is_loopback(peer: Peer) -> bool:
    """Whether a TCP peer is a loopback address (``127.0.0.0/8``, ``::1``, or their mapped forms)."""
    if peer.transport != "tcp" or peer.ip is None:
        return False
    parsed = parse_ip(peer.ip)
    return parsed is not None and parsed.is_loopback
