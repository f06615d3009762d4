"""The dashboard at /ui/, page by page, as HTML: a real gateway, the mock upstream, real sockets.

The admin is the loopback caller; ``bob@example.com`` is a user holding a gateway key,
``dave@example.com`` a user who made no request yet; a key for ``carol@example.com`` has no
grant at all.
"""

from __future__ import annotations

import csv
import http.client
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode

import anthropic
import openai
import pytest

from tailgate.config.units import parse_dollars
from tailgate.quotas import spec_of
from tailgate.record import Outcome, Record
from tailgate.store import UsageQuery
from tailgate.usage import Usage
from tailgate.web.charts import Series as ChartSeries
from tailgate.web.charts import bar, day_buckets, nice_ticks, stacked_bars, top_series
from tailgate.web.format import (
    compact,
    dollars,
    duration_us,
    per_million,
    plain_dollars,
    pretty_body,
    relative,
)
from tailgate.web.logs import PAGE_SIZE, cost_breakdown
from tailgate.web.quickstart import base_url, guides
from tailgate.web.usage import CSV_COLUMNS
from tests.harness import RunningGateway, running_gateway
from tests.mock_upstream import MockUpstream

SECRETS = ("sk-openai-SECRET", "sk-ant-SECRET")


def dashboard_config(mock_url: str) -> str:
    return f"""{{
  "providers": {{
    "openai": {{
      "baseurl": "{mock_url}", "apikey": "sk-openai-SECRET",
      "models": ["gpt-4o-mini", "gpt-5-mini"],
      "compatibility": {{"openai_chat": true, "openai_responses": true}},
    }},
    "anthropic": {{
      "baseurl": "{mock_url}", "apikey": "sk-ant-SECRET", "authorization": "x-api-key",
      "models": ["claude-haiku-4-5"], "compatibility": {{"anthropic_messages": true}},
    }},
    "local": {{"baseurl": "{mock_url}", "models": ["mystery-model"], "compatibility": {{"openai_chat": true}}}},
    "demo": {{"type": "demo", "name": "Demo provider", "models": ["demo-fast"]}},
  }},
  "grants": [
    {{"src": ["(loopback)"], "app": {{"tailscale.com/cap/aperture": [
      {{"role": "admin"}}, {{"models": "**", "quotas": [{{"bucket": "team"}}]}}]}}}},
    {{"src": ["bob@example.com", "dave@example.com"], "app": {{"tailscale.com/cap/aperture": [
      {{"role": "user"}}, {{"models": "openai/*", "quotas": [{{"bucket": "daily:<user>"}}]}}]}}}},
  ],
  "quotas": {{
    "team": {{"capacity": "$50.00", "rate": "$1.00/day"}},
    "daily:<user>": {{"capacity": "$5.00", "rate": "$5.00/day"}},
  }},
}}"""


@dataclass
class Site:
    gw: RunningGateway
    bob_key: str
    carol_key: str
    dave_key: str = ""

    def fetch(
        self,
        path: str,
        *,
        as_user: str | None = None,
        method: str = "GET",
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str]:
        """One HTTP exchange; ``as_user`` is ``bob``, ``carol`` or ``dave`` (else the loopback admin)."""
        sent = dict(headers or {})
        if as_user is not None:
            keys = {"bob": self.bob_key, "carol": self.carol_key, "dave": self.dave_key}
            sent["authorization"] = "Bearer " + keys[as_user]
        body = None
        if form is not None:
            body = urlencode(form).encode()
            sent["content-type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            data = response.read().decode("utf-8")
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()

    def page(self, path: str, *, as_user: str | None = None, status: int = 200) -> str:
        code, _, html = self.fetch(path, as_user=as_user)
        assert code == status, f"{path}: {code}\n{text_of(html)[:2000]}"
        return html


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.links: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "title", "svg"):
            self._skip += 1
        if tag == "a":
            self.links.extend(v for k, v in attrs if k == "href" and v)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "title", "svg"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def text_of(html: str) -> str:
    """The visible text of a page, whitespace collapsed."""
    parser = _Text()
    parser.feed(html)
    return re.sub(r"\s+", " ", " ".join(parser.parts)).strip()


def links_of(html: str) -> list[str]:
    parser = _Text()
    parser.feed(html)
    return parser.links


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("dashboard")
    with MockUpstream() as mock, running_gateway(dashboard_config(mock.base_url), tmp) as gw:
        _, bob_key = gw.store.create_key("bob@example.com", expires_at=None, note="bob's laptop")
        _, carol_key = gw.store.create_key("carol@example.com", expires_at=None)
        _, dave_key = gw.store.create_key("dave@example.com", expires_at=None)
        admin = openai.OpenAI(base_url=gw.url + "/v1", api_key="-")
        admin.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "What is the weather?"}],
            extra_headers={"x-mock-scenario": "tools", "x-session-id": "admin-session"},
        )
        admin.chat.completions.create(
            model="mystery-model",
            messages=[{"role": "user", "content": "unpriced please"}],
            extra_headers={"x-session-id": "admin-session"},
        )
        claude = anthropic.Anthropic(base_url=gw.url, api_key="-")
        with claude.messages.stream(
            model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "stream it"}]
        ) as stream:
            stream.get_final_message()
        bob = openai.OpenAI(base_url=gw.url + "/v1", api_key=bob_key)
        bob.chat.completions.create(
            model="gpt-5-mini",
            messages=[{"role": "user", "content": "bob's question"}],
            extra_headers={"x-session-id": "bob-session"},
        )
        gw.flush()
        yield Site(gw, bob_key, carol_key, dave_key)


def record_of(site: Site, principal: str, model: str) -> Record:
    return next(r for r in site.gw.records(principal=principal) if r.model == model)


# -- every page, admin and user ------------------------------------------------------------------

ADMIN_PAGES = ("/ui/usage", "/ui/settings")
EVERYONE_PAGES = ("/ui/", "/ui/logs", "/ui/logs?view=requests", "/ui/models", "/ui/quotas", "/ui/quickstart")


def test_every_page_renders_for_the_admin(site: Site) -> None:
    for path in EVERYONE_PAGES + ADMIN_PAGES:
        html = site.page(path)
        text = text_of(html)
        assert "(loopback)" in text and "admin" in text, path
        assert 'href="/ui/settings"' in html  # admins see the admin pages in the menu
        for secret in SECRETS:
            assert secret not in html or path == "/ui/settings", path


def test_every_page_renders_for_a_user(site: Site) -> None:
    for path in EVERYONE_PAGES:
        html = site.page(path, as_user="bob")
        text = text_of(html)
        assert "bob@example.com" in text, path
        assert 'href="/ui/settings"' not in html and 'href="/ui/usage"' not in html, path
        assert "(loopback)" not in text, path
        for secret in SECRETS:
            assert secret not in html, path


def test_admin_pages_refuse_users_with_a_clear_page(site: Site) -> None:
    for path in ADMIN_PAGES:
        html = site.page(path, as_user="bob", status=403)
        text = text_of(html)
        assert "Access denied" in text and "needs the admin role" in text
        assert "signed in as bob@example.com with the user role" in text
    for path, form in (
        ("/ui/quotas/refill", {"bucket": "team", "amount": "$1"}),
        ("/ui/settings", {"config": "{}", "action": "save"}),
        ("/ui/settings/keys", {"principal": "mallory@example.com"}),
    ):
        status, _, html = site.fetch(path, as_user="bob", method="POST", form=form)
        assert status == 403, path
    assert all(k.principal != "mallory@example.com" for k in site.gw.store.list_keys())


def test_a_caller_without_a_role_sees_nothing(site: Site) -> None:
    for path in ("/ui/", "/ui/logs", "/ui/models", "/ui/quickstart"):
        html = site.page(path, as_user="carol", status=403)
        assert "access denied: no role granted" in text_of(html)
        assert "bob@example.com" not in html and "(loopback)" not in html


def test_index_redirect_unknown_pages_and_static_files(site: Site) -> None:
    status, headers, _ = site.fetch("/ui")
    assert status == 308 and headers["location"] == "/ui/"
    html = site.page("/ui/no-such-page", status=404)
    assert "there is no dashboard page at /ui/no-such-page" in text_of(html)
    css_link = re.search(r'href="(/ui/static/app\.css\?v=[0-9a-f]+)"', html)
    assert css_link is not None
    status, headers, body = site.fetch(css_link.group(1))
    assert status == 200 and headers["content-type"].startswith("text/css") and "prefers-color-scheme" in body
    assert "immutable" in headers["cache-control"]
    status, _, _ = site.fetch("/ui/static/../../etc/passwd")
    assert status == 404


def test_pages_forbid_framing_and_scripts_from_elsewhere(site: Site) -> None:
    _, headers, html = site.fetch("/ui/")
    policy = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    assert headers["cache-control"] == "no-store"
    assert "<script>" not in html and not re.search(
        r'(src|href)="(https?:)?//', html
    )  # nothing from elsewhere


# -- the dashboard page ----------------------------------------------------------------------------


def test_dashboard_shows_own_stats_charts_and_activity(site: Site) -> None:
    html = site.page("/ui/")
    text = text_of(html)
    totals = site.gw.store.usage(UsageQuery(), (), scope="(loopback)")[0].totals
    assert f"Requests {totals.requests}" in text
    assert f"Unpriced requests {totals.unpriced}" in text and totals.unpriced == 1
    assert "Tokens by model" in text and "Cost by model" in text
    assert html.count('<svg class="chart"') == 2
    assert "mystery-model" in text and "unpriced" in text
    assert "bob@example.com" not in text.replace("bob@example.com</option>", "")  # only in the picker
    assert 'datalist id="principal-list"' in html and '<option value="bob@example.com">' in html


def test_dashboard_of_another_principal_is_for_admins(site: Site) -> None:
    html = site.page("/ui/dashboard/bob@example.com")
    text = text_of(html)
    assert "Usage of bob@example.com" in text and "gpt-5-mini" in text
    assert "claude-haiku-4-5" not in text
    status, headers, _ = site.fetch("/ui/dashboard/?principal=bob%40example.com")
    assert status == 303 and headers["location"] == "/ui/dashboard/bob@example.com"
    site.page("/ui/dashboard/(loopback)", as_user="bob", status=403)
    assert "Your usage" in text_of(site.page("/ui/dashboard/bob@example.com", as_user="bob"))


def test_dashboard_empty_state_points_to_quick_start(site: Site) -> None:
    html = site.page("/ui/dashboard/nobody@example.com")
    assert "No requests from nobody@example.com in this range" in text_of(html)
    fresh = site.page("/ui/", as_user="dave")
    assert "No requests yet" in text_of(fresh) and "/ui/quickstart" in links_of(fresh)
    logs = site.page("/ui/logs", as_user="dave")
    assert "No requests yet" in text_of(logs) and "/ui/quickstart" in links_of(logs)


# -- logs -----------------------------------------------------------------------------------------


def test_logs_list_sessions_with_totals_scoped_to_the_viewer(site: Site) -> None:
    text = text_of(site.page("/ui/logs"))
    assert "admin-session" in text and "bob-session" in text
    bob = text_of(site.page("/ui/logs", as_user="bob"))
    assert "bob-session" in bob and "admin-session" not in bob
    session = text_of(site.page("/ui/logs/sessions/admin-session"))
    assert "Requests 2" in session and "gpt-4o-mini" in session and "mystery-model" in session
    site.page("/ui/logs/sessions/admin-session", as_user="bob", status=404)


def test_logs_filters_narrow_the_requests(site: Site) -> None:
    html = site.page("/ui/logs?model=mystery-model")
    text = text_of(html)
    assert "mystery-model" in text and "claude-haiku-4-5 anthropic" not in text
    assert "Clear filters" in text
    only_bob = text_of(site.page("/ui/logs?view=requests&principal=bob%40example.com"))
    assert "gpt-5-mini" in only_bob and "mystery-model" not in only_bob
    # A user cannot widen their view with a principal filter.
    bob = text_of(site.page("/ui/logs?view=requests&principal=%28loopback%29", as_user="bob"))
    assert "mystery-model" not in bob and "gpt-5-mini" in bob
    assert "No requests match" in text_of(site.page("/ui/logs?status=418"))
    site.page("/ui/logs?status=abc", status=400)
    site.page("/ui/logs?outcome=nonsense", status=400)


def test_logs_paginate_by_cursor(tmp_path: Path, mock_upstream: MockUpstream) -> None:
    with running_gateway(dashboard_config(mock_upstream.base_url), tmp_path) as gw:
        base = 1_790_000_000_000
        gw.store.insert_records(
            Record(id=f"{base + i:012x}{i:014x}", ts_ms=base + i, principal="(loopback)", model=f"m{i}")
            for i in range(PAGE_SIZE + 7)
        )
        site = Site(gw, "", "")
        first = site.page("/ui/logs?view=requests")
        older = re.search(r'<a class="older" href="([^"]+)"', first)
        assert older is not None and "cursor=" in older.group(1)
        second = site.page(older.group(1).replace("&amp;", "&"))
        shown_first = set(re.findall(r'class="model">(m\d+)<', first))
        shown_second = set(re.findall(r'class="model">(m\d+)<', second))
        assert len(shown_first) == PAGE_SIZE and len(shown_second) == 7
        assert not shown_first & shown_second
        assert f"m{PAGE_SIZE + 6}" in shown_first and "m0" in shown_second
        assert 'class="older"' not in second and "Newest" in text_of(second)


def test_request_detail_shows_the_capture(site: Site) -> None:
    record = record_of(site, "(loopback)", "gpt-4o-mini")
    html = site.page(f"/ui/logs/{record.id}")
    text = text_of(html)
    assert "Tool calls" in text and "get_weather" in text
    assert "&#34;messages&#34;: [" in html or '"messages": [' in html  # pretty-printed request body
    assert "Usage and cost breakdown" in text and "Input (not cached)" in text
    assert "admin-session" in text and "Headers (" in text
    for secret in SECRETS:
        assert secret not in html
    streamed = record_of(site, "(loopback)", "claude-haiku-4-5")
    detail = text_of(site.page(f"/ui/logs/{streamed.id}"))
    assert "Reassembled stream" in detail and "Raw stream" in detail and "message_delta" in detail
    unpriced = record_of(site, "(loopback)", "mystery-model")
    shown = text_of(site.page(f"/ui/logs/{unpriced.id}"))
    assert "Cost unpriced" in shown and "$0.00 " not in shown


def test_request_detail_is_scoped(site: Site) -> None:
    admins = record_of(site, "(loopback)", "gpt-4o-mini")
    html = site.page(f"/ui/logs/{admins.id}", as_user="bob", status=404)
    assert "What is the weather" not in html
    bobs = record_of(site, "bob@example.com", "gpt-5-mini")
    assert "bob&#39;s question" in site.page(f"/ui/logs/{bobs.id}", as_user="bob")


# -- usage and CSV --------------------------------------------------------------------------------


def test_usage_page_ranks_principals_and_models(site: Site) -> None:
    text = text_of(site.page("/ui/usage?range=all"))
    assert "Principals 2" in text
    for heading in ("Active principals", "Top principals by cost", "Model popularity", "Cost per model"):
        assert heading in text
    assert "bob@example.com" in text and "(loopback)" in text


def test_csv_numbers_equal_the_store(site: Site) -> None:
    status, headers, body = site.fetch("/ui/usage.csv?range=all")
    assert status == 200 and headers["content-type"].startswith("text/csv")
    assert "attachment" in headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(body)))
    assert list(rows[0]) == list(CSV_COLUMNS)
    stored = site.gw.store.usage(UsageQuery(), ("day", "principal", "provider", "model"))
    assert len(rows) == len(stored) >= 4
    by_key = {(r["day"], r["principal"], r["provider"], r["model"]): r for r in rows}
    for want in stored:
        row = by_key[(str(want.day), want.principal, want.provider, want.model)]
        assert int(row["requests"]) == want.totals.requests
        assert int(row["input_tokens"]) == want.totals.input_tokens
        assert int(row["output_tokens"]) == want.totals.output_tokens
        assert int(row["cache_read_tokens"]) == want.totals.cache_read_tokens
        assert int(row["cache_write_tokens"]) == want.totals.cache_write_tokens
        assert int(row["reasoning_tokens"]) == want.totals.reasoning_tokens
        assert parse_dollars("$" + row["cost_usd"]) == want.totals.cost_nd
        assert int(row["unpriced_requests"]) == want.totals.unpriced
    assert any(r["unpriced_requests"] == "1" for r in rows)
    _, _, mine = site.fetch("/ui/usage.csv?range=all", as_user="bob")
    principals = {r["principal"] for r in csv.DictReader(io.StringIO(mine))}
    assert principals == {"bob@example.com"}
    _, _, old = site.fetch("/ui/usage.csv?since=2020-01-01&until=2020-01-31")
    assert old.strip().count("\n") == 0  # the header only


# -- models, quotas ------------------------------------------------------------------------------


def test_models_page_lists_granted_models_with_prices_and_buckets(site: Site) -> None:
    html = site.page("/ui/models")
    text = text_of(html)
    assert "claude-haiku-4-5" in text and "mystery-model" in text and "unpriced" in text
    assert "demo-fast Demo provider demo" in text and "demo provider — built into the gateway" in text
    assert "$0.15" in text and "$0.60" in text  # gpt-4o-mini per million tokens
    assert "team $50.00 / $50.00" in text or "team $49.99" in text
    bob = text_of(site.page("/ui/models", as_user="bob"))
    assert "gpt-5-mini" in bob and "claude-haiku-4-5" not in bob and "mystery-model" not in bob
    assert "daily:bob@example.com" in bob and "team" not in bob.replace("team ", "")


def test_quotas_page_and_refill(site: Site) -> None:
    bob_html = site.page("/ui/quotas", as_user="bob")
    bob = text_of(bob_html)
    assert "daily:bob@example.com" in bob and "team" not in bob.split("Quotas", 2)[-1]
    assert 'action="/ui/quotas/refill"' not in bob_html
    runtime = site.gw.gateway.runtime
    site.gw.gateway.ledger.reserve([spec_of("team", runtime.config.quotas["team"])], parse_dollars("$10"))
    before = _balance(site, "team")
    status, headers, _ = site.fetch(
        "/ui/quotas/refill",
        method="POST",
        form={"bucket": "team", "amount": "$1.00"},
        headers={"sec-fetch-site": "same-origin", "origin": site.gw.url},
    )
    assert status == 303 and headers["location"].startswith("/ui/quotas?refilled=team")
    # $1 by hand, and whatever the refill rate ($1/day) added meanwhile.
    assert 0 <= _balance(site, "team") - before - parse_dollars("$1") < parse_dollars("$0.01")
    text = text_of(site.page(headers["location"].partition("#")[0]))
    assert "Refilled team by $1.00." in text
    status, _, html = site.fetch(
        "/ui/quotas/refill", method="POST", form={"bucket": "team", "amount": "lots"}
    )
    assert status == 400 and "Could not refill team" in text_of(html)
    status, _, html = site.fetch("/ui/quotas/refill", method="POST", form={"bucket": "nope", "amount": "$1"})
    assert status == 404 and 'Could not refill nope: no quota bucket "nope"' in text_of(html)


def _balance(site: Site, bucket: str) -> int:
    (entry,) = site.gw.gateway.runtime.quotas.view([bucket])
    return int(entry["balance_nd"])


def test_cross_site_posts_are_refused(site: Site) -> None:
    before = _balance(site, "team")
    for headers in (
        {"sec-fetch-site": "cross-site"},
        {"origin": "http://evil.example", "host": f"127.0.0.1:{site.gw.port}"},
        {"sec-fetch-site": "same-site"},
    ):
        status, _, html = site.fetch(
            "/ui/quotas/refill", method="POST", form={"bucket": "team", "amount": "$1"}, headers=headers
        )
        assert status == 403 and "cross-origin request refused" in text_of(html)
        status, _, _ = site.fetch(
            "/ui/settings/keys", method="POST", form={"principal": "eve@example.com"}, headers=headers
        )
        assert status == 403
    assert _balance(site, "team") - before < parse_dollars("$0.01")  # never the forged $1
    assert all(k.principal != "eve@example.com" for k in site.gw.store.list_keys())


# -- settings -------------------------------------------------------------------------------------


def test_settings_show_config_providers_grants_and_keys(site: Site) -> None:
    html = site.page("/ui/settings")
    text = text_of(html)
    assert '<textarea name="config"' in html and "&#34;providers&#34;" in html
    assert "openai" in text and "set" in text and "not set" in text  # local has no key
    assert "grants[0]" in text and "src (loopback)" in text and "role admin" in text
    assert "bob@example.com" in text and "bob&#39;s laptop" in html


def test_settings_validate_and_refuse_a_bad_save_keeping_the_text(site: Site) -> None:
    gateway = site.gw.gateway
    good = gateway.config.source_text
    generation = gateway.runtime.generation
    typo = good.replace('"baseurl"', '"basurl"', 1)
    status, _, html = site.fetch("/ui/settings", method="POST", form={"config": typo, "action": "save"})
    text = text_of(html)
    assert status == 422 and "Not saved" in text
    assert 'unknown config key "providers.openai.basurl" (did you mean "baseurl"?)' in text
    assert "&#34;basurl&#34;" in html  # the admin's text is kept
    assert gateway.runtime.generation == generation
    lockout = good.replace('"src": ["(loopback)"]', '"src": ["admin@example.com"]')
    status, _, html = site.fetch("/ui/settings", method="POST", form={"config": lockout, "action": "save"})
    assert status == 422 and "would remove your own admin role" in text_of(html)
    status, _, html = site.fetch("/ui/settings", method="POST", form={"config": good, "action": "validate"})
    assert status == 200 and "Valid: this configuration can be saved." in text_of(html)
    assert gateway.runtime.generation == generation


def test_settings_save_a_valid_config(site: Site) -> None:
    gateway = site.gw.gateway
    text = gateway.config.source_text
    generation = gateway.runtime.generation
    edited = text.replace('"$50.00"', '"$60.00"', 1).replace("\n", "\r\n")
    status, _, html = site.fetch("/ui/settings", method="POST", form={"config": edited, "action": "save"})
    assert status == 200, text_of(html)
    assert f"Configuration {generation + 1} in effect in memory only" in text_of(html)
    assert gateway.runtime.generation == generation + 1
    assert gateway.config.quotas["team"].capacity == parse_dollars("$60.00")
    assert "\r" not in gateway.config.source_text
    site.fetch("/ui/settings", method="POST", form={"config": text, "action": "save"})


def test_keys_are_created_shown_once_and_revoked(site: Site) -> None:
    status, _, html = site.fetch(
        "/ui/settings/keys",
        method="POST",
        form={"principal": "ci@example.com", "expires_in_days": "30", "note": "nightly"},
    )
    assert status == 200
    secret = re.search(r'<code id="new-key" class="mono">(tg_[A-Za-z0-9_-]+)</code>', html)
    assert secret is not None
    created = next(k for k in site.gw.store.list_keys() if k.principal == "ci@example.com")
    assert created.expires_at is not None and created.note == "nightly"
    again = site.page("/ui/settings")
    assert secret.group(1) not in again and created.prefix in again
    status, headers, _ = site.fetch("/ui/settings/keys/revoke", method="POST", form={"id": created.id})
    assert status == 303
    assert f"Key {created.id} revoked." in text_of(site.page(headers["location"].partition("#")[0]))
    assert next(k for k in site.gw.store.list_keys() if k.id == created.id).revoked_at is not None
    status, _, html = site.fetch("/ui/settings/keys", method="POST", form={"principal": "tag:ci"})
    assert status == 400 and "cannot stand for" in text_of(html)
    status, _, html = site.fetch(
        "/ui/settings/keys", method="POST", form={"principal": "x@example.com", "expires_in_days": "0"}
    )
    assert status == 400 and "whole number of days" in text_of(html)


# -- quick start -----------------------------------------------------------------------------------


def test_quickstart_fills_in_this_gateways_url_and_the_viewers_models(site: Site) -> None:
    text = text_of(site.page("/ui/quickstart"))
    url = site.gw.url
    for client in ("curl", "OpenAI Python SDK", "Anthropic Python SDK", "Google Gen AI Python SDK"):
        assert client in text
    for client in ("Claude Code", "Codex CLI", "OpenCode", "Gemini CLI", "Cline", "Roo Code"):
        assert client in text
    assert f"ANTHROPIC_BASE_URL={url}" in text and f'base_url = "{url}/v1"' in text
    assert f'OpenAI(base_url="{url}/v1", api_key="-")' in text
    bob = text_of(site.page("/ui/quickstart", as_user="bob"))
    assert "Your models for Claude Code: none of your models" in bob


def test_quickstart_prefers_the_public_url() -> None:
    assert base_url("http://ai/", "127.0.0.1:9") == "http://ai"
    assert base_url("", "gateway.example:8080") == "http://gateway.example:8080"
    only_chat = {"chat": ["gpt-4o"], "responses": [], "anthropic": [], "gemini": []}
    cline = next(g for g in guides("http://ai", only_chat) if g.key == "cline")
    assert [s.label for s in cline.snippets] == ["OpenAI Compatible"]
    curl = next(g for g in guides("http://ai", only_chat) if g.key == "curl")
    assert "http://ai/v1/chat/completions" in curl.snippets[0].code and len(curl.snippets) == 1


# -- formatting and charts (pure) ---------------------------------------------------------------


def test_money_is_shown_as_dollars_and_unpriced_is_never_zero() -> None:
    assert dollars(None) == "unpriced"
    assert dollars(0) == "$0.00"
    assert dollars(1_234_567_890_123) == "$1,234.57"
    assert dollars(1_500_000_000) == "$1.50"
    assert dollars(500_000_000) == "$0.50"
    assert dollars(123_456) == "$0.000123"
    assert dollars(1) == "$0.000000001"
    assert dollars(-2_000_000_000) == "-$2.00"
    assert plain_dollars(123_456) == "0.000123456" and plain_dollars(-5) == "-0.000000005"
    assert per_million("0.075") == "$0.075" and per_million("3") == "$3.00" and per_million(None) == "—"


def test_counts_times_and_durations_read_well() -> None:
    counts = (999, 1234, 12_345, 999_999, 3_400_000, 2_000_000_000)
    assert [compact(n) for n in counts] == ["999", "1.2k", "12k", "1M", "3.4M", "2B"]
    now = 1_800_000_000_000
    assert relative(now - 10_000, now) == "just now"
    assert relative(now - 5 * 60_000, now) == "5 min ago"
    assert relative(now - 3 * 3_600_000, now) == "3 h ago"
    assert relative(now - 86_400_000, now) == "1 day ago"
    assert relative(now + 4 * 60_000, now) == "in 4 min"
    assert duration_us(850_000) == "850 ms" and duration_us(12_300_000) == "12.3 s"
    assert duration_us(245_000_000) == "4 min 5 s"
    assert pretty_body(b'{"a":[1]}', 100) == ('{\n  "a": [\n    1\n  ]\n}', "json")
    assert pretty_body(b"\xff\xfe", 100)[1] == "binary"
    assert pretty_body(b"x" * 50, 10)[0].endswith("(40 more bytes not shown)")


def test_charts_are_svg_with_exact_tooltips() -> None:
    assert nice_ticks(0) == [0, 1]
    assert nice_ticks(89) == [0, 25, 50, 75, 100]
    assert nice_ticks(7) == [0, 2, 4, 6, 8]
    series = top_series({f"m{i}": [i, 1] for i in range(10)}, keep=3)
    assert [s.name for s in series] == ["m9", "m8", "m7", "other"]
    assert series[-1].values == [sum(range(7)), 7] and series[-1].css == "s-other"
    labels, step = day_buckets(date(2026, 1, 1), date(2026, 1, 3))
    assert step == 1 and len(labels) == 3
    assert day_buckets(date(2025, 1, 1), date(2026, 1, 1))[1] == 7
    svg = stacked_bars(
        labels,
        [ChartSeries("<gpt>", [1, 0, 2], "s0")],
        describe=lambda v: f"{v} tokens",
        axis=str,
        title="t",
    )
    assert svg.startswith('<svg class="chart"') and "2026-01-03 · &lt;gpt&gt;: 2 tokens" in svg
    assert svg.count("<rect") == 2  # no bar for a zero
    assert 'width="50.00"' in bar(0.5) and 'width="100.00"' in bar(7) and 'width="0.00"' in bar(-1)


def test_cost_breakdown_bills_reasoning_at_the_output_rate() -> None:
    usage = Usage(input_tokens=1000, cache_read_tokens=400, output_tokens=300, reasoning_tokens=100)
    prices: dict[str, str | None] = {
        "input": "2.5",
        "output": "10",
        "cache_read": "1.25",
        "cache_write": None,
    }
    lines = {line.label: line for line in cost_breakdown(usage, prices)}
    assert lines["Input (not cached)"].tokens == 600 and lines["Input (not cached)"].nanodollars == 1_500_000
    assert lines["Cache read"].nanodollars == 500_000
    assert lines["Output"].tokens == 200 and lines["Reasoning (output rate)"].nanodollars == 1_000_000
    assert "Cache write" not in lines
    unpriced = cost_breakdown(usage, None)
    assert all(line.nanodollars is None for line in unpriced)


def test_outcomes_are_labelled(site: Site) -> None:
    base = 1_795_000_000_000
    site.gw.store.insert_records(
        [
            Record(
                id=f"{base:012x}{7:014x}",
                ts_ms=base,
                principal="(loopback)",
                model="gpt-4o-mini",
                provider="openai",
                status=429,
                outcome=Outcome.QUOTA_EXCEEDED,
                error="quota exceeded: bucket team is empty",
            )
        ]
    )
    text = text_of(site.page("/ui/logs?outcome=quota_exceeded"))
    assert "429" in text and "quota exceeded" in text
    detail = text_of(site.page(f"/ui/logs/{base:012x}{7:014x}"))
    assert "quota exceeded: bucket team is empty" in detail and "No capture is stored" in detail
