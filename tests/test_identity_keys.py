"""Gateway API keys: minting, hashed storage, recognising them in headers, verification and its cache."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import astuple
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tailgate.errors import IdentityUnavailable, Unauthenticated
from tailgate.identity.keys import (
    KeyInfo,
    KeyVerifier,
    MemoryKeyStore,
    check_principal,
    hash_key,
    mint_key,
    presented_key,
)

KEY = "tg_" + "A" * 40


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_minted_key_shape_and_record() -> None:
    info, secret = mint_key("build-bot", expires_at=None, note="CI")
    assert re.fullmatch(r"tg_[A-Za-z0-9_-]{40}", secret)
    assert info.key_hash == hash_key(secret)
    assert info.prefix == secret[:7]
    assert info.principal == "build-bot"
    assert info.note == "CI"
    assert info.created_at.tzinfo is UTC
    assert secret[7:] not in repr(info)
    assert mint_key("build-bot", expires_at=None)[1] != secret


def test_expiry_must_be_aware_and_is_kept_in_utc() -> None:
    with pytest.raises(ValueError, match="naive"):
        mint_key("bot", expires_at=datetime(2030, 1, 1))
    plus_two = datetime(2030, 1, 1, 12, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    info, _ = mint_key("bot", expires_at=plus_two)
    assert info.expires_at == plus_two
    assert info.expires_at is not None and info.expires_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "principal", ["", " bot", "two words", "a,b", "*", "(loopback)", "tag:ci", "group:eng"]
)
def test_principals_grants_give_another_meaning_are_refused(principal: str) -> None:
    with pytest.raises(ValueError):
        check_principal(principal)


def test_store_keeps_only_the_hash() -> None:
    store = MemoryKeyStore()
    info, secret = store.create_key("build-bot", expires_at=None)
    assert store.list_keys() == [info]
    assert store.find_key(hash_key(secret)) == info
    assert store.find_key(secret) is None
    assert secret not in repr(vars(store))
    assert all(secret[7:] not in str(value) for value in astuple(info))


def test_revoke() -> None:
    store = MemoryKeyStore()
    info, _ = store.create_key("build-bot", expires_at=None)
    assert store.revoke_key(info.id)
    assert not store.revoke_key(info.id)
    assert not store.revoke_key("missing")
    revoked = store.list_keys()[0]
    assert revoked.revoked_at is not None
    assert revoked.state(datetime.now(UTC)) == "revoked"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"authorization": f"Bearer {KEY}"}, KEY),
        ({"authorization": f"bearer   {KEY} "}, KEY),
        ({"x-api-key": KEY}, KEY),
        ({"x-goog-api-key": KEY}, KEY),
        ({"authorization": "Bearer -", "x-api-key": KEY}, KEY),
        ({"authorization": "Bearer -"}, None),
        ({"authorization": "Bearer "}, None),
        ({"authorization": "Bearer sk-proj-abc"}, None),
        ({"x-api-key": "sk-ant-api03-abc"}, None),
        ({"x-goog-api-key": "AIzaSyabc"}, None),
        ({"authorization": f"Basic {KEY}"}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], expected: str | None) -> None:
    assert presented_key(headers) == expected


def verify(verifier: KeyVerifier, secret: str) -> KeyInfo:
    return asyncio.run(verifier.verify(secret))


def test_active_key_verifies_and_is_cached_for_the_ttl() -> None:
    store = MemoryKeyStore()
    info, secret = store.create_key("build-bot", expires_at=None)
    clock = Clock()
    verifier = KeyVerifier(store, ttl=1.0, monotonic=clock)

    async def go() -> None:
        for _ in range(100):
            assert await verifier.verify(secret) == info
        assert store.lookups == 1
        clock.now += 1.0
        assert await verifier.verify(secret) == info
        assert store.lookups == 2

    asyncio.run(go())


def test_revocation_takes_effect_within_the_ttl() -> None:
    store = MemoryKeyStore()
    info, secret = store.create_key("build-bot", expires_at=None)
    clock = Clock()
    verifier = KeyVerifier(store, ttl=1.0, monotonic=clock)

    async def go() -> None:
        await verifier.verify(secret)
        store.revoke_key(info.id)  # as another process would, straight in the store
        clock.now += 0.5
        await verifier.verify(secret)  # still inside the documented bound
        clock.now += 0.5
        with pytest.raises(Unauthenticated, match=rf"^gateway API key {info.prefix}… has been revoked$"):
            await verifier.verify(secret)

    asyncio.run(go())


def test_expiry_is_exact_not_cached() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    moment = [now]
    store = MemoryKeyStore(clock=lambda: moment[0])
    info, secret = store.create_key("build-bot", expires_at=now + timedelta(minutes=5))
    verifier = KeyVerifier(store, ttl=3600, now=lambda: moment[0])

    async def go() -> None:
        await verifier.verify(secret)
        moment[0] = now + timedelta(minutes=5)
        with pytest.raises(Unauthenticated, match="has expired"):
            await verifier.verify(secret)

    asyncio.run(go())
    assert info.state(now) == "active"


def test_unknown_key_is_refused_and_remembered() -> None:
    store = MemoryKeyStore()
    verifier = KeyVerifier(store)

    async def go() -> None:
        for _ in range(10):
            with pytest.raises(Unauthenticated, match=r"^invalid gateway API key$") as raised:
                await verifier.verify(KEY)
            assert raised.value.status == 401
        assert store.lookups == 1

    asyncio.run(go())


def test_concurrent_requests_share_one_store_lookup() -> None:
    store = MemoryKeyStore()
    _, secret = store.create_key("build-bot", expires_at=None)
    verifier = KeyVerifier(store)

    async def go() -> None:
        infos = await asyncio.gather(*(verifier.verify(secret) for _ in range(50)))
        assert {i.principal for i in infos} == {"build-bot"}

    asyncio.run(go())
    assert store.lookups == 1


def test_store_failure_fails_closed_without_detail() -> None:
    class BrokenStore(MemoryKeyStore):
        def find_key(self, key_hash: str) -> KeyInfo | None:
            raise RuntimeError(f"database is locked while reading {key_hash}")

    with pytest.raises(
        IdentityUnavailable, match=r"^cannot check the gateway API key: the key store failed$"
    ):
        verify(KeyVerifier(BrokenStore()), KEY)


def test_secrets_never_reach_logs_or_messages(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = MemoryKeyStore()
    revoked, revoked_secret = store.create_key("old-bot", expires_at=None)
    store.revoke_key(revoked.id)
    _, expired_secret = store.create_key("temp-bot", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    verifier = KeyVerifier(store)
    messages = []
    for secret in (revoked_secret, expired_secret, KEY):
        with pytest.raises(Unauthenticated) as raised:
            verify(verifier, secret)
        messages.append(raised.value.message)
    assert "refused gateway key" in caplog.text
    for secret in (revoked_secret, expired_secret, KEY):
        assert secret not in caplog.text
        assert secret[7:15] not in caplog.text
        assert all(secret[7:15] not in message for message in messages)
