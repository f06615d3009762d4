"""The LocalAPI client against the fake tailscaled, and reading WhoIs answers into identities."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from typing import Any

import pytest

from tailgate.errors import AccessDenied, IdentityUnavailable
from tailgate.identity import IdentityKind, IdentitySource
from tailgate.identity.localapi import LocalAPI, configured_socket, discover_socket
from tailgate.identity.peer import Peer, is_loopback, whois_addr
from tailgate.identity.whois import identity_from_whois, split_capabilities
from tests.fake_localapi import FakeLocalAPI, fixture

CAP = "tailscale.com/cap/aperture"


@pytest.mark.parametrize(
    ("ip", "port", "expected"),
    [
        ("100.101.102.103", 51234, "100.101.102.103:51234"),
        ("::ffff:100.101.102.103", 51234, "100.101.102.103:51234"),
        ("fd7a:115c:a1e0::3a01:6667", 443, "[fd7a:115c:a1e0::3a01:6667]:443"),
        ("fe80::1%eth0", 80, "[fe80::1]:80"),
        ("100.101.102.103", None, "100.101.102.103"),
        ("::ffff:127.0.0.1", None, "127.0.0.1"),
        ("not-an-ip", 80, None),
    ],
)
def test_whois_addr(ip: str, port: int | None, expected: str | None) -> None:
    assert whois_addr(ip, port) == expected


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (Peer("tcp", "127.0.0.1", 1, "x"), True),
        (Peer("tcp", "127.8.9.10", 1, "x"), True),
        (Peer("tcp", "::1", 1, "x"), True),
        (Peer("tcp", "::ffff:127.0.0.1", 1, "x"), True),
        (Peer("tcp", "100.101.102.103", 1, "x"), False),
        (Peer("tcp", "::ffff:100.101.102.103", 1, "x"), False),
        (Peer("unix", None, None, "unix:/run/x.sock"), False),
    ],
)
def test_is_loopback(peer: Peer, expected: bool) -> None:
    assert is_loopback(peer) is expected


def test_configured_socket_prefers_config_then_environment() -> None:
    assert configured_socket("/srv/ts.sock", {"TS_SOCKET": "/tmp/t.sock"}) == "/srv/ts.sock"
    assert configured_socket(None, {"TS_SOCKET": "/tmp/t.sock"}) == "/tmp/t.sock"
    assert configured_socket(None, {}) is None


def test_discover_socket_probes_root_owned_defaults_only() -> None:
    present = {"/run/tailscale/tailscaled.sock", "/tmp/tailscaled.sock"}
    assert discover_socket("linux", present.__contains__) == "/run/tailscale/tailscaled.sock"
    assert discover_socket("linux", {"/tmp/tailscaled.sock"}.__contains__) is None
    assert (
        discover_socket("darwin", {"/var/run/tailscaled.socket"}.__contains__) == "/var/run/tailscaled.socket"
    )
    assert discover_socket("win32", lambda _: True) is None


def whois(fake: FakeLocalAPI, addr: str, **kwargs: Any) -> dict[str, Any] | None:
    async def go() -> dict[str, Any] | None:
        client = LocalAPI(fake.socket_path, **kwargs)
        try:
            return await client.whois(addr)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_request_shape_matches_tailscaled() -> None:
    with FakeLocalAPI({"100.101.102.103": "user_alice"}) as fake:
        assert whois(fake, "100.101.102.103:51234") == fixture("user_alice")
        (seen,) = fake.requests
    assert seen.method == "GET"
    assert seen.path == "/localapi/v0/whois"
    assert seen.query == {"addr": "100.101.102.103:51234", "proto": "tcp"}
    assert seen.headers["host"] == "local-tailscaled.sock"
    assert "origin" not in seen.headers
    assert "referer" not in seen.headers


def test_ipv6_addr_is_url_encoded_and_found() -> None:
    with FakeLocalAPI({"fd7a:115c:a1e0::3a01:6667": "user_alice"}) as fake:
        assert whois(fake, "[fd7a:115c:a1e0::3a01:6667]:443") == fixture("user_alice")
        assert fake.requests[0].query["addr"] == "[fd7a:115c:a1e0::3a01:6667]:443"


def test_unknown_address_is_none() -> None:
    with FakeLocalAPI({}) as fake:
        assert whois(fake, "192.168.1.20:4000") is None


def test_chunked_answer_is_read_whole() -> None:
    with FakeLocalAPI({"100.77.1.2": "caps_multi_grant"}, chunked=True) as fake:
        assert whois(fake, "100.77.1.2:1") == fixture("caps_multi_grant")


@pytest.mark.parametrize(
    ("status", "text"),
    [(500, "500 server has no local backend"), (403, "403 whois access denied")],
)
def test_error_status_fails_closed(status: int, text: str) -> None:
    with (
        FakeLocalAPI({"100.101.102.103": "user_alice"}, fail_status=status) as fake,
        pytest.raises(IdentityUnavailable, match=text) as raised,
    ):
        whois(fake, "100.101.102.103:1")
    assert raised.value.status == 503


def test_timeout_fails_closed() -> None:
    with (
        FakeLocalAPI({"100.101.102.103": "user_alice"}, delay=1.0) as fake,
        pytest.raises(IdentityUnavailable, match=r"did not answer within 0.1s"),
    ):
        whois(fake, "100.101.102.103:1", timeout=0.1)


def test_absent_socket_fails_closed() -> None:
    with FakeLocalAPI({}) as fake:
        fake.stop()
        with pytest.raises(IdentityUnavailable, match="unreachable"):
            whois(fake, "100.101.102.103:1")


def test_refused_connection_fails_closed() -> None:
    directory = tempfile.mkdtemp(prefix="tsdead-", dir="/tmp")
    path = os.path.join(directory, "tailscaled.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        dead.bind(path)  # a socket file nobody listens on: the daemon died
        client = LocalAPI(path)
        with pytest.raises(IdentityUnavailable, match=r"unreachable \(ConnectionRefusedError\)"):
            asyncio.run(client.whois("100.101.102.103:1"))
    finally:
        dead.close()
        os.unlink(path)
        os.rmdir(directory)


def test_connections_are_kept_alive_and_survive_a_restart() -> None:
    with FakeLocalAPI({"100.101.102.103": "user_alice"}) as fake:

        async def go() -> None:
            client = LocalAPI(fake.socket_path)
            try:
                for _ in range(5):
                    assert await client.whois("100.101.102.103:1") is not None
                assert fake.connections == 1
                fake.stop()
                fake.start()
                assert await client.whois("100.101.102.103:1") is not None
                assert fake.connections == 2
            finally:
                await client.aclose()

        asyncio.run(go())


def test_connection_close_answers_are_read() -> None:
    with FakeLocalAPI({"100.101.102.103": "user_alice"}, close_idle=True) as fake:

        async def go() -> None:
            client = LocalAPI(fake.socket_path)
            try:
                for _ in range(3):
                    assert await client.whois("100.101.102.103:1") == fixture("user_alice")
            finally:
                await client.aclose()

        asyncio.run(go())
        assert fake.connections == 3


def test_self_node_id() -> None:
    with FakeLocalAPI({}, self_id="nSelf01CNTRL") as fake:
        assert asyncio.run(LocalAPI(fake.socket_path).self_node_id()) == "nSelf01CNTRL"
        assert fake.requests[0].query == {"peers": "false"}


def test_user_node() -> None:
    identity = identity_from_whois(fixture("user_alice"), CAP)
    assert identity.principal == "alice@example.com"
    assert identity.kind is IdentityKind.USER
    assert identity.source is IdentitySource.WHOIS
    assert identity.display_name == "Alice Smith"
    assert identity.node_id == "nKp3xR7CNTRL"
    assert identity.node_name == "alice-mbp.tail9f3c2.ts.net"
    assert identity.groups == ("group:ai-admins",)
    assert identity.profile_pic == "https://lh3.googleusercontent.com/a/alice-photo"
    assert identity.tags == ()
    assert identity.capabilities == ()
    assert identity.other_capabilities == {"https://tailscale.com/cap/file-sharing-target": None}
    assert not identity.shared_in


def test_tagged_node_is_named_by_sorted_tags_never_tagged_devices() -> None:
    identity = identity_from_whois(fixture("tagged_multi"), CAP)
    assert identity.principal == "tag:ci,tag:prod"
    assert identity.kind is IdentityKind.TAGGED
    assert identity.tags == ("tag:ci", "tag:prod")
    assert identity.groups == ()
    assert identity.node_id == "nT4gg3dCNTRL"
    assert identity.display_name == "ci-runner-7"
    assert identity.capabilities == ({"role": "user", "models": "openai/gpt-4.1-mini"},)


def test_capmap_values_split_from_other_capabilities() -> None:
    identity = identity_from_whois(fixture("caps_multi_grant"), CAP)
    assert identity.principal == "bob@example.com"
    assert identity.capabilities == (
        {"role": "user"},
        {"models": "anthropic/**", "quotas": [{"bucket": "daily:<user>"}]},
        {"models": "openai/gpt-4*", "add_headers": ["X-Team: platform"]},
        {"read_metrics": True},
    )
    assert identity.other_capabilities == {
        "mycompany.com/cap/policy": [{"tier": "enterprise"}],
        "tailscale.com/cap/golink": None,
    }


def test_configured_capability_name() -> None:
    identity = identity_from_whois(fixture("caps_multi_grant"), "mycompany.com/cap/policy")
    assert identity.capabilities == ({"tier": "enterprise"},)
    assert CAP in identity.other_capabilities


def test_null_and_malformed_capability_values(caplog: pytest.LogCaptureFixture) -> None:
    assert split_capabilities({CAP: None}, CAP) == ((), {})
    assert split_capabilities({CAP: [{"role": "user"}, "admin", 3]}, CAP) == (({"role": "user"},), {})
    assert split_capabilities({CAP: {"role": "admin"}}, CAP) == ((), {})
    assert "not a JSON object" in caplog.text


def test_node_without_user_or_tags_is_denied() -> None:
    with pytest.raises(AccessDenied, match=r"node orphan.tail9f3c2.ts.net has neither a user nor tags"):
        identity_from_whois(fixture("node_no_owner"), CAP)


def test_shared_in_and_headscale_nodes() -> None:
    shared = identity_from_whois(fixture("shared_in"), CAP)
    assert shared.shared_in
    assert shared.principal == "carol@other.example"
    headscale = identity_from_whois(fixture("headscale_user"), CAP)
    assert headscale.principal == "dave"
    assert headscale.node_id == "12"
    assert headscale.display_name == "René Dupont 🐿"


def test_unreadable_answer_fails_closed() -> None:
    with pytest.raises(IdentityUnavailable):
        identity_from_whois({"Node": None, "UserProfile": {}}, CAP)
