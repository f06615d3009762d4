"""The JSON API on a real gateway: every endpoint, user and admin scoping, pagination, CSRF, config saves.

Callers are told apart by gateway API keys (``carol``, ``dave``, ``nobody``); a request without
a key is ``(loopback)``, the admin. The demo provider answers, so no upstream is involved.
"""

from __future__ import annotations

import http.client
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tailgate.api import register_api
from tailgate.config.loader import load_config_file
from tailgate.csrf import same_origin
from tailgate.store import Store, open_store
from tests.harness import RunningGateway, config_from, running_gateway

CONFIG = """{
  "server": {"identity": {"sources": ["keys", "loopback"]}},
  "providers": {
    "demo": {
      "type": "demo", "models": ["demo-fast", "demo-smart"],
      "compatibility": {"openai_chat": true, "anthropic_messages": true},
      "cost_basis": "openai",
      "model_cost_map": [{"match": "demo-fast", "as": "gpt-4o-mini"}],
    },
  },
  "grants": [
    {"src": ["(loopback)"], "app": {"tailscale.com/cap/aperture": [{"role": "admin"}, {"models": "**"}]}},
    {"src": ["carol", "dave"], "app": {"tailscale.com/cap/aperture": [
      {"role": "user"},
      {"models": "demo/**", "quotas": [{"bucket": "daily:<user>"}]},
    ]}},
  ],
  // Refill slow enough that one small charge stays visible for minutes, however slow the machine.
  "quotas": {"daily:<user>": {"capacity": "$1.00", "rate": "$1.00/month"}},
}"""


TYPO_WARNING = 'unknown config key "providers.demo.cost_bassis" (did you mean "cost_basis"?)'


class Api:
    """A running gateway with the API mounted and a key per test principal."""

    def __init__(self, gw: RunningGateway, keys: dict[str, str]) -> None:
        self.gw = gw
        self.keys = keys
        self.last_headers: dict[str, str] = {}

    def call(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        *,
        who: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=10)
        sent = dict(headers or {})
        if who is not None:
            sent["authorization"] = f"Bearer {self.keys[who]}"
        payload = orjson.dumps(body) if isinstance(body, dict) else body
        conn.request(method, path, body=payload, headers=sent)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        self.last_headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, orjson.loads(data) if data else None

    def ok(self, method: str, path: str, body: bytes | dict[str, Any] | None = None, **kw: Any) -> Any:
        status, doc = self.call(method, path, body, **kw)
        assert status in (200, 201), (status, doc)
        return doc

    def error(self, status: int, method: str, path: str, body: Any = None, **kw: Any) -> str:
        got, doc = self.call(method, path, body, **kw)
        assert got == status, (got, doc)
        message: str = doc["error"]["message"]
        return message

    def chat(self, who: str | None, model: str = "demo-fast", session: str | None = None) -> int:
        headers = {"content-type": "application/json"}
        if session is not None:
            headers["x-session-id"] = session
        body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
        status, _ = self.call("POST", "/v1/chat/completions", body, who=who, headers=headers)
        return status


def mount(gw: RunningGateway) -> None:
    async def add() -> None:
        gw.gateway.mount(register_api)

    gw.call(add())


def make_keys(store: Store, *names: str) -> dict[str, str]:
    store.migrate()
    return {name: store.create_key(name, expires_at=None)[1] for name in names}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    store = open_store(str(tmp_path / "tailgate.db"))
    keys = make_keys(store, "carol", "dave", "nobody")
    with running_gateway(CONFIG, tmp_path, store=store) as gw:
        mount(gw)
        yield Api(gw, keys)


# -- who is asking --------------------------------------------------------------------------------


def test_me_for_admin_user_and_caller_without_role(api: Api) -> None:
    admin = api.ok("GET", "/api/me")
    assert admin["principal"] == "(loopback)" and admin["role"] == "admin"
    assert admin["models"] == ["demo/demo-fast", "demo/demo-smart"]
    carol = api.ok("GET", "/api/me", who="carol")
    assert [carol[k] for k in ("principal", "kind", "source", "role")] == ["carol", "key", "key", "user"]
    assert carol["key_id"] and carol["read_metrics"] is False
    nobody = api.ok("GET", "/api/me", who="nobody")
    assert nobody["role"] is None and nobody["models"] == []


def test_no_role_is_refused_everywhere(api: Api) -> None:
    for path in ("/api/logs", "/api/sessions", "/api/quotas", "/api/explain?model=demo/demo-fast"):
        assert api.error(403, "GET", path, who="nobody") == "access denied: no role granted"


def test_admin_endpoints_refuse_users(api: Api) -> None:
    for method, path, body in (
        ("GET", "/api/keys", None),
        ("POST", "/api/keys", {"principal": "x"}),
        ("DELETE", "/api/keys/abc", None),
        ("GET", "/api/config", None),
        ("PUT", "/api/config", b"{}"),
        ("POST", "/aperture/config:validate", b"{}"),
        ("POST", "/api/quotas/refill", {"bucket": "daily:carol", "amount": "$1"}),
    ):
        assert api.error(403, method, path, body, who="carol") == "access denied: this needs the admin role"


# -- logs and sessions ----------------------------------------------------------------------------


def test_logs_are_scoped_newest_first_and_paginated(api: Api) -> None:
    for who in ("carol", "dave", "carol", None, "carol"):
        assert api.chat(who) == 200
    api.gw.flush()
    everyone = api.ok("GET", "/api/logs")["records"]
    assert sorted(r["principal"] for r in everyone) == ["(loopback)", "carol", "carol", "carol", "dave"]
    keys = [(r["ts_ms"], r["id"]) for r in everyone]
    assert keys == sorted(keys, reverse=True)  # newest first (ids break ties within a millisecond)
    carol = api.ok("GET", "/api/logs", who="carol")["records"]
    assert [r["id"] for r in carol] == [r["id"] for r in everyone if r["principal"] == "carol"]
    only_dave = api.ok("GET", "/api/logs?principal=dave")["records"]
    assert [r["principal"] for r in only_dave] == ["dave"]
    message = api.error(403, "GET", "/api/logs?principal=dave", who="carol")
    assert message == "access denied: only admins may see other principals' requests"

    pages, cursor = [], ""
    for _ in range(5):  # bounded: 5 records in pages of 2
        doc = api.ok("GET", f"/api/logs?limit=2{cursor}")
        pages.append([r["id"] for r in doc["records"]])
        if doc["next_cursor"] is None:
            break
        cursor = f"&cursor={doc['next_cursor']}"
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == [r["id"] for r in everyone]


def test_record_fields_money_and_filters(api: Api) -> None:
    for model, status in (("demo-fast", 200), ("demo-smart", 200), ("no-such-model", 404)):
        assert api.chat("carol", model) == status  # demo-smart has no price mapped: unpriced
        time.sleep(0.002)  # distinct milliseconds, so since/until can tell them apart
    api.gw.flush()
    records = api.ok("GET", "/api/logs", who="carol")["records"]
    missing, smart, fast = records
    assert fast["model"] == "demo-fast" and fast["provider"] == "demo" and fast["outcome"] == "ok"
    assert isinstance(fast["cost_nd"], int) and fast["cost_nd"] > 0 and fast["unpriced"] is False
    assert fast["cost"].startswith("$0.")
    assert fast["usage"]["input_tokens"] > 0 and fast["usage"]["total_tokens"] > 0
    assert fast["time"].endswith("Z") and "capture" not in fast
    assert smart["cost_nd"] is None and smart["cost"] is None and smart["unpriced"] is True
    assert missing["status"] == 404 and missing["outcome"] == "invalid" and missing["unpriced"] is False
    expected_fields = {"id", "ts_ms", "principal", "identity_kind", "identity_source", "node_id", "tags"}
    assert expected_fields <= set(fast)

    def ids(query: str) -> list[str]:
        return [r["id"] for r in api.ok("GET", f"/api/logs?{query}", who="carol")["records"]]

    assert ids("model=demo-smart") == [smart["id"]]
    assert ids("provider=demo") == [smart["id"], fast["id"]]
    assert ids("status=404") == [missing["id"]]
    assert ids("outcome=invalid") == [missing["id"]]
    assert ids(f"since={smart['ts_ms']}") == [missing["id"], smart["id"]]
    assert ids(f"until={smart['ts_ms']}") == [fast["id"]]
    assert ids("since=2000-01-01T00:00:00Z&until=2000-01-02") == []
    assert ids("since=2000-01-01") == [missing["id"], smart["id"], fast["id"]]
    assert "limit" in api.error(400, "GET", "/api/logs?limit=1001")
    assert "since" in api.error(400, "GET", "/api/logs?since=yesterday")
    assert "outcome" in api.error(400, "GET", "/api/logs?outcome=fine")
    assert "status" in api.error(400, "GET", "/api/logs?status=ok")
    assert api.error(400, "GET", "/api/logs?cursor=garbage") == "invalid cursor"


def test_one_record_with_its_capture(api: Api) -> None:
    assert api.chat("carol") == 200
    api.gw.flush()
    (record,) = api.ok("GET", "/api/logs", who="carol")["records"]
    detail = api.ok("GET", f"/api/logs/{record['id']}", who="carol")
    capture = detail["capture"]
    assert {k: v for k, v in detail.items() if k != "capture"} == record
    assert ["authorization", "[redacted]"] in capture["request_headers"]
    assert api.keys["carol"] not in orjson.dumps(detail).decode()
    assert capture["request_body_encoding"] == "utf-8"
    assert orjson.loads(capture["request_body"])["model"] == "demo-fast"
    assert capture["response_body_encoding"] == "utf-8" and "demo provider" in capture["response_body"]
    assert api.ok("GET", f"/api/logs/{record['id']}")["id"] == record["id"]  # the admin sees it too
    assert api.error(404, "GET", f"/api/logs/{record['id']}", who="dave") == f"no record {record['id']!r}"
    api.error(404, "GET", "/api/logs/0000")


def test_sessions_with_totals(api: Api) -> None:
    for _ in range(2):
        assert api.chat("carol", session="s-1") == 200
    assert api.chat("dave", session="s-2") == 200
    api.gw.flush()
    (mine,) = api.ok("GET", "/api/sessions", who="carol")["sessions"]
    assert mine["session_id"] == "s-1" and mine["principal"] == "carol"
    assert mine["totals"]["requests"] == 2 and mine["totals"]["cost_nd"] > 0
    assert mine["totals"]["cost"].startswith("$") and mine["first_ts_ms"] <= mine["last_ts_ms"]
    everyone = api.ok("GET", "/api/sessions")
    assert [s["session_id"] for s in everyone["sessions"]] == ["s-2", "s-1"]
    first = api.ok("GET", "/api/sessions?limit=1")
    rest = api.ok("GET", f"/api/sessions?limit=1&cursor={first['next_cursor']}")
    assert [s["session_id"] for s in first["sessions"] + rest["sessions"]] == ["s-2", "s-1"]
    assert rest["next_cursor"] is None
    assert api.ok("GET", "/api/sessions?principal=dave")["sessions"][0]["session_id"] == "s-2"
    api.error(403, "GET", "/api/sessions?principal=dave", who="carol")


# -- quotas ---------------------------------------------------------------------------------------


def test_quotas_own_buckets_and_admin_refill(api: Api) -> None:
    (fresh,) = api.ok("GET", "/api/quotas", who="dave")["buckets"]
    assert fresh == {
        "bucket": "daily:dave",
        "quota": "daily:<user>",
        "balance_nd": 1_000_000_000,
        "capacity_nd": 1_000_000_000,
        "balance": "$1.00",
        "capacity": "$1.00",
        "rate": "$1.00/month",
        "updated_at": None,
    }
    assert api.chat("carol") == 200
    api.gw.flush()
    (carol,) = api.ok("GET", "/api/quotas", who="carol")["buckets"]
    assert carol["bucket"] == "daily:carol" and carol["balance_nd"] < carol["capacity_nd"]
    assert carol["updated_at"] is not None
    every = api.ok("GET", "/api/quotas")["buckets"]
    assert [b["bucket"] for b in every] == ["daily:carol"]  # the admin's grants reference none

    refilled = api.ok("POST", "/api/quotas/refill", {"bucket": "daily:carol", "amount": "$5.00"})
    assert refilled["bucket"] == "daily:carol" and refilled["balance_nd"] == refilled["capacity_nd"]

    def refused(status: int, body: Any) -> str:
        return api.error(status, "POST", "/api/quotas/refill", body)

    assert refused(404, {"bucket": "weekly:carol", "amount": "$1.00"}) == 'no quota bucket "weekly:carol"'
    assert "template" in refused(400, {"bucket": "daily:<user>", "amount": "$1.00"})
    assert "amount" in refused(400, {"bucket": "daily:carol", "amount": "lots"})
    assert "amount" in refused(400, {"bucket": "daily:carol", "amount": 5})
    assert "positive" in refused(400, {"bucket": "daily:carol", "amount": "$0.00"})
    assert refused(400, b"[]") == "the request body must be a JSON object"


# -- explain --------------------------------------------------------------------------------------


def test_explain(api: Api) -> None:
    doc = api.ok("GET", "/api/explain?principal=carol&model=demo/demo-fast")
    assert doc["allowed"] is True and doc["role"] == "user" and doc["principal"] == "carol"
    assert doc["quotas"] == ["daily:<user>"] and doc["model"] == "demo/demo-fast"
    assert 'src "carol" matches' in doc["explanation"]
    assert doc["matched"] == [
        {"origin": "grants[1]", "src": "carol", "role": "user", "models": [], "quotas": []},
        {
            "origin": "grants[1]",
            "src": "carol",
            "role": None,
            "models": ["demo/**"],
            "quotas": ["daily:<user>"],
        },
    ]
    denied = api.ok("GET", "/api/explain?principal=tag:b,tag:a&model=demo-fast")
    assert denied["principal"] == "tag:a,tag:b" and denied["allowed"] is False
    assert denied["reason"] == "access denied: no role granted"
    own = api.ok("GET", "/api/explain?model=demo-smart", who="carol")
    assert own["principal"] == "carol" and own["model"] == "demo/demo-smart" and own["allowed"]
    message = api.error(403, "GET", "/api/explain?principal=dave&model=demo-fast", who="carol")
    assert message == "access denied: only admins may explain another principal's access"
    assert "model" in api.error(400, "GET", "/api/explain")
    assert "not served" in api.error(404, "GET", "/api/explain?model=gpt-9")


# -- keys -----------------------------------------------------------------------------------------


def test_keys_create_list_use_and_revoke(api: Api) -> None:
    created = api.ok("POST", "/api/keys", {"principal": "carol", "expires_in_days": 30, "note": "laptop"})
    assert api.last_headers["cache-control"] == "no-store"
    secret = created.pop("key")
    assert secret.startswith("tg_") and created["prefix"] == secret[:7] and created["state"] == "active"
    assert created["expires_at"] is not None and created["note"] == "laptop"
    listed = api.ok("GET", "/api/keys")["keys"]
    assert created in listed and len(listed) == 4
    assert secret not in orjson.dumps(listed).decode() and "key_hash" not in listed[0]
    api.keys["new"] = secret
    assert api.ok("GET", "/api/me", who="new")["principal"] == "carol"

    assert api.ok("DELETE", f"/api/keys/{created['id']}") == {"id": created["id"], "state": "revoked"}
    gone = api.error(404, "DELETE", f"/api/keys/{created['id']}")
    assert gone == f'no active gateway key "{created["id"]}"'
    time.sleep(1.1)  # the gateway re-checks a key at most once a second
    assert "revoked" in api.error(401, "GET", "/api/me", who="new")
    states = {k["id"]: k["state"] for k in api.ok("GET", "/api/keys")["keys"]}
    assert states[created["id"]] == "revoked"

    assert "another meaning" in api.error(400, "POST", "/api/keys", {"principal": "tag:ci"})
    assert "principal" in api.error(400, "POST", "/api/keys", {"note": "x"})
    assert "expires_in_days" in api.error(400, "POST", "/api/keys", {"principal": "x", "expires_in_days": 0})


# -- CSRF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fetch_site", "origin", "host", "allowed"),
    [
        (None, None, "gw:8080", True),  # curl, SDKs, the CLI
        ("same-origin", None, "gw", True),
        ("none", None, "gw", True),
        ("same-site", None, "gw", False),
        ("cross-site", "http://gw", "gw", False),
        ("same-origin", "http://evil.example", "gw", True),  # Sec-Fetch-Site is the browser's word
        (None, "http://gw:8080", "gw:8080", True),
        (None, "http://GW:8080", "gw:8080", True),
        (None, "http://gw", "gw:80", True),
        (None, "https://gw", "gw", True),
        (None, "https://gw", "gw:80", False),
        (None, "http://gw:8081", "gw:8080", False),
        (None, "http://evil.example", "gw", False),
        (None, "null", "gw", False),
        (None, "http://gw", None, False),
        (None, "http://[::1]:8080", "[::1]:8080", True),
    ],
)
def test_same_origin_rule(
    fetch_site: str | None, origin: str | None, host: str | None, allowed: bool
) -> None:
    assert same_origin(fetch_site, origin, host) is allowed


def test_cross_origin_state_changes_are_refused(api: Api) -> None:
    body = {"principal": "bot"}
    host = f"127.0.0.1:{api.gw.port}"
    for headers in ({"sec-fetch-site": "cross-site"}, {"origin": "http://evil.example"}, {"origin": "null"}):
        message = api.error(403, "POST", "/api/keys", body, headers=headers)
        assert message.startswith("access denied: cross-origin request refused")
    for method, path in (("PUT", "/api/config"), ("DELETE", "/api/keys/x"), ("POST", "/api/quotas/refill")):
        api.error(403, method, path, b"{}", headers={"sec-fetch-site": "cross-site"})
    reads = api.ok("GET", "/api/keys", headers={"sec-fetch-site": "cross-site"})  # reads are not guarded
    assert len(reads["keys"]) == 3
    assert len(api.ok("GET", "/api/keys")["keys"]) == 3  # nothing was created
    api.ok("POST", "/api/keys", body, headers={"sec-fetch-site": "same-origin"})
    api.ok("POST", "/api/keys", body, headers={"origin": f"http://{host}"})
    assert len(api.ok("GET", "/api/keys")["keys"]) == 5


# -- the configuration ----------------------------------------------------------------------------


def test_config_in_memory_when_there_is_no_file(api: Api) -> None:
    doc = api.ok("GET", "/api/config")
    assert doc["config"] == config_from(CONFIG).source_text and doc["path"] is None
    assert doc["warnings"] == []
    new = CONFIG.replace('"demo-smart"]', '"demo-smart", "demo-new"]')
    saved = api.ok("PUT", "/api/config", new.encode())
    assert saved["saved"] is False and saved["applied"] is True and "in memory" in saved["message"]
    assert "demo/demo-new" in api.ok("GET", "/api/me")["models"]


@pytest.fixture
def file_api(tmp_path: Path) -> Iterator[tuple[Api, Path]]:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "tailgate.hujson"
    path.write_text(CONFIG)
    path.chmod(0o640)
    config = load_config_file(path).config
    assert config is not None
    store = open_store(str(tmp_path / "tailgate.db"))
    keys = make_keys(store, "carol")
    with running_gateway(config, tmp_path, store=store) as gw:
        mount(gw)
        yield Api(gw, keys), path


def test_config_validate_and_save(file_api: tuple[Api, Path]) -> None:
    api, path = file_api
    assert api.ok("GET", "/api/config")["path"] == str(path)
    assert api.ok("POST", "/aperture/config:validate", CONFIG.encode()) == {"Valid": True, "errors": []}
    typo = CONFIG.replace('"cost_basis"', '"cost_bassis"')
    invalid = api.ok("POST", "/aperture/config:validate", typo.encode())
    assert invalid == {"Valid": False, "errors": [TYPO_WARNING]}

    message = api.error(400, "PUT", "/api/config", typo.encode())
    assert message == f"the configuration was not saved (1 problem(s)): {TYPO_WARNING}"
    assert api.error(400, "PUT", "/api/config", b"") == (
        "the configuration was not saved (1 problem(s)): config must not be empty"
    )
    lockout = CONFIG.replace('"src": ["(loopback)"]', '"src": ["someone-else@example.com"]')
    message = api.error(400, "PUT", "/api/config", lockout.encode())
    assert "this config would remove your own admin role ((loopback)); refusing to save it" in message
    assert path.read_text() == CONFIG

    generation = api.ok("GET", "/api/config")["generation"]
    new = CONFIG.replace('"demo-smart"]', '"demo-smart", "demo-new"]')
    saved = api.ok("PUT", "/api/config", new.encode())
    assert saved["saved"] is True and saved["path"] == str(path) and saved["generation"] == generation + 1
    assert path.read_text() == new and oct(path.stat().st_mode & 0o777) == "0o640"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".tailgate-config-")] == []
    assert "demo/demo-new" in api.ok("GET", "/api/me")["models"]
    assert api.ok("GET", "/api/config")["config"] == new


def test_a_save_keeps_restart_only_settings(file_api: tuple[Api, Path]) -> None:
    api, path = file_api
    moved = CONFIG.replace('"server": {', '"server": {"database": "/elsewhere.db", ')
    saved = api.ok("PUT", "/api/config", moved.encode())
    assert saved["restart_required"] == ["server.database"]
    assert api.gw.gateway.config.server.database == ""
    assert path.read_text() == moved


def test_a_save_that_cannot_be_written_changes_nothing(file_api: tuple[Api, Path]) -> None:
    api, path = file_api
    generation = api.ok("GET", "/api/config")["generation"]
    shutil.rmtree(path.parent)
    new = CONFIG.replace('"demo-smart"]', '"demo-smart", "demo-new"]')
    message = api.error(500, "PUT", "/api/config", new.encode())
    assert message.startswith(f"could not write the configuration to {path}: ")
    assert api.ok("GET", "/api/config")["generation"] == generation
    assert "demo/demo-new" not in api.ok("GET", "/api/me")["models"]
