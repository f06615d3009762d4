"""The dashboard in real headless Chromium, driven by Playwright, against a running gateway.

Requests go through the official SDKs to the mock upstream; then a browser finds them on the
Logs page, opens the session and the capture, filters, downloads the CSV and checks it against
the store, refills a quota, saves a valid config and sees an invalid one refused. A second
browser context holding a user's gateway key cannot reach the admin pages or anyone else's data.
Every page is screenshotted into ``docs/screenshots/``. Only loopback traffic; every wait is bounded.
"""

from __future__ import annotations

import csv
import io
import os
import random
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as genai_types
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tailgate.config.loader import load_config_file
from tailgate.config.units import parse_dollars
from tailgate.quotas import spec_of
from tailgate.record import Capture, Outcome, Record
from tailgate.store import UsageQuery
from tailgate.usage import Usage
from tests.harness import RunningGateway, running_gateway
from tests.mock_upstream import MockUpstream

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
TIMEOUT_MS = 10_000
DAY_MS = 86_400_000

if not shutil.which(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)


def browser_config(mock_url: str) -> str:
    return f"""// The gateway the browser tests drive.
{{
  "providers": {{
    "openai": {{
      "name": "OpenAI",
      "baseurl": "{mock_url}", "apikey": "sk-openai-SECRET",
      "models": ["gpt-4o-mini", "gpt-5-mini"],
      "compatibility": {{"openai_chat": true, "openai_responses": true}},
    }},
    "anthropic": {{
      "name": "Anthropic",
      "baseurl": "{mock_url}", "apikey": "sk-ant-SECRET", "authorization": "x-api-key",
      "models": ["claude-haiku-4-5", "claude-sonnet-4-5"], "compatibility": {{"anthropic_messages": true}},
    }},
    "gemini": {{
      "name": "Google Gemini",
      "baseurl": "{mock_url}", "apikey": "AIza-SECRET", "authorization": "x-goog-api-key",
      "models": ["gemini-2.5-flash"], "compatibility": {{"gemini_generate_content": true}},
    }},
    "lab": {{
      "name": "Self-hosted lab", "baseurl": "{mock_url}",
      "models": ["lab-llama"], "compatibility": {{"openai_chat": true}},
    }},
  }},
  "grants": [
    {{"src": ["(loopback)"], "app": {{"tailscale.com/cap/aperture": [
      {{"role": "admin"}}, {{"models": "**", "quotas": [{{"bucket": "team"}}]}}]}}}},
    {{"src": ["bob@example.com"], "app": {{"tailscale.com/cap/aperture": [
      {{"role": "user"}}, {{"models": "openai/*", "quotas": [{{"bucket": "daily:<user>"}}]}}]}}}},
  ],
  "quotas": {{
    "team": {{"capacity": "$50.00", "rate": "$1.00/day"}},
    "daily:<user>": {{"capacity": "$5.00", "rate": "$5.00/day"}},
  }},
}}
"""


@dataclass
class Deployment:
    gw: RunningGateway
    config_path: Path
    bob_key: str


def history(now_ms: int) -> list[Record]:
    """Two weeks of earlier traffic from a small team, so the charts have something to show."""
    rng = random.Random(3)
    people = ["(loopback)", "alice@example.com", "bob@example.com", "carol@example.com", "tag:ci"]
    models = [
        ("openai", "gpt-4o-mini", 150, 600),
        ("openai", "gpt-5-mini", 250, 2000),
        ("anthropic", "claude-sonnet-4-5", 3000, 15000),
        ("gemini", "gemini-2.5-flash", 300, 2500),
        ("lab", "lab-llama", 0, 0),
    ]
    out = []
    for day in range(1, 15):
        for n in range(rng.randint(4, 14)):
            principal = rng.choice(people)
            provider, model, input_rate, output_rate = rng.choice(models)
            usage = Usage(
                input_tokens=rng.randint(500, 40_000),
                cache_read_tokens=rng.randint(0, 300),
                output_tokens=rng.randint(100, 3000),
            )
            ok = rng.random() > 0.06
            ts = now_ms - day * DAY_MS + n * 60_000
            out.append(
                Record(
                    id=f"{ts:012x}{day:06x}{n:08x}",
                    ts_ms=ts,
                    principal=principal,
                    identity_kind="tagged" if principal.startswith("tag:") else "user",
                    provider=provider,
                    model=model,
                    operation="chat_completions",
                    path="/v1/chat/completions",
                    status=200 if ok else 529,
                    outcome=Outcome.OK if ok else Outcome.UPSTREAM_ERROR,
                    duration_us=rng.randint(300_000, 9_000_000),
                    usage=usage if ok else None,
                    cost_nd=(usage.input_tokens * input_rate + usage.output_tokens * output_rate)
                    if ok and input_rate
                    else None,
                    session_id=f"hist-{principal}-{day}-{n // 4}",
                    user_agent=rng.choice(
                        ["claude-cli/2.1.3", "codex_cli_rs/0.169.0", "OpenAI/Python 3.54.0"]
                    ),
                    capture=Capture(request_body=b'{"model": "%s"}' % model.encode()),
                )
            )
    return out


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("browser")
    with MockUpstream() as mock:
        config_path = tmp / "tailgate.hujson"
        config_path.write_text(browser_config(mock.base_url))
        loaded = load_config_file(config_path)
        assert loaded.config is not None, loaded.problems
        with running_gateway(loaded.config, tmp) as gw:
            _, bob_key = gw.store.create_key("bob@example.com", expires_at=None, note="laptop")
            gw.store.insert_records(history(int(time.time() * 1000)))
            send_requests(gw, bob_key)
            gw.flush()
            yield Deployment(gw, config_path, bob_key)


def send_requests(gw: RunningGateway, bob_key: str) -> None:
    admin = openai.OpenAI(base_url=gw.url + "/v1", api_key="-")
    session = {"x-session-id": "browser-session"}
    admin.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What is the weather in Lisbon?"}],
        extra_headers={**session, "x-mock-scenario": "tools"},
    )
    chunks = admin.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "And tomorrow?"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=session,
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    admin.responses.create(model="gpt-5-mini", input="Summarise the forecast")
    claude = anthropic.Anthropic(base_url=gw.url, api_key="-")
    with claude.messages.stream(
        model="claude-haiku-4-5", max_tokens=128, messages=[{"role": "user", "content": "Write a haiku"}]
    ) as stream:
        stream.get_final_message()
    gemini = genai.Client(api_key="-", http_options=genai_types.HttpOptions(base_url=gw.url))
    gemini.models.generate_content(model="gemini-2.5-flash", contents="Hello from the browser test")
    admin.chat.completions.create(model="lab-llama", messages=[{"role": "user", "content": "unpriced?"}])
    bob = openai.OpenAI(base_url=gw.url + "/v1", api_key=bob_key)
    bob.chat.completions.create(
        model="gpt-5-mini",
        messages=[{"role": "user", "content": "Bob's private question"}],
        extra_headers={"x-session-id": "bob-session"},
    )


@pytest.fixture(scope="module")
def browser(deployment: Deployment) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, deployment: Deployment) -> Iterator[Page]:
    """A desktop-sized page of the admin (the loopback caller)."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 800}, base_url=deployment.gw.url, accept_downloads=True
    )
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def shot(page: Page, name: str, max_height: int = 1500) -> None:
    """A PNG of the page's top (at most ``max_height`` CSS pixels, to keep the files small)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    width = page.evaluate("document.documentElement.clientWidth")
    height = min(page.evaluate("document.documentElement.scrollHeight"), max_height)
    clip = {"x": 0, "y": 0, "width": width, "height": height}
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True, clip=clip)


# -- the admin's journey --------------------------------------------------------------------------


def test_find_a_request_open_its_session_and_capture(page: Page, deployment: Deployment) -> None:
    page.goto("/ui/")
    expect(page.get_by_role("heading", name="Your usage")).to_be_visible()
    expect(page.locator("svg.chart")).to_have_count(2)
    shot(page, "dashboard")
    page.get_by_role("link", name="Logs", exact=True).click()
    expect(page).to_have_url(deployment.gw.url + "/ui/logs")
    shot(page, "logs")
    page.get_by_role("link", name="browser-session").click()
    expect(page.get_by_role("heading", name="browser-session")).to_be_visible()
    rows = page.locator("table.records tbody tr")
    expect(rows).to_have_count(2)
    shot(page, "session")
    # The older of the two is the tool call; open its capture.
    rows.nth(1).get_by_role("link").first.click()
    expect(page.get_by_role("heading", name="Tool calls")).to_be_visible()
    body = page.locator("#request-body")
    expect(body).to_contain_text('"content": "What is the weather in Lisbon?"')
    expect(page.locator("body")).not_to_contain_text("sk-openai-SECRET")
    shot(page, "request")
    page.go_back()
    rows.nth(0).get_by_role("link").first.click()
    expect(page.get_by_text("Reassembled stream")).to_be_visible()
    expect(page.locator("#reassembled")).to_contain_text('"chat.completion"')


def test_filter_the_logs(page: Page, deployment: Deployment) -> None:
    page.goto("/ui/logs")
    page.get_by_label("Model").fill("claude-haiku-4-5")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"/ui/logs\?.*view=requests&.*model=claude-haiku-4-5"))
    models = page.locator("table.records td .model")
    expect(models).to_have_count(1)
    expect(models).to_have_text("claude-haiku-4-5")
    page.get_by_label("Outcome").select_option("upstream_error")
    page.get_by_label("Model").fill("")
    page.get_by_role("button", name="Filter").click()
    statuses = page.locator("table.records .status")
    expect(statuses.first).to_have_text("529")
    assert set(statuses.all_inner_texts()) == {"529"}


def test_download_the_csv_and_check_it_against_the_store(page: Page, deployment: Deployment) -> None:
    page.goto("/ui/usage?range=30d")
    expect(page.get_by_role("heading", name="Top principals by cost")).to_be_visible()
    shot(page, "usage")
    since = page.locator(".csv-form input[name=since]").input_value()
    until = page.locator(".csv-form input[name=until]").input_value()
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download").click()
    download = download_info.value
    assert download.suggested_filename == f"tailgate-usage-{since}-to-{until}.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    stored = deployment.gw.store.usage(
        UsageQuery(since=date.fromisoformat(since), until=date.fromisoformat(until)),
        ("day", "principal", "provider", "model"),
    )
    assert len(rows) == len(stored) > 20
    by_key = {(r["day"], r["principal"], r["provider"], r["model"]): r for r in rows}
    for want in stored:
        row = by_key[(str(want.day), want.principal, want.provider, want.model)]
        assert int(row["requests"]) == want.totals.requests
        assert int(row["input_tokens"]) == want.totals.input_tokens
        assert int(row["output_tokens"]) == want.totals.output_tokens
        assert parse_dollars("$" + row["cost_usd"]) == want.totals.cost_nd
        assert int(row["unpriced_requests"]) == want.totals.unpriced


def test_refill_a_quota(page: Page, deployment: Deployment) -> None:
    gateway = deployment.gw.gateway
    team = spec_of("team", gateway.runtime.config.quotas["team"])
    gateway.ledger.reserve([team], parse_dollars("$20"))
    (before,) = gateway.runtime.quotas.view(["team"])
    page.goto("/ui/quotas")
    card = page.locator("section.bucket", has=page.get_by_role("heading", name="team"))
    card.get_by_label("Amount for team").fill("$5.00")
    card.get_by_role("button", name="Refill").click()
    expect(page.get_by_role("status")).to_have_text("Refilled team by $5.00.")
    (after,) = gateway.runtime.quotas.view(["team"])
    assert 0 <= after["balance_nd"] - before["balance_nd"] - parse_dollars("$5") < parse_dollars("$0.01")
    shot(page, "quotas")


def test_save_a_valid_config_and_see_an_invalid_one_refused(page: Page, deployment: Deployment) -> None:
    gateway = deployment.gw.gateway
    original = deployment.config_path.read_text()
    generation = gateway.runtime.generation
    page.goto("/ui/settings")
    editor = page.locator("#config-text")
    expect(editor).to_have_value(original)
    expect(page.locator("#providers")).to_contain_text("not set")
    expect(page.locator("#providers")).not_to_contain_text("sk-ant-SECRET")
    shot(page, "settings")

    typo = original.replace('"baseurl"', '"basurl"', 1)
    editor.fill(typo)
    page.get_by_role("button", name="Save and apply").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Not saved")
    expect(alert).to_contain_text('unknown config key "providers.openai.basurl" (did you mean "baseurl"?)')
    expect(page.locator("#config-text")).to_have_value(typo)
    shot(page, "settings-refused")
    assert deployment.config_path.read_text() == original
    assert gateway.runtime.generation == generation

    lockout = original.replace('"src": ["(loopback)"]', '"src": ["someone-else@example.com"]')
    page.locator("#config-text").fill(lockout)
    page.get_by_role("button", name="Save and apply").click()
    expect(page.get_by_role("alert")).to_contain_text("would remove your own admin role")

    bigger = original.replace('"$5.00", "rate"', '"$7.50", "rate"')
    assert bigger != original
    page.locator("#config-text").fill(bigger)
    page.get_by_role("button", name="Save and apply").click()
    expect(page.get_by_role("status")).to_contain_text(
        f"Configuration {generation + 1} saved to {deployment.config_path}"
    )
    assert deployment.config_path.read_text() == bigger
    assert gateway.runtime.generation == generation + 1
    assert gateway.config.quotas["daily:<user>"].capacity == parse_dollars("$7.50")


def test_create_and_revoke_a_key(page: Page, deployment: Deployment) -> None:
    page.goto("/ui/settings#keys")
    page.get_by_label("Principal").fill("ci-bot@example.com")
    page.get_by_label("Note").fill("nightly build")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key").inner_text()
    assert secret.startswith("tg_")
    created = next(k for k in deployment.gw.store.list_keys() if k.principal == "ci-bot@example.com")
    page.goto("/ui/settings")
    expect(page.locator("body")).not_to_contain_text(secret)
    page.once("dialog", lambda dialog: dialog.accept())
    row = page.locator("table.keys tr", has_text="ci-bot@example.com")
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status")).to_have_text(f"Key {created.id} revoked.")
    assert next(k for k in deployment.gw.store.list_keys() if k.id == created.id).revoked_at is not None


def test_other_pages_render(page: Page, deployment: Deployment) -> None:
    page.goto("/ui/models")
    expect(page.locator("table.models")).to_contain_text("lab-llama")
    expect(page.locator("table.models")).to_contain_text("unpriced")
    shot(page, "models")
    page.goto("/ui/quickstart")
    expect(page.locator("#claude-code")).to_contain_text(f"ANTHROPIC_BASE_URL={deployment.gw.url}")
    shot(page, "quickstart")
    page.goto("/ui/dashboard/alice@example.com")
    expect(page.get_by_role("heading", name="Usage of alice@example.com")).to_be_visible()


def test_phone_and_dark_layouts(browser: Browser, deployment: Deployment) -> None:
    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, base_url=deployment.gw.url, is_mobile=True, has_touch=True
    )
    phone.set_default_timeout(TIMEOUT_MS)
    try:
        page = phone.new_page()
        page.goto("/ui/")
        expect(page.get_by_role("link", name="Quick start")).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width}px wide on a 390px phone"
        shot(page, "phone-dashboard")
        page.goto("/ui/logs")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot(page, "phone-logs")
    finally:
        phone.close()
    dark = browser.new_context(
        viewport={"width": 1280, "height": 800}, base_url=deployment.gw.url, color_scheme="dark"
    )
    try:
        page = dark.new_page()
        page.goto("/ui/usage")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(14, 16, 20)"
        shot(page, "dark-usage")
    finally:
        dark.close()


# -- a user's view --------------------------------------------------------------------------------


def test_a_user_cannot_reach_admin_pages_or_others_data(browser: Browser, deployment: Deployment) -> None:
    admins_record = next(r for r in deployment.gw.records(principal="(loopback)") if r.model == "gpt-4o-mini")
    context = browser.new_context(
        viewport={"width": 1280, "height": 800},
        base_url=deployment.gw.url,
        extra_http_headers={"authorization": f"Bearer {deployment.bob_key}"},
    )
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        page.goto("/ui/")
        expect(page.locator(".who")).to_contain_text("bob@example.com")
        nav = page.get_by_role("navigation", name="Dashboard pages")
        expect(nav.get_by_role("link", name="Settings")).to_have_count(0)
        expect(nav.get_by_role("link", name="Usage")).to_have_count(0)
        for path in ("/ui/settings", "/ui/usage", "/ui/dashboard/(loopback)"):
            response = page.goto(path)
            assert response is not None and response.status == 403, path
            expect(page.get_by_role("heading", name="Access denied")).to_be_visible()
        shot(page, "access-denied")
        response = page.goto(f"/ui/logs/{admins_record.id}")
        assert response is not None and response.status == 404
        expect(page.locator("body")).not_to_contain_text("Lisbon")
        page.goto("/ui/logs")
        expect(page.locator("table")).to_contain_text("bob-session")
        expect(page.locator("body")).not_to_contain_text("browser-session")
        page.goto("/ui/logs?view=requests&principal=alice%40example.com")
        expect(page.locator("body")).not_to_contain_text("alice@example.com")
        page.goto("/ui/quotas")
        expect(page.locator(".buckets")).to_contain_text("daily:bob@example.com")
        expect(page.get_by_role("button", name="Refill")).to_have_count(0)
        # Even posted from the dashboard's own origin, a refill is for admins only.
        with page.expect_response("**/ui/quotas/refill") as refused:
            page.evaluate(
                """() => {
                    const form = document.createElement("form");
                    form.method = "post";
                    form.action = "/ui/quotas/refill";
                    for (const [name, value] of [["bucket", "daily:bob@example.com"], ["amount", "$10"]]) {
                        const input = document.createElement("input");
                        input.name = name;
                        input.value = value;
                        form.append(input);
                    }
                    document.body.append(form);
                    form.submit();
                }"""
            )
        status = refused.value.status
        assert status == 403
    finally:
        context.close()


def test_screenshots_are_small() -> None:
    taken = sorted(SCREENSHOTS.glob("*.png"))
    assert taken, "no screenshots were written"
    for png in taken:
        assert png.stat().st_size < 400_000, f"{png.name} is {png.stat().st_size} bytes"
    assert os.path.isdir(SCREENSHOTS)
