"""Identity end to end: a real gateway asking a fake tailscaled, callers on distinct loopback addresses.

Each caller connects from its own source address (``127.0.0.2`` is Alice's laptop, ``127.0.0.3`` a
tagged CI runner, ``127.0.0.4`` Bob's laptop with tailnet-policy grants, ``127.0.0.9`` an address
tailscaled does not know), through the official SDKs and raw HTTP. Every test checks what the
caller sees, what was recorded, and what reached the mock upstream.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tailgate.api import register_api
from tailgate.store import Store, open_store
from tests.fake_localapi import FakeLocalAPI
from tests.harness import RunningGateway, running_gateway
from tests.mock_upstream import MockUpstream

ALICE, CI, BOB, STRANGER = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"
ANSWERS = {ALICE: "user_alice", CI: "tagged_multi", BOB: "caps_multi_grant"}
PROVIDER_KEYS = {"bearer": "sk-openai-SECRET", "x-api-key": "sk-ant-SECRET", "x-goog-api-key": "AIza-SECRET"}
CLIENT_KEY = "sk-client-own-SECRET"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
FORGED = {
    "tailscale-user-login": "admin@example.com",
    "tailscale-user-name": "Admin",
    "tailscale-app-capabilities": '{"tailscale.com/cap/aperture":[{"role":"admin","models":"**"}]}',
    "x-forwarded-for": "100.101.102.103",
}


def gateway_config(mock_url: str, socket: str) -> str:
    return f"""{{
  "server": {{"identity": {{"sources": ["whois", "keys"], "tailscale_socket": "{socket}"}}}},
  "providers": {{
    "openai": {{"baseurl": "{mock_url}", "apikey": "sk-openai-SECRET",
      "models": ["gpt-4o-mini", "gpt-4.1-mini"], "compatibility": {{"openai_chat": true}}}},
    "anthropic": {{"baseurl": "{mock_url}", "apikey": "sk-ant-SECRET", "authorization": "x-api-key",
      "models": ["claude-haiku-4-5"], "compatibility": {{"openai_chat": false, "anthropic_messages": true}}}},
    "gemini": {{"baseurl": "{mock_url}", "apikey": "AIza-SECRET", "authorization": "x-goog-api-key",
      "models": ["gemini-2.5-flash"],
      "compatibility": {{"openai_chat": false, "gemini_generate_content": true}}}},
  }},
  "grants": [
    {{"src": ["alice@example.com"], "app": {{"tailscale.com/cap/aperture": [
      {{"role": "admin"}}, {{"models": "**", "add_headers": ["X-Team: alice-team"]}}]}}}},
    // Bob's role and most models come from the tailnet policy (his WhoIs CapMap); this adds Gemini.
    {{"src": ["bob@example.com"], "app": {{"tailscale.com/cap/aperture": [{{"models": "gemini/**"}}]}}}},
    {{"src": ["build-bot"],
      "app": {{"tailscale.com/cap/aperture": [{{"role": "user"}}, {{"models": "**"}}]}}}},
  ],
  // A slow refill: a small charge must stay visible in the balance however slow the machine.
  "quotas": {{"daily:<user>": {{"capacity": "$10.00", "rate": "$10.00/month"}}}},
}}"""


class Env:
    def __init__(
        self, gw: RunningGateway, mock: MockUpstream, tailscaled: FakeLocalAPI, store: Store
    ) -> None:
        self.gw, self.mock, self.tailscaled, self.store = gw, mock, tailscaled, store

    def raw(
        self, source: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """One raw HTTP exchange from ``source``; the JSON answer."""
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=10, source_address=(source, 0))
        payload = orjson.dumps(body) if body is not None else None
        conn.request(
            method, path, body=payload, headers={"content-type": "application/json", **(headers or {})}
        )
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, orjson.loads(data) if data else None

    def http(self, source: str) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.HTTPTransport(local_address=source), timeout=10)

    def openai(self, source: str, key: str = CLIENT_KEY) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gw.url + "/v1", api_key=key, max_retries=0, http_client=self.http(source)
        )

    def anthropic(self, source: str, key: str = CLIENT_KEY) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=self.gw.url, api_key=key, max_retries=0, http_client=self.http(source)
        )

    def genai(self, source: str, key: str = CLIENT_KEY) -> genai.Client:
        options = genai_types.HttpOptions(base_url=self.gw.url, httpx_client=self.http(source))
        return genai.Client(api_key=key, http_options=options)

    def sdk_calls(self, source: str, key: str = CLIENT_KEY) -> None:
        """One call through each official SDK; each must succeed."""
        chat = self.openai(source, key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
        assert "demo provider" in (chat.choices[0].message.content or "")
        message = self.anthropic(source, key).messages.create(
            model="claude-haiku-4-5", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.usage.output_tokens > 0
        answer = self.genai(source, key).models.generate_content(model="gemini-2.5-flash", contents="hello")
        assert "demo provider" in (answer.text or "")

    def upstream_headers(self) -> list[dict[str, str]]:
        return [{k.lower(): v for k, v in r.headers} for r in self.mock.requests]


@pytest.fixture
def env(mock_upstream: MockUpstream, tmp_path: Path) -> Iterator[Env]:
    for style, key in PROVIDER_KEYS.items():
        mock_upstream.expect_credential(style, key)
    store = open_store(str(tmp_path / "tailgate.db"))
    with FakeLocalAPI(ANSWERS) as tailscaled:
        config = gateway_config(mock_upstream.base_url, tailscaled.socket_path)
        with running_gateway(config, tmp_path, store=store) as gw:

            async def mount() -> None:
                gw.gateway.mount(register_api)

            gw.call(mount())
            yield Env(gw, mock_upstream, tailscaled, store)


def assert_only_provider_keys_upstream(env: Env) -> None:
    """Every upstream request carried the provider's key and nothing the client sent as a credential."""
    for headers in env.upstream_headers():
        sent = {h: headers[h] for h in ("authorization", "x-api-key", "x-goog-api-key") if h in headers}
        assert len(sent) == 1, sent
        assert next(iter(sent.values())) in {f"Bearer {PROVIDER_KEYS['bearer']}", *PROVIDER_KEYS.values()}
    everything = orjson.dumps([r.headers for r in env.mock.requests]).decode()
    assert CLIENT_KEY not in everything and "tg_" not in everything


# -- tailnet callers ------------------------------------------------------------------------------


def test_user_node_through_every_sdk(env: Env) -> None:
    env.sdk_calls(ALICE)
    records = env.gw.records()
    assert len(records) == 3
    for record in records:
        assert (record.principal, record.identity_kind, record.identity_source) == (
            "alice@example.com",
            "user",
            "whois",
        )
        assert record.node_id == "nKp3xR7CNTRL" and record.display_name == "Alice Smith"
    assert_only_provider_keys_upstream(env)
    assert [h.get("x-team") for h in env.upstream_headers()] == ["alice-team"] * 3  # grant add_headers


def test_placeholder_keys_are_ignored(env: Env) -> None:
    for headers in ({"authorization": "Bearer -"}, {"x-api-key": "-"}, {"x-goog-api-key": "-"}, {}):
        status, _ = env.raw(ALICE, "POST", "/v1/chat/completions", CHAT, headers)
        assert status == 200
    assert {r.principal for r in env.gw.records()} == {"alice@example.com"}
    assert_only_provider_keys_upstream(env)


def test_tagged_node_is_named_by_its_sorted_tags(env: Env) -> None:
    client = env.openai(CI)
    chat = client.chat.completions.create(model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content
    (record,) = env.gw.records()
    assert (record.principal, record.identity_kind, record.tags) == (
        "tag:ci,tag:prod",
        "tagged",
        "tag:ci,tag:prod",
    )
    assert record.node_id == "nT4gg3dCNTRL"
    # Its only grant is the tailnet policy's: one model, listed alone everywhere.
    assert [m.id for m in client.models.list()] == ["gpt-4.1-mini"]
    status, providers = env.raw(CI, "GET", "/api/providers")
    assert status == 200 and [(p["id"], p["models"]) for p in providers] == [("openai", ["gpt-4.1-mini"])]
    status, listed = env.raw(CI, "GET", "/v1/models", headers={"anthropic-version": "2023-06-01"})
    assert [m["id"] for m in listed["data"]] == ["gpt-4.1-mini"]
    status, me = env.raw(CI, "GET", "/api/me")
    assert (me["principal"], me["role"], me["models"]) == ("tag:ci,tag:prod", "user", ["openai/gpt-4.1-mini"])


def test_denials_in_each_dialect(env: Env) -> None:
    with pytest.raises(openai.PermissionDeniedError) as oa:
        env.openai(CI).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert oa.value.body == {
        "message": 'access denied: model "openai/gpt-4o-mini" is not granted to tag:ci,tag:prod',
        "type": "permission_error",
        "param": None,
        "code": "access_denied",
    }
    with pytest.raises(anthropic.PermissionDeniedError) as an:
        env.anthropic(CI).messages.create(
            model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert an.value.body == {
        "type": "error",
        "error": {
            "type": "permission_error",
            "message": 'access denied: model "anthropic/claude-haiku-4-5" is not granted to tag:ci,tag:prod',
        },
    }
    with pytest.raises(genai_errors.ClientError) as gm:
        env.genai(CI).models.generate_content(model="gemini-2.5-flash", contents="x")
    assert (gm.value.code, gm.value.status) == (403, "PERMISSION_DENIED")
    assert (
        gm.value.message == 'access denied: model "gemini/gemini-2.5-flash" is not granted to tag:ci,tag:prod'
    )
    assert env.mock.requests == []
    assert {r.outcome for r in env.gw.records()} == {"denied"}


def test_tailnet_policy_grants_merge_with_config_grants(env: Env) -> None:
    env.sdk_calls(
        BOB
    )  # role and Anthropic from the policy, Gemini from the config, OpenAI gpt-4* from the policy
    records = env.gw.records()
    assert {r.principal for r in records} == {"bob@example.com"} and len(records) == 3
    by_path = {r.path: h for r, h in zip(env.mock.requests, env.upstream_headers(), strict=True)}
    assert by_path["/v1/chat/completions"]["x-team"] == "platform"  # the policy's add_headers, OpenAI only
    assert "x-team" not in by_path["/v1/messages"]
    status, me = env.raw(BOB, "GET", "/api/me")
    assert me["role"] == "user" and me["read_metrics"] is False
    assert me["models"] == [
        "openai/gpt-4o-mini",
        "openai/gpt-4.1-mini",
        "anthropic/claude-haiku-4-5",
        "gemini/gemini-2.5-flash",
    ]
    status, quotas = env.raw(BOB, "GET", "/api/quotas")
    assert status == 200
    (bucket,) = quotas["buckets"]  # the policy's quota, charged for the Anthropic call only
    assert bucket["bucket"] == "daily:bob@example.com" and bucket["balance_nd"] < bucket["capacity_nd"]


# -- callers tailscaled cannot vouch for ----------------------------------------------------------


def test_unknown_address_is_refused_whatever_it_presents(env: Env) -> None:
    expected = "could not identify the caller at 127.0.0.9: not a tailnet peer tailscaled knows"
    for headers in ({}, {"authorization": "Bearer -"}, {"authorization": f"Bearer {CLIENT_KEY}"}, FORGED):
        status, body = env.raw(STRANGER, "POST", "/v1/chat/completions", CHAT, headers)
        assert status == 403 and body["error"]["message"].startswith(expected)
    assert env.mock.requests == []
    assert {(r.principal, r.outcome) for r in env.gw.records()} == {("(unknown)", "denied")}


def test_forged_identity_headers_change_nothing_and_never_travel(env: Env) -> None:
    status, _ = env.raw(ALICE, "POST", "/v1/chat/completions", CHAT, FORGED)
    assert status == 200
    status, me = env.raw(ALICE, "GET", "/api/me", headers=FORGED)
    assert me["principal"] == "alice@example.com"
    status, _ = env.raw(CI, "GET", "/api/keys", headers=FORGED)
    assert status == 403  # the admin role the forged capabilities claim is not given
    (record,) = env.gw.records()
    assert record.principal == "alice@example.com"
    (sent,) = env.upstream_headers()
    assert not set(FORGED) & set(sent)


def test_tailscaled_down_is_503_in_the_callers_dialect(env: Env) -> None:
    env.tailscaled.stop()
    status, body = env.raw(ALICE, "POST", "/v1/chat/completions", CHAT)
    assert status == 503 and body["error"]["code"] == "identity_unavailable"
    assert "tailscaled" in body["error"]["message"]
    status, body = env.raw(ALICE, "POST", "/v1/messages", MESSAGES)
    assert status == 503 and body["type"] == "error" and body["error"]["type"] == "api_error"
    status, body = env.raw(ALICE, "POST", "/v1beta/models/gemini-2.5-flash:generateContent", GEMINI)
    assert status == 503 and (body["error"]["code"], body["error"]["status"]) == (503, "UNAVAILABLE")
    with pytest.raises(anthropic.InternalServerError) as failed:
        env.anthropic(ALICE).messages.create(**MESSAGES)
    assert failed.value.status_code == 503
    assert env.mock.requests == []
    env.tailscaled.start()
    status, _ = env.raw(ALICE, "POST", "/v1/chat/completions", CHAT)
    assert status == 200


# -- gateway API keys -----------------------------------------------------------------------------


def test_gateway_keys_in_each_credential_header(env: Env) -> None:
    _, secret = env.store.create_key("build-bot", expires_at=None, note="e2e")
    env.sdk_calls(STRANGER, secret)  # Authorization: Bearer, x-api-key, x-goog-api-key
    records = env.gw.records()
    assert len(records) == 3
    assert {(r.principal, r.identity_kind, r.identity_source) for r in records} == {
        ("build-bot", "key", "key")
    }
    assert_only_provider_keys_upstream(env)


def test_a_key_never_changes_a_tailnet_callers_identity(env: Env) -> None:
    _, secret = env.store.create_key("build-bot", expires_at=None)
    status, me = env.raw(CI, "GET", "/api/me", headers={"authorization": f"Bearer {secret}"})
    assert status == 200 and me["principal"] == "tag:ci,tag:prod"


def test_revoked_and_expired_keys_are_refused(env: Env) -> None:
    revoked, revoked_secret = env.store.create_key("build-bot", expires_at=None)
    assert env.store.revoke_key(revoked.id)
    expired, expired_secret = env.store.create_key(
        "build-bot", expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    with pytest.raises(openai.AuthenticationError) as oa:
        env.openai(STRANGER, revoked_secret).chat.completions.create(**CHAT)
    assert oa.value.body["message"] == f"gateway API key {revoked.prefix}… has been revoked"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError) as an:
        env.anthropic(STRANGER, expired_secret).messages.create(**MESSAGES)
    assert an.value.body["error"] == {  # type: ignore[index]
        "type": "authentication_error",
        "message": f"gateway API key {expired.prefix}… has expired",
    }
    status, body = env.raw(STRANGER, "POST", "/v1/chat/completions", CHAT, {"x-api-key": "tg_" + "x" * 40})
    assert status == 401 and body["error"]["message"] == "invalid gateway API key"
    assert env.mock.requests == []
