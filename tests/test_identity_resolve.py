"""The resolver chain against the fake tailscaled: WhoIs, serve headers, keys, loopback, failing closed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from tailgate.config.model import IdentitySettings
from tailgate.errors import AccessDenied, IdentityUnavailable, Unauthenticated
from tailgate.identity import LOOPBACK_IDENTITY, Identity, IdentityKind, IdentitySource
from tailgate.identity.keys import MemoryKeyStore
from tailgate.identity.peer import ConnectionCache, Peer
from tailgate.identity.resolve import IdentityResolver
from tests.fake_localapi import FakeLocalAPI

ANSWERS = {
    "100.101.102.103": "user_alice",
    "100.88.12.34": "tagged_multi",
    "100.77.1.2": "caps_multi_grant",
    "100.66.6.6": "node_no_owner",
    "100.99.50.60": "shared_in",
    "100.100.1.1": "self_node",
    # A userspace-netstack forward: tailscaled dialled 127.0.0.1 for a tailnet peer and registered it.
    "127.0.0.1:40001": "user_alice",
}
SERVE_SOCKET = Peer("unix", None, None, "unix:/run/tailgate/serve.sock")
FORGED = {"tailscale-user-login": "admin@example.com", "tailscale-user-name": "Admin"}
DEFAULTS = IdentitySettings()
NO_TAILSCALED: dict[str, Any] = {"environ": {}, "socket_exists": lambda _: False}


def tcp(ip: str, port: int = 51234) -> Peer:
    return Peer("tcp", ip, port, "0.0.0.0:80")


@pytest.fixture
def fake() -> Any:
    with FakeLocalAPI(ANSWERS) as running:
        yield running


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def make(
    fake: FakeLocalAPI | None, settings: IdentitySettings, keys: MemoryKeyStore, **kwargs: Any
) -> IdentityResolver:
    if fake is not None:
        settings = replace(settings, tailscale_socket=fake.socket_path)
        return IdentityResolver(settings, keys, **kwargs)
    return IdentityResolver(settings, keys, **{**NO_TAILSCALED, **kwargs})


def resolve(
    fake: FakeLocalAPI | None,
    peer: Peer,
    headers: Mapping[str, str] | None = None,
    *,
    settings: IdentitySettings = DEFAULTS,
    keys: MemoryKeyStore | None = None,
    **kwargs: Any,
) -> Identity:
    async def go() -> Identity:
        resolver = make(fake, settings, keys or MemoryKeyStore(), **kwargs)
        try:
            return await resolver.resolve(peer, headers or {}, ConnectionCache())
        finally:
            await resolver.aclose()

    return asyncio.run(go())


# -- WhoIs -----------------------------------------------------------------------------------------


def test_user_node_by_peer_address(fake: FakeLocalAPI) -> None:
    identity = resolve(fake, tcp("100.101.102.103"))
    assert (identity.principal, identity.kind, identity.source) == (
        "alice@example.com",
        IdentityKind.USER,
        IdentitySource.WHOIS,
    )
    assert identity.node_id == "nKp3xR7CNTRL"


def test_mapped_ipv6_peer_is_unmapped(fake: FakeLocalAPI) -> None:
    assert resolve(fake, tcp("::ffff:100.101.102.103", 7)).principal == "alice@example.com"
    assert fake.whois_requests()[0].query == {"addr": "100.101.102.103:7", "proto": "tcp"}


def test_tagged_node(fake: FakeLocalAPI) -> None:
    identity = resolve(fake, tcp("100.88.12.34"))
    assert identity.principal == "tag:ci,tag:prod"
    assert identity.kind is IdentityKind.TAGGED
    assert identity.capabilities == ({"role": "user", "models": "openai/gpt-4.1-mini"},)


def test_node_with_neither_user_nor_tags_is_denied(fake: FakeLocalAPI) -> None:
    with pytest.raises(AccessDenied, match="has neither a user nor tags"):
        resolve(fake, tcp("100.66.6.6"))


def test_unknown_non_loopback_peer_is_denied(fake: FakeLocalAPI) -> None:
    with pytest.raises(AccessDenied) as raised:
        resolve(fake, tcp("192.168.1.20"))
    assert raised.value.message == (
        "could not identify the caller at 192.168.1.20: not a tailnet peer tailscaled knows, "
        "and no gateway API key was presented"
    )
    assert raised.value.status == 403


def test_unknown_loopback_peer_is_loopback(fake: FakeLocalAPI) -> None:
    assert resolve(fake, tcp("127.0.0.1", 40999)) is LOOPBACK_IDENTITY
    assert resolve(fake, tcp("::1", 40999)) is LOOPBACK_IDENTITY


@pytest.mark.parametrize("sources", [("whois", "serve", "keys", "loopback"), ("serve", "whois", "loopback")])
def test_netstack_forward_on_loopback_is_the_real_peer_and_headers_are_ignored(
    fake: FakeLocalAPI, sources: tuple[str, ...]
) -> None:
    forged = {**FORGED, "x-forwarded-for": "100.77.1.2"}
    settings = IdentitySettings(serve_headers="loopback", sources=sources)
    identity = resolve(fake, tcp("127.0.0.1", 40001), forged, settings=settings)
    assert identity.principal == "alice@example.com"
    assert identity.source is IdentitySource.WHOIS
    assert [r.query["addr"] for r in fake.whois_requests()] == ["127.0.0.1:40001"]


@pytest.mark.parametrize("serve_headers", ["off", "loopback", "unix"])
def test_forged_headers_from_a_tailnet_peer_change_nothing(fake: FakeLocalAPI, serve_headers: str) -> None:
    settings = IdentitySettings(serve_headers=serve_headers)
    forged = {**FORGED, "x-forwarded-for": "100.101.102.103", "tailscale-app-capabilities": '{"x":[1]}'}
    assert resolve(fake, tcp("100.88.12.34"), forged, settings=settings).principal == "tag:ci,tag:prod"
    with pytest.raises(AccessDenied, match=r"could not identify the caller at 192.168.1.20"):
        resolve(fake, tcp("192.168.1.20"), forged, settings=settings)


def test_forged_headers_from_loopback_with_serve_off_are_ignored(fake: FakeLocalAPI) -> None:
    forged = {**FORGED, "x-forwarded-for": "100.101.102.103"}
    assert resolve(fake, tcp("127.0.0.1", 40999), forged) is LOOPBACK_IDENTITY
    assert [r.query["addr"] for r in fake.whois_requests()] == ["127.0.0.1:40999"]


@pytest.mark.parametrize("status", [500, 403])
def test_localapi_errors_fail_closed_even_for_loopback(fake: FakeLocalAPI, status: int) -> None:
    fake.fail_status = status
    for peer in (tcp("100.101.102.103"), tcp("127.0.0.1", 40999)):
        with pytest.raises(IdentityUnavailable) as raised:
            resolve(fake, peer, {"authorization": "Bearer tg_" + "x" * 40})
        assert raised.value.status == 503


def test_timeout_fails_closed(fake: FakeLocalAPI) -> None:
    fake.delay = 1.0
    with pytest.raises(IdentityUnavailable, match=r"did not answer within 0.1s"):
        resolve(fake, tcp("100.101.102.103"), settings=IdentitySettings(whois_timeout=0.1))


def test_configured_socket_that_is_absent_fails_closed(fake: FakeLocalAPI) -> None:
    fake.stop()
    with pytest.raises(IdentityUnavailable, match="unreachable"):
        resolve(fake, tcp("127.0.0.1", 40999))


def test_ts_socket_environment_variable_is_explicit(fake: FakeLocalAPI) -> None:
    async def go() -> None:
        resolver = IdentityResolver(
            IdentitySettings(), MemoryKeyStore(), environ={"TS_SOCKET": fake.socket_path}
        )
        try:
            identity = await resolver.resolve(tcp("100.101.102.103"), {}, ConnectionCache())
            assert identity.principal == "alice@example.com"
        finally:
            await resolver.aclose()

    asyncio.run(go())


def test_without_tailscaled_whois_is_skipped_and_probed_again() -> None:
    present: set[str] = set()
    clock = Clock()

    async def go() -> None:
        resolver = IdentityResolver(
            IdentitySettings(), MemoryKeyStore(), environ={}, platform="linux",
            socket_exists=present.__contains__, monotonic=clock,
        )  # fmt: skip
        assert await resolver.resolve(tcp("127.0.0.1", 1), {}, ConnectionCache()) is LOOPBACK_IDENTITY
        assert resolver.localapi is None
        present.add("/var/run/tailscale/tailscaled.sock")
        assert resolver.localapi is None  # probed at most once a second
        clock.now += 1.0
        localapi = resolver.localapi
        assert localapi is not None and localapi.socket_path == "/var/run/tailscale/tailscaled.sock"
        # Found now, and absent in fact: fail closed rather than treat loopback as local.
        with pytest.raises(IdentityUnavailable):
            await resolver.resolve(tcp("127.0.0.1", 1), {}, ConnectionCache())
        await resolver.aclose()

    asyncio.run(go())


def test_own_node_is_a_local_caller(fake: FakeLocalAPI) -> None:
    assert resolve(fake, tcp("100.100.1.1")) is LOOPBACK_IDENTITY
    assert any(r.path == "/localapi/v0/status" for r in fake.requests)
    with pytest.raises(AccessDenied, match="gateway's own node"):
        resolve(fake, tcp("100.100.1.1"), settings=IdentitySettings(sources=("whois", "keys")))


def test_shared_in_node_is_denied_unless_allowed(fake: FakeLocalAPI) -> None:
    with pytest.raises(AccessDenied, match=r"carol@other.example reached this gateway through a node shared"):
        resolve(fake, tcp("100.99.50.60"))
    identity = resolve(fake, tcp("100.99.50.60"), allow_shared_in=True)
    assert identity.principal == "carol@other.example"
    assert identity.shared_in


def test_connection_cache_asks_once_per_ttl(fake: FakeLocalAPI) -> None:
    clock = Clock()

    async def go() -> None:
        resolver = make(fake, IdentitySettings(whois_cache_ttl=2.0), MemoryKeyStore(), monotonic=clock)
        cache = ConnectionCache()
        peer = tcp("100.101.102.103")
        for _ in range(20):
            assert (await resolver.resolve(peer, {}, cache)).principal == "alice@example.com"
        assert len(fake.whois_requests()) == 1
        await resolver.resolve(peer, {}, ConnectionCache())  # a new connection asks afresh
        assert len(fake.whois_requests()) == 2
        clock.now += 2.0
        await resolver.resolve(peer, {}, cache)
        assert len(fake.whois_requests()) == 3
        await resolver.aclose()

    asyncio.run(go())


def test_zero_ttl_asks_every_request(fake: FakeLocalAPI) -> None:
    async def go() -> None:
        resolver = make(fake, IdentitySettings(whois_cache_ttl=0), MemoryKeyStore())
        cache = ConnectionCache()
        for _ in range(3):
            await resolver.resolve(tcp("100.101.102.103"), {}, cache)
        await resolver.aclose()

    asyncio.run(go())
    assert len(fake.whois_requests()) == 3


# -- serve headers -----------------------------------------------------------------------------------


def test_serve_loopback_mode_trusts_the_hop_only_after_whois_404(fake: FakeLocalAPI) -> None:
    settings = IdentitySettings(serve_headers="loopback")
    headers = {**FORGED, "x-forwarded-for": "100.101.102.103"}
    identity = resolve(fake, tcp("127.0.0.1", 40999), headers, settings=settings)
    assert identity.principal == "alice@example.com"  # from WhoIs on X-Forwarded-For, not the login header
    assert identity.source is IdentitySource.SERVE
    assert [r.query for r in fake.whois_requests()] == [
        {"addr": "127.0.0.1:40999", "proto": "tcp"},
        {"addr": "100.101.102.103"},
    ]


def test_serve_loopback_mode_denies_a_forwarded_address_tailscaled_does_not_know(fake: FakeLocalAPI) -> None:
    settings = IdentitySettings(serve_headers="loopback")
    with pytest.raises(AccessDenied, match=r"tailscaled does not know 203.0.113.9"):
        resolve(fake, tcp("127.0.0.1", 40999), {"x-forwarded-for": "203.0.113.9"}, settings=settings)


def test_serve_loopback_mode_without_forwarded_for_is_just_local(fake: FakeLocalAPI) -> None:
    settings = IdentitySettings(serve_headers="loopback")
    assert resolve(fake, tcp("127.0.0.1", 40999), FORGED, settings=settings) is LOOPBACK_IDENTITY


def test_serve_loopback_mode_without_tailscaled_trusts_nothing() -> None:
    settings = IdentitySettings(serve_headers="loopback")
    headers = {**FORGED, "x-forwarded-for": "100.101.102.103"}
    assert resolve(None, tcp("127.0.0.1", 40999), headers, settings=settings) is LOOPBACK_IDENTITY


def test_serve_unix_mode_tagged_caller_via_forwarded_for(fake: FakeLocalAPI) -> None:
    settings = IdentitySettings(serve_headers="unix")
    headers = {
        "x-forwarded-for": "100.88.12.34",
        "tailscale-app-capabilities": '{"tailscale.com/cap/aperture":[]}',
    }
    identity = resolve(fake, SERVE_SOCKET, headers, settings=settings)
    assert identity.principal == "tag:ci,tag:prod"
    assert identity.source is IdentitySource.SERVE
    # The capabilities are tailscaled's CapMap, not the header's (empty) list.
    assert identity.capabilities == ({"role": "user", "models": "openai/gpt-4.1-mini"},)


def test_serve_unix_mode_without_tailscaled_reads_the_headers() -> None:
    settings = IdentitySettings(serve_headers="unix")
    headers = {
        "x-forwarded-for": "100.101.102.103",
        "tailscale-user-login": "alice@example.com",
        "tailscale-user-name": "=?utf-8?q?Ren=C3=A9_Dupont?=",
        "tailscale-user-profile-pic": "https://lh3.googleusercontent.com/a/rene-photo",
        "tailscale-app-capabilities": '{"tailscale.com/cap/aperture":[{"role":"admin"}],"x.com/cap/y":null}',
    }
    identity = resolve(None, SERVE_SOCKET, headers, settings=settings)
    assert identity.principal == "alice@example.com"
    assert identity.display_name == "René Dupont"
    assert identity.source is IdentitySource.SERVE
    assert identity.capabilities == ({"role": "admin"},)
    assert identity.other_capabilities == {"x.com/cap/y": None}
    tagged = {"x-forwarded-for": "100.88.12.34", "tailscale-app-capabilities": "{}"}
    with pytest.raises(AccessDenied, match="tagged devices behind serve"):
        resolve(None, SERVE_SOCKET, tagged, settings=settings)


def test_serve_unix_mode_malformed_capabilities_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    settings = IdentitySettings(serve_headers="unix")
    headers = {
        "x-forwarded-for": "100.101.102.103",
        "tailscale-user-login": "alice@example.com",
        "tailscale-app-capabilities": '{"tailscale.com/cap/aperture":[{"role":',
    }
    identity = resolve(None, SERVE_SOCKET, headers, settings=settings)
    assert identity.capabilities == ()
    assert "malformed Tailscale-App-Capabilities" in caplog.text


def test_serve_socket_requests_must_carry_serve_headers(fake: FakeLocalAPI) -> None:
    settings = IdentitySettings(serve_headers="unix")
    with pytest.raises(AccessDenied, match="without tailscale serve's headers"):
        resolve(fake, SERVE_SOCKET, {}, settings=settings)
    with pytest.raises(AccessDenied, match="sent no X-Forwarded-For"):
        resolve(fake, SERVE_SOCKET, FORGED, settings=settings)
    assert resolve(fake, SERVE_SOCKET, FORGED) is LOOPBACK_IDENTITY  # serve off: a local socket


@pytest.mark.parametrize("value", ["100.101.102.103, 10.0.0.1", "garbage", ""])
def test_bad_forwarded_for_is_denied(fake: FakeLocalAPI, value: str) -> None:
    settings = IdentitySettings(serve_headers="unix")
    with pytest.raises(AccessDenied, match="X-Forwarded-For is not a single IP address"):
        resolve(fake, SERVE_SOCKET, {"x-forwarded-for": value}, settings=settings)


def test_funnel_requests_are_denied(fake: FakeLocalAPI) -> None:
    settings = IdentitySettings(serve_headers="unix")
    headers = {"x-forwarded-for": "198.51.100.7", "tailscale-funnel-request": "?1"}
    with pytest.raises(AccessDenied, match="Funnel"):
        resolve(fake, SERVE_SOCKET, headers, settings=settings)


# -- gateway keys and order --------------------------------------------------------------------------


def test_key_identifies_a_caller_outside_the_tailnet(fake: FakeLocalAPI) -> None:
    keys = MemoryKeyStore()
    info, secret = keys.create_key("build-bot", expires_at=None)
    identity = resolve(fake, tcp("192.168.1.20"), {"x-api-key": secret}, keys=keys)
    assert (identity.principal, identity.kind, identity.source, identity.key_id) == (
        "build-bot",
        IdentityKind.KEY,
        IdentitySource.KEY,
        info.id,
    )


def test_revoked_key_is_refused(fake: FakeLocalAPI) -> None:
    keys = MemoryKeyStore()
    info, secret = keys.create_key("build-bot", expires_at=None)
    keys.revoke_key(info.id)
    with pytest.raises(Unauthenticated, match="has been revoked") as raised:
        resolve(fake, tcp("192.168.1.20"), {"authorization": f"Bearer {secret}"}, keys=keys)
    assert raised.value.status == 401


def test_placeholder_credentials_fall_through_to_loopback(fake: FakeLocalAPI) -> None:
    for headers in ({"authorization": "Bearer -"}, {"x-api-key": "sk-ant-placeholder"}, {}):
        assert resolve(fake, tcp("127.0.0.1", 40999), headers) is LOOPBACK_IDENTITY


def test_a_key_cannot_override_a_tailnet_caller(fake: FakeLocalAPI) -> None:
    keys = MemoryKeyStore()
    info, secret = keys.create_key("build-bot", expires_at=None)
    keys.revoke_key(info.id)
    headers = {"authorization": f"Bearer {secret}"}
    assert resolve(fake, tcp("100.101.102.103"), headers, keys=keys).principal == "alice@example.com"
    assert keys.lookups == 0


def test_configured_order_is_followed(fake: FakeLocalAPI) -> None:
    keys = MemoryKeyStore()
    _, secret = keys.create_key("build-bot", expires_at=None)
    settings = IdentitySettings(sources=("keys", "whois"))
    assert resolve(
        fake, tcp("100.101.102.103"), {"x-api-key": secret}, keys=keys, settings=settings
    ).principal == ("build-bot")
    with pytest.raises(AccessDenied, match=r"could not identify the caller at 127.0.0.1"):
        resolve(fake, tcp("127.0.0.1", 40999), settings=settings)


def test_loopback_without_tailscaled() -> None:
    assert resolve(None, tcp("127.0.0.1")) is LOOPBACK_IDENTITY
    assert resolve(None, tcp("::ffff:127.0.0.1")) is LOOPBACK_IDENTITY
    assert resolve(None, SERVE_SOCKET) is LOOPBACK_IDENTITY
    with pytest.raises(AccessDenied, match=r"could not identify the caller at 10.1.2.3"):
        resolve(None, tcp("10.1.2.3"))


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown identity source 'ldap'"):
        IdentityResolver(IdentitySettings(sources=("ldap",)), MemoryKeyStore(), **NO_TAILSCALED)
    with pytest.raises(ValueError, match="serve_headers"):
        IdentityResolver(IdentitySettings(serve_headers="always"), MemoryKeyStore(), **NO_TAILSCALED)


def test_nothing_secret_is_logged(fake: FakeLocalAPI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    keys = MemoryKeyStore()
    info, secret = keys.create_key("build-bot", expires_at=None)
    keys.revoke_key(info.id)
    for peer, headers in (
        (tcp("192.168.1.20"), {"authorization": f"Bearer {secret}"}),
        (tcp("192.168.1.20"), {"x-goog-api-key": "tg_" + "s" * 40}),
        (tcp("100.101.102.103"), {"x-api-key": secret}),
    ):
        try:
            resolve(fake, peer, headers, keys=keys)
        except (AccessDenied, Unauthenticated) as denied:
            assert secret[7:] not in denied.message
    assert secret[7:] not in caplog.text
    assert "s" * 20 not in caplog.text
    assert "nodekey:" not in caplog.text
    assert "203.0.113.7" not in caplog.text  # the caller's public endpoint, from WhoIs


def test_cached_resolution_is_cheap(fake: FakeLocalAPI) -> None:
    async def go() -> float:
        resolver = make(fake, IdentitySettings(whois_cache_ttl=60), MemoryKeyStore())
        cache = ConnectionCache()
        peer = tcp("100.101.102.103")
        await resolver.resolve(peer, {}, cache)
        rounds = 5000
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(rounds):
            await resolver.resolve(peer, {"authorization": "Bearer -"}, cache)
        elapsed = (loop.time() - start) / rounds
        await resolver.aclose()
        return elapsed

    assert asyncio.run(go()) < 100e-6  # generous; measured figures are in the report
    assert len(fake.whois_requests()) == 1
