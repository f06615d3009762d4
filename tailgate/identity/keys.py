"""Gateway API keys, for machines that cannot join the tailnet.

A key is ``tg_`` followed by 40 URL-safe random characters. Only its SHA-256 hash is stored,
with a short non-secret prefix for display (``tg_Ab3x``), the principal it stands for, and an
optional expiry. Stores implement :class:`KeyStore`; :class:`KeyVerifier` sits in front of one
so a request costs a dict lookup, re-asking the store at most once per ``ttl`` (1 s) per key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from tailgate.errors import IdentityUnavailable, Unauthenticated
from tailgate.identity import LOOPBACK_PRINCIPAL

log = logging.getLogger(__name__)

KEY_PREFIX = "tg_"
KEY_RANDOM_BYTES = 30
"""30 random bytes are 40 URL-safe base64 characters (240 bits)."""
DISPLAY_PREFIX_CHARS = len(KEY_PREFIX) + 4
KEY_HEADERS = ("x-api-key", "x-goog-api-key")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    principal: str
    key_hash: str
    """Hex SHA-256 of the whole key; the key itself is never stored."""
    prefix: str
    """The key's first characters (``tg_Ab3x``), for telling keys apart in lists."""
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    note: str = ""

    def state(self, now: datetime) -> str:
        """``active``, ``revoked`` or ``expired`` at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"


class KeyStore(Protocol):
    """Where gateway keys live. Methods are synchronous; callers run them off the event loop."""

    def create_key(
        self, principal: str, *, expires_at: datetime | None, note: str = ""
    ) -> tuple[KeyInfo, str]: ...

    def list_keys(self) -> list[KeyInfo]: ...

    def revoke_key(self, key_id: str) -> bool: ...

    def find_key(self, key_hash: str) -> KeyInfo | None: ...


def hash_key(secret: str) -> str:
    """The stored form of a key: hex SHA-256."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_principal(principal: str) -> str:
    """``principal`` if a key may stand for it; ``ValueError`` for names grants give another meaning."""
    if not principal or principal != principal.strip() or any(c.isspace() or c == "," for c in principal):
        raise ValueError("a key's principal must be a non-empty name without spaces or commas")
    if principal in ("*", LOOPBACK_PRINCIPAL) or principal.startswith(("tag:", "group:")):
        raise ValueError(f"a key cannot stand for {principal!r}: grants give that name another meaning")
    return principal


def mint_key(
    principal: str, *, expires_at: datetime | None, note: str = "", now: datetime | None = None
) -> tuple[KeyInfo, str]:
    """A new key for ``principal``: its record (to store) and the secret (to show once)."""
    check_principal(principal)
    if expires_at is not None and expires_at.tzinfo is None:
        raise ValueError("a key's expiry must be a UTC datetime, not a naive one")
    secret = KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)
    info = KeyInfo(
        id=secrets.token_hex(6),
        principal=principal,
        key_hash=hash_key(secret),
        prefix=secret[:DISPLAY_PREFIX_CHARS],
        created_at=now or datetime.now(UTC),
        expires_at=expires_at.astimezone(UTC) if expires_at is not None else None,
        note=note,
    )
    return info, secret


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The gateway key in ``Authorization: Bearer``, ``x-api-key`` or ``x-goog-api-key``, if any.

    Placeholders (``-``, empty) and provider keys (``sk-…``) are not ours and are ignored.
    """
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip().startswith(KEY_PREFIX):
            return value.strip()
    for name in KEY_HEADERS:
        candidate = headers.get(name, "").strip()
        if candidate.startswith(KEY_PREFIX):
            return candidate
    return None


class MemoryKeyStore:
    """A :class:`KeyStore` in a dict, for tests and ephemeral gateways."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._by_id: dict[str, KeyInfo] = {}
        self._by_hash: dict[str, str] = {}
        self.lookups = 0
        """How many times :meth:`find_key` was called (tests assert on it)."""

    def create_key(
        self, principal: str, *, expires_at: datetime | None, note: str = ""
    ) -> tuple[KeyInfo, str]:
        info, secret = mint_key(principal, expires_at=expires_at, note=note, now=self._clock())
        with self._lock:
            self._by_id[info.id] = info
            self._by_hash[info.key_hash] = info.id
        return info, secret

    def list_keys(self) -> list[KeyInfo]:
        with self._lock:
            return sorted(self._by_id.values(), key=lambda k: (k.created_at, k.id))

    def revoke_key(self, key_id: str) -> bool:
        with self._lock:
            info = self._by_id.get(key_id)
            if info is None or info.revoked_at is not None:
                return False
            self._by_id[key_id] = replace(info, revoked_at=self._clock())
            return True

    def find_key(self, key_hash: str) -> KeyInfo | None:
        with self._lock:
            self.lookups += 1
            key_id = self._by_hash.get(key_hash)
            return self._by_id.get(key_id) if key_id is not None else None


class KeyVerifier:
    """Checks presented keys against a store, remembering each answer for at most ``ttl`` seconds.

    A key revoked in another process is refused within ``ttl`` (default 1 s); an expiry is
    checked on every request. Unknown keys are remembered too, so guessing costs no store calls.
    """

    def __init__(
        self,
        store: KeyStore,
        *,
        ttl: float = 1.0,
        max_entries: int = 4096,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._now = now or (lambda: datetime.now(UTC))
        self._verified: dict[str, tuple[float, KeyInfo | None]] = {}
        self._pending: dict[str, asyncio.Task[KeyInfo | None]] = {}

    async def verify(self, secret: str) -> KeyInfo:
        """The key's record if it is active; ``Unauthenticated`` if unknown, revoked or expired."""
        key_hash = hash_key(secret)
        info = await self._lookup(key_hash)
        if info is None:
            raise Unauthenticated("invalid gateway API key")
        state = info.state(self._now())
        if state != "active":
            log.info("refused gateway key %s… (%s) of %s: %s", info.prefix, info.id, info.principal, state)
            verb = "has been revoked" if state == "revoked" else "has expired"
            raise Unauthenticated(f"gateway API key {info.prefix}… {verb}")
        return info

    async def _lookup(self, key_hash: str) -> KeyInfo | None:
        entry = self._verified.get(key_hash)
        if entry is not None and self._monotonic() - entry[0] < self._ttl:
            return entry[1]
        # One store call per key however many requests arrive meanwhile; it runs as its own
        # task so a request that gives up does not cancel the answer the others wait for.
        task = self._pending.get(key_hash)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._ask(key_hash))
            self._pending[key_hash] = task
        return await asyncio.shield(task)

    async def _ask(self, key_hash: str) -> KeyInfo | None:
        asked_at = self._monotonic()
        try:
            info = await asyncio.to_thread(self._store.find_key, key_hash)
        except Exception as exc:
            log.error("the key store failed to look up a gateway key: %s", exc.__class__.__name__)
            raise IdentityUnavailable("cannot check the gateway API key: the key store failed") from None
        finally:
            self._pending.pop(key_hash, None)
        self._remember(key_hash, asked_at, info)
        return info

    def _remember(self, key_hash: str, asked_at: float, info: KeyInfo | None) -> None:
        self._verified.pop(key_hash, None)
        if len(self._verified) >= self._max_entries:
            del self._verified[next(iter(self._verified))]
        self._verified[key_hash] = (asked_at, info)
