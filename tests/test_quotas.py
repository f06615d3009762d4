"""Quota buckets: exact refill, templates, fail-closed, the ledger on both stores, and what
callers see through a real gateway (429 bodies per dialect, Retry-After, model-scoped buckets,
unpriced models, restarts and reloads, a store outage)."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tailgate.config.model import BucketRef, QuotaDef
from tailgate.dialects import Operation
from tailgate.identity import Identity, IdentityKind, IdentitySource
from tailgate.quotas import (
    NEVER_REFILLS_RETRY_AFTER,
    BucketSpec,
    BucketState,
    LedgerUnavailable,
    QuotaIndex,
    QuotaLedger,
    QuotaPolicy,
    Reservation,
    accrued,
    expand,
    refill,
    retry_after,
    spec_of,
)
from tailgate.record import Outcome
from tailgate.runtime import build_runtime
from tailgate.store import UsageQuery, open_store
from tailgate.store.sql import SQLStore
from tests.fake_localapi import FakeLocalAPI, fixture
from tests.harness import RunningGateway, config_from, running_gateway
from tests.mock_upstream import MockUpstream
from tests.pg import TcpProxy, new_schema_url, pg_admin_url, store_url

__all__ = ["pg_admin_url", "store_url"]

DAY = 86_400
US = 1_000_000
ND = 1_000_000_000  # nanodollars in a dollar
T0 = 1_767_225_600 * US  # 2026-01-01T00:00:00Z in µs
ALICE = Identity("alice@example.com", IdentityKind.USER, IdentitySource.WHOIS, node_id="nAlice1CNTRL")


# -- helpers shared with the other quota test modules ----------------------------------------------


def gateway_config(mock_url: str, *, grants: str, quotas: str, server: str = "") -> str:
    """Three providers on the mock (plus an unpriced model), the given grants and quotas."""
    return f"""{{
  "providers": {{
    "openai": {{"baseurl": "{mock_url}", "apikey": "sk-openai-SECRET",
      "models": ["gpt-4o-mini", "mystery-model-x"],
      "compatibility": {{"openai_chat": true, "openai_responses": true}}}},
    "anthropic": {{"baseurl": "{mock_url}", "apikey": "sk-ant-SECRET", "authorization": "x-api-key",
      "models": ["claude-haiku-4-5"], "compatibility": {{"anthropic_messages": true}}}},
    "gemini": {{"baseurl": "{mock_url}", "apikey": "AIza-SECRET", "authorization": "x-goog-api-key",
      "models": ["gemini-2.5-flash"], "compatibility": {{"gemini_generate_content": true}}}},
  }},
  "grants": [{grants}],
  "quotas": {{{quotas}}},
  {server}
}}"""


def loopback_grant(*capabilities: str) -> str:
    caps = ", ".join(('{"role": "admin"}', *capabilities))
    return f'{{"src": ["(loopback)"], "app": {{"tailscale.com/cap/aperture": [{caps}]}}}}'


def post(
    port: int, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; the body exactly as received (chunking removed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(
            "POST", path, orjson.dumps(body), {"content-type": "application/json", **(headers or {})}
        )
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def chat(max_tokens: int = 1000, text: str = "hi", **extra: Any) -> dict[str, Any]:
    """A chat request whose answer is exactly ``max_tokens`` output tokens."""
    return {
        "model": "gpt-4o-mini",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": f"demo:chunks={max_tokens} {text}"}],
        **extra,
    }


def settled(gw: RunningGateway) -> None:
    """Wait until every record is stored, every lease given back and every settlement applied."""
    gw.flush()
    gw.gateway.ledger.return_leases()
    assert gw.gateway.ledger.flush(10), "quota settlements were not stored in time"


def balances(gw: RunningGateway) -> dict[str, int]:
    settled(gw)
    return {s.name: s.balance for s in gw.gateway.ledger.states()}


# -- pure arithmetic -------------------------------------------------------------------------------

RATES = [  # (nanodollars, period seconds): round, awkward and extreme
    (5 * ND, DAY),
    (1_000_000_001, DAY),
    (7, 60),
    (1000 * ND, 60),
    (500 * ND, 30 * DAY),
    (3, 7 * DAY),
]


def state(balance: int, capacity: int, amount: int, period: int, at: int = T0) -> BucketState:
    return BucketState("b", balance, at, capacity, amount, period)


def spec(capacity: int, amount: int, period: int) -> BucketSpec:
    return BucketSpec("b", "b", capacity, amount, period)


def test_accrual_adds_up_exactly_however_often_a_bucket_is_refilled() -> None:
    rng = random.Random(4)
    for amount, period in RATES:
        for _ in range(25):
            start = T0 + rng.randrange(period * US)
            end = start + rng.randrange(1, 3 * period * US)
            cuts = sorted(rng.randrange(start, end) for _ in range(rng.randrange(1, 200)))
            many = state(0, 10**18, amount, period, start)
            for t in [*cuts, end]:
                refill(many, spec(10**18, amount, period), t)
            once = state(0, 10**18, amount, period, start)
            refill(once, spec(10**18, amount, period), end)
            assert many.balance == once.balance == accrued(amount, period, start, end)
            # The exact rational amount, rounded down once: no fraction lost or invented.
            exact = (end - start) * amount / (period * US)
            assert exact - 1 < many.balance <= exact + 1
        # A whole period yields the rate exactly, wherever it starts.
        start = T0 + rng.randrange(period * US)
        assert accrued(amount, period, start, start + period * US) == amount


def test_refill_clamps_at_capacity_and_resumes_after_spending() -> None:
    bucket = state(9 * ND, 10 * ND, 5 * ND, DAY)
    s = spec(10 * ND, 5 * ND, DAY)
    refill(bucket, s, T0 + DAY * US)  # 5 $ accrue, only 1 $ fits
    assert bucket.balance == 10 * ND and bucket.updated_us == T0 + DAY * US
    bucket.balance -= 12 * ND  # spent past zero
    refill(bucket, s, T0 + DAY * US + DAY * US // 2)
    assert bucket.balance == -2 * ND + 5 * ND // 2
    refill(bucket, s, T0 + 10 * DAY * US)
    assert bucket.balance == 10 * ND


def test_changed_definition_caps_the_balance_and_keeps_what_accrued_under_the_old_rate() -> None:
    bucket = state(2 * ND, 10 * ND, 1 * ND, DAY)
    refill(bucket, spec(10 * ND, 4 * ND, DAY), T0 + DAY * US)  # a day at the old 1 $/day, then 4 $/day
    assert bucket.balance == 3 * ND and (bucket.rate_amount, bucket.capacity) == (4 * ND, 10 * ND)
    refill(bucket, spec(10 * ND, 4 * ND, DAY), T0 + DAY * US + DAY * US // 2)
    assert bucket.balance == 5 * ND
    refill(bucket, spec(1 * ND, 4 * ND, DAY), T0 + DAY * US + DAY * US // 2)  # capacity cut to 1 $
    assert bucket.balance == 1 * ND and bucket.capacity == 1 * ND


def test_a_clock_behind_the_last_update_adds_nothing_and_never_moves_time_back() -> None:
    bucket = state(0, 10 * ND, 5 * ND, DAY)
    refill(bucket, spec(10 * ND, 5 * ND, DAY), T0 - 3600 * US)
    assert (bucket.balance, bucket.updated_us) == (0, T0)


def test_retry_after_is_the_first_whole_second_with_a_positive_balance() -> None:
    rng = random.Random(7)
    for amount, period in RATES:
        for _ in range(40):
            capacity = amount * 3
            bucket = state(-rng.randrange(amount * 2), capacity, amount, period)
            now = T0 + rng.randrange(10 * US)
            wait = retry_after(bucket, now)
            later = dataclasses.replace(bucket)
            refill(later, spec(capacity, amount, period), now + wait * US)
            assert later.balance > 0
            if wait > 1:
                sooner = dataclasses.replace(bucket)
                refill(sooner, spec(capacity, amount, period), now + (wait - 1) * US)
                assert sooner.balance <= 0
    assert retry_after(state(0, 0, 5 * ND, DAY), T0) == NEVER_REFILLS_RETRY_AFTER
    assert retry_after(state(-1, 10, 0, DAY), T0) == NEVER_REFILLS_RETRY_AFTER
    assert retry_after(state(5, 10, 0, DAY), T0) == 1


def quota(name: str, capacity: int = 10 * ND, rate: int = 0, invalid: str | None = None) -> QuotaDef:
    return QuotaDef(name, capacity, rate, DAY, invalid=invalid)


def test_templates_expand_to_the_callers_principal_and_node() -> None:
    quotas = {n: quota(n) for n in ["daily:<user>", "dev:<node>", "team"]}
    assert expand(BucketRef("daily:<user>"), ALICE, quotas)[0] == "daily:alice@example.com"
    assert expand(BucketRef("dev:<node>"), ALICE, quotas)[0] == "dev:nAlice1CNTRL"
    assert expand(BucketRef("team"), ALICE, quotas) == ("team", quotas["team"])
    tagged = Identity("tag:ci,tag:prod", IdentityKind.TAGGED, IdentitySource.WHOIS, node_id="nCi1")
    assert expand(BucketRef("daily:<user>"), tagged, quotas)[0] == "daily:tag:ci,tag:prod"
    keyed = Identity("build-bot", IdentityKind.KEY, IdentitySource.KEY)  # no node: the principal
    assert expand(BucketRef("dev:<node>"), keyed, quotas)[0] == "dev:build-bot"
    # A reference names a quota key exactly.
    assert expand(BucketRef("daily:bob"), ALICE, quotas) == ("daily:bob", None)


def test_expanded_bucket_names_find_their_definition() -> None:
    quotas = {n: quota(n) for n in ["daily:<user>", "dev:<node>:<user>", "team", "daily:vip"]}
    index = QuotaIndex(quotas)
    assert index.find("daily:alice@example.com") is quotas["daily:<user>"]
    assert index.find("daily:tag:ci,tag:prod") is quotas["daily:<user>"]
    assert index.find("daily:vip") is quotas["daily:vip"]  # a fixed name beats a template
    assert index.find("dev:n1:alice@example.com") is quotas["dev:<node>:<user>"]  # most literal text
    assert index.find("team") is quotas["team"]
    assert index.find("teams") is None and index.find("daily:") is None and index.find("weekly:x") is None


def test_quotas_that_cannot_be_used_fail_closed() -> None:
    text = """{"quotas": {
      "daily:<user>": {"capacity": "$5.00", "rate": "$5.00/day"},
      "broken": {"capacity": "500"},
      "odd:<team>": {"capacity": "$1.00"},
    }}"""
    config = config_from(text)
    assert config.quotas["broken"].invalid and config.quotas["odd:<team>"].invalid
    policy = QuotaPolicy(config, None, None)  # type: ignore[arg-type]
    refs = [BucketRef(n) for n in ("daily:<user>", "broken", "missing", "odd:<team>")]
    specs, problems = policy.buckets_for(ALICE, refs)
    assert [s.name for s in specs] == ["daily:alice@example.com"]
    assert len(problems) == 3
    assert 'quota "missing" is not defined' in problems[1]
    assert problems[0].startswith('quota "broken" cannot be used: capacity')


# -- the ledger, on SQLite and PostgreSQL ----------------------------------------------------------


@pytest.fixture
def ledger(store_url: str) -> Iterator[QuotaLedger]:
    store = open_store(store_url)
    store.migrate()
    ledger = QuotaLedger(store)
    yield ledger
    ledger.close()
    store.close()


def fixed(name: str, capacity: int, rate: int = 0) -> BucketSpec:
    return BucketSpec(name, name, capacity, rate, DAY)


def stored_balance(ledger: QuotaLedger, name: str) -> int:
    """The balance in the database, without what this process holds in leases."""
    rows = ledger._store._read("SELECT balance_nd FROM quota_buckets WHERE name = ?", (name,))  # type: ignore[attr-defined]
    return int(rows[0][0])


def test_a_lease_admits_from_memory_and_goes_back_when_unused(ledger: QuotaLedger) -> None:
    ledger.LEASE_TOP_UPS = False
    team = fixed("team", 10_000 * ND)
    assert ledger.submit([team], ND).result(5) == []
    lease = ledger.LEASE_REQUESTS * ND  # taken in the admission's transaction
    assert stored_balance(ledger, "team") == 10_000 * ND - ND - lease
    assert [s.balance for s in ledger.states()] == [10_000 * ND - ND]  # what is held counts as there
    transactions = ledger.transactions
    for _ in range(ledger.LEASE_REQUESTS):
        assert ledger.admit_leased([team], ND)
    assert not ledger.admit_leased([team], ND)  # spent: the next one asks the database
    assert ledger.transactions == transactions and ledger.leased_admissions == ledger.LEASE_REQUESTS
    for _ in range(ledger.LEASE_REQUESTS + 1):
        ledger.settle([team], ND, ND // 4, wait=False)  # each answer cost a quarter of its estimate
    assert ledger.flush(5)
    spent = (ledger.LEASE_REQUESTS + 1) * (ND // 4)
    assert stored_balance(ledger, "team") == 10_000 * ND - spent

    ledger.LEASE_SECONDS = 0.2
    assert ledger.submit([team], ND).result(5) == []  # takes a new lease, then leaves it unused
    assert ledger.admit_leased([team], ND)
    deadline = time.monotonic() + 5
    while stored_balance(ledger, "team") != 10_000 * ND - spent - 2 * ND:  # the rest went back
        assert time.monotonic() < deadline, "an unused lease was not given back"
        time.sleep(0.05)
    assert not ledger.admit_leased([team], ND)


def test_a_lease_is_topped_up_before_it_runs_dry(ledger: QuotaLedger) -> None:
    team = fixed("team", 10_000 * ND)
    assert ledger.submit([team], ND).result(5) == []
    lease = ledger.LEASE_REQUESTS * ND
    half = ledger.LEASE_REQUESTS // 2
    for _ in range(half):
        assert ledger.admit_leased([team], ND)  # down to half the lease: no top-up yet
    assert ledger.lease_top_ups == 0
    assert ledger.admit_leased([team], ND)  # below half: a top-up is queued, not waited for
    assert ledger.lease_top_ups == 1
    assert ledger.flush(5)
    deadline = time.monotonic() + 5
    while stored_balance(ledger, "team") != 10_000 * ND - ND - 2 * lease:  # a second lease taken
        assert time.monotonic() < deadline, "the lease was not topped up"
        time.sleep(0.01)
    # The top-up reserved nothing for a request: the balance shown is the admissions' alone.
    assert [s.balance for s in ledger.states()] == [10_000 * ND - (half + 2) * ND]
    # In memory: what was left (half the lease, less one) and the new lease, less its half.
    transactions = ledger.transactions
    admitted = 0
    while admitted < ledger.LEASE_REQUESTS - 1 and ledger.admit_leased([team], ND):
        admitted += 1
    assert admitted == ledger.LEASE_REQUESTS - 1
    assert ledger.lease_top_ups == 1  # still at half of the last top-up
    assert ledger.flush(5) and ledger.transactions == transactions
    assert ledger.admit_leased([team], ND) and ledger.lease_top_ups == 2
    while ledger.transactions == transactions:  # the second top-up, a third lease
        assert time.monotonic() < deadline, "the lease was not topped up again"
        time.sleep(0.01)
    ledger.return_leases()
    assert ledger.flush(5)
    assert stored_balance(ledger, "team") == 10_000 * ND - (half + 2 + ledger.LEASE_REQUESTS) * ND


def test_no_lease_is_taken_near_exhaustion(ledger: QuotaLedger) -> None:
    team = fixed("team", 100 * ND)  # a lease of 32 $ would leave less than 100 leases' worth
    assert ledger.submit([team], ND).result(5) == []
    assert stored_balance(ledger, "team") == 99 * ND
    assert not ledger.admit_leased([team], ND)


def test_a_lease_is_only_used_for_the_definition_it_was_taken_under(ledger: QuotaLedger) -> None:
    old, new = fixed("team", 10_000 * ND), fixed("team", 20_000 * ND)
    assert ledger.submit([old], ND).result(5) == []
    assert not ledger.admit_leased([new], ND)  # the definition changed: ask the database
    assert ledger.submit([new], ND).result(5) == []  # a new lease; the old one goes back
    assert ledger.admit_leased([new], ND) and not ledger.admit_leased([old], ND)
    ledger.return_leases()
    assert ledger.flush(5)
    assert stored_balance(ledger, "team") == 10_000 * ND - 3 * ND  # three reservations, no lease


def test_admission_reserves_on_every_bucket_or_none(ledger: QuotaLedger) -> None:
    a, b = fixed("a", 1000), fixed("b", 300)
    assert ledger.reserve([a, b], 400) == []
    assert {s.name: s.balance for s in ledger.states()} == {"a": 600, "b": -100}
    exhausted = ledger.reserve([a, b], 1)
    assert [(s.name, s.balance) for s in exhausted] == [("b", -100)]
    assert {s.name: s.balance for s in ledger.states()} == {"a": 600, "b": -100}  # nothing reserved
    ledger.settle([a, b], 400, 150)  # the real cost replaces the estimate
    assert ledger.flush(5)
    assert {s.name: s.balance for s in ledger.states()} == {"a": 850, "b": 150}
    ledger.settle([a, b], 0, 2000)  # a cost above the reservation takes buckets below zero
    ledger.settle([a], 5000, 0)  # giving back never lifts a bucket above its capacity
    assert ledger.flush(5)
    assert {s.name: s.balance for s in ledger.states()} == {"a": 1000, "b": -1850}


def test_queued_admissions_are_decided_in_arrival_order(ledger: QuotaLedger) -> None:
    bucket = fixed("pool", 3 * 100)
    futures = [ledger.submit([bucket], 100) for _ in range(12)]
    verdicts = [f.result(10) for f in futures]
    assert [v == [] for v in verdicts] == [True] * 3 + [False] * 9
    assert ledger.states()[0].balance == 0
    assert ledger.transactions < 12  # admissions that waited together shared a transaction


def test_definitions_adjust_and_delete_stored_buckets(store_url: str) -> None:
    store = open_store(store_url)
    store.migrate()
    ledger = QuotaLedger(store)
    quotas = {
        "daily:<user>": quota("daily:<user>", 10 * ND, 5 * ND),
        "team": quota("team", 100 * ND),
        "old": quota("old", 1 * ND),
        "typo": quota("typo", 1 * ND),
    }
    names = ["daily:alice@example.com", "daily:tag:ci,tag:prod", "team", "old", "typo"]
    specs = [spec_of(n, QuotaIndex(quotas).find(n)) for n in names]  # type: ignore[arg-type]
    assert ledger.reserve(specs, 2 * ND) == []
    ledger.apply_definitions(quotas)  # unchanged: nothing moves (templated buckets included)
    assert {s.name for s in ledger.states()} == set(names)
    store.close()

    store = open_store(store_url)  # a restart: balances persist
    ledger = QuotaLedger(store)
    assert {s.name: s.balance for s in ledger.states()}["team"] == 98 * ND
    changed = {
        "daily:<user>": quota("daily:<user>", 5 * ND, 1 * ND),  # capacity cut below the balance
        "team": quota("team", 200 * ND, 7 * ND),  # raised capacity, a rate: balance kept
        "typo": quota("typo", 0, invalid="capacity: bad"),  # invalid: kept as it was
    }
    ledger.apply_definitions(changed)
    after = {s.name: s for s in ledger.states()}
    assert set(after) == {"daily:alice@example.com", "daily:tag:ci,tag:prod", "team", "typo"}  # old gone
    assert after["daily:alice@example.com"].balance == 5 * ND
    assert after["daily:alice@example.com"].rate_amount == 1 * ND
    team = after["team"]
    assert (team.balance, team.capacity, team.rate_amount) == (98 * ND, 200 * ND, 7 * ND)
    assert (after["typo"].balance, after["typo"].capacity) == (-1 * ND, 1 * ND)
    # A settlement for a bucket whose definition is gone does not bring it back.
    ledger.settle([fixed("old", 1 * ND)], 2 * ND, 0)
    assert ledger.flush(5)
    assert "old" not in {s.name for s in ledger.states()}
    ledger.close()
    store.close()


class FlakyStore:
    """A real store whose transactions fail while ``down`` is set (counting every attempt)."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        self.backend = store.backend
        self.down = False
        self.attempts = 0

    def _write(self, work: Callable[[Any], Any]) -> Any:
        self.attempts += 1
        if self.down:
            raise OSError("connection refused")
        return self.store._write(work)

    def _read(self, sql: str, params: Any = ()) -> Any:
        return self.store._read(sql, params)


def flaky_ledger(tmp_path: Path) -> tuple[Any, FlakyStore, QuotaLedger]:
    """A ledger on a SQLite store that fails while ``down`` is set."""
    real = open_store(str(tmp_path / "q.db"))
    real.migrate()
    assert isinstance(real, SQLStore)
    flaky = FlakyStore(real)
    return real, flaky, QuotaLedger(flaky)  # type: ignore[arg-type]


def test_an_outage_refuses_admissions_at_once_and_keeps_settlements(tmp_path: Path) -> None:
    real, flaky, ledger = flaky_ledger(tmp_path)
    ledger.MIN_BACKOFF = 0.2
    bucket = fixed("team", 10 * ND)
    assert ledger.submit([bucket], 3 * ND).result(5) == []

    flaky.down = True
    ledger.settle([bucket], 3 * ND, 1 * ND)  # the answer cost 1 $: 2 $ to give back
    with pytest.raises(LedgerUnavailable):
        ledger.submit([bucket], 1).result(5)
    attempts = flaky.attempts
    started = time.monotonic()
    for _ in range(50):  # refused without touching the store while it is known to be down
        with pytest.raises(LedgerUnavailable) as refused:
            ledger.submit([bucket], 1).result(5)
        assert refused.value.retry_after >= 1
    assert flaky.attempts == attempts and time.monotonic() - started < 0.2
    assert not ledger.flush(0.05)

    flaky.down = False
    assert ledger.flush(5)  # the kept settlement is applied once the store answers
    assert real._read("SELECT balance_nd FROM quota_buckets")[0][0] == 9 * ND
    assert ledger.submit([bucket], 1).result(5) == []
    ledger.close()
    real.close()


@pytest.mark.postgres
def test_a_lease_on_its_way_back_still_counts_in_the_balance(tmp_path: Path) -> None:
    real, flaky, ledger = flaky_ledger(tmp_path)
    ledger.MIN_BACKOFF = 0.1
    team = fixed("team", 10_000 * ND)
    assert ledger.submit([team], ND).result(5) == []
    flaky.down = True
    ledger.return_leases()  # queued, and the store cannot take it yet
    assert not ledger.flush(0.3)
    assert [s.balance for s in ledger.states()] == [10_000 * ND - ND]
    flaky.down = False
    ledger.close()
    assert [s.balance for s in ledger.states()] == [10_000 * ND - ND]
    assert real._read("SELECT balance_nd FROM quota_buckets")[0][0] == 10_000 * ND - ND
    real.close()


def test_leased_admissions_go_on_while_the_store_is_down(tmp_path: Path) -> None:
    real, flaky, ledger = flaky_ledger(tmp_path)
    team = fixed("team", 10_000 * ND)
    assert ledger.submit([team], ND).result(5) == []
    flaky.down = True
    # The budget was taken before the outage: spending it stays within the bound.
    assert all(ledger.admit_leased([team], ND) for _ in range(ledger.LEASE_REQUESTS))
    assert not ledger.admit_leased([team], ND)
    with pytest.raises(LedgerUnavailable):
        ledger.submit([team], ND).result(5)
    flaky.down = False
    ledger.close()
    assert real._read("SELECT balance_nd FROM quota_buckets")[0][0] == 10_000 * ND - 33 * ND
    real.close()


def test_a_database_outage_answers_503_with_retry_after_then_recovers(
    pg_admin_url: str, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    url = new_schema_url(pg_admin_url)
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    proxied = url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
    store = open_store(proxied)
    config = gateway_config(
        mock_upstream.base_url,
        grants=loopback_grant('{"models": "**", "quotas": [{"bucket": "team"}]}'),
        quotas='"team": {"capacity": "$1.00"}',
    )
    try:
        with running_gateway(config, tmp_path, store=store) as gw:
            gw.gateway.ledger.stall_timeout = 0.5
            gw.gateway.ledger.LEASE_REQUESTS = 0  # no leases: every admission asks the database
            assert post(gw.port, "/v1/chat/completions", chat(10))[0] == 200
            settled(gw)
            proxy.cut()
            started = time.monotonic()
            status, headers, body = post(gw.port, "/v1/chat/completions", chat(10))
            assert time.monotonic() - started < 2  # a hanging database does not hold requests
            assert status == 503 and int(headers["retry-after"]) >= 1
            assert orjson.loads(body)["error"]["code"] == "quota_unavailable"
            assert b"SECRET" not in body and proxied not in body.decode()
            assert len(mock_upstream.requests) == 1  # refused before the upstream was asked
            proxy.start()
            deadline = time.monotonic() + 20
            while (status := post(gw.port, "/v1/chat/completions", chat(10))[0]) != 200:
                assert status == 503 and time.monotonic() < deadline
                time.sleep(0.2)
            settled(gw)
            records = [r for r in gw.records() if r.outcome is Outcome.OK]
            assert len(records) == 2
            spent = sum(r.cost_nd or 0 for r in records)
            assert balances(gw) == {"team": 1 * ND - spent}
    finally:
        proxy.cut()


# -- through a real gateway ------------------------------------------------------------------------


def exhausted_gateway(mock_url: str) -> str:
    return gateway_config(
        mock_url,
        grants=loopback_grant('{"models": "**", "quotas": [{"bucket": "daily:<user>"}]}'),
        quotas='"daily:<user>": {"capacity": "$0.0001", "rate": "$1.00/day", "on_exceed": "reject"}',
    )


OPENAI_429 = {"error": {"message": ..., "type": "insufficient_quota", "code": "insufficient_quota"}}
ANTHROPIC_429 = {"type": "error", "error": {"type": "rate_limit_error", "message": ...}}
GEMINI_429 = {"error": {"code": 429, "message": ..., "status": "RESOURCE_EXHAUSTED"}}
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
MESSAGES_BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}
DIALECTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("/v1/chat/completions", {**chat(10), "stream": True}, OPENAI_429),
    ("/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, OPENAI_429),
    ("/v1/messages", MESSAGES_BODY, ANTHROPIC_429),
    ("/v1beta/models/gemini-2.5-flash:generateContent", GEMINI_BODY, GEMINI_429),
    ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", GEMINI_BODY, GEMINI_429),
]


def _exact(body: dict[str, Any], shape: dict[str, Any]) -> str:
    """Assert ``body`` has exactly ``shape``'s keys and values (``...`` = any string); return it."""
    message = ""

    def check(got: Any, want: Any) -> None:
        nonlocal message
        if want is ...:
            assert isinstance(got, str) and got
            message = got
        elif isinstance(want, dict):
            assert isinstance(got, dict) and set(got) == set(want), (got, want)
            for key in want:
                check(got[key], want[key])
        else:
            assert got == want

    check(body, shape)
    return message


def test_each_dialect_gets_its_own_429_body_with_retry_after(
    mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    with running_gateway(exhausted_gateway(mock_upstream.base_url), tmp_path) as gw:
        assert post(gw.port, "/v1/chat/completions", chat(1000))[0] == 200  # 0.0006 $ from 0.0001 $
        settled(gw)
        served = len(mock_upstream.requests)
        (bucket,) = gw.gateway.ledger.states()
        assert bucket.name == "daily:(loopback)" and bucket.balance < 0
        for path, body, shape in DIALECTS:
            status, headers, raw = post(gw.port, path, body)
            assert status == 429, (path, raw)
            assert headers["content-type"] == "application/json"
            message = _exact(orjson.loads(raw), shape)
            assert "daily:(loopback)" in message
            # 1 $/day refills one nanodollar every 86.4 µs: the deficit says how long to wait.
            expected = retry_after(bucket, time.time_ns() // 1000)
            assert abs(int(headers["retry-after"]) - expected) <= 1
            assert f"{int(headers['retry-after'])} seconds" in message
        assert len(mock_upstream.requests) == served  # refused requests never reach the upstream
        refused = gw.records(outcome="quota_exceeded")
        assert len(refused) == len(DIALECTS) and {r.status for r in refused} == {429}
        assert all(r.cost_nd is None for r in refused)


def test_a_quota_that_cannot_be_used_refuses_only_the_requests_it_applies_to(
    mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    config = gateway_config(
        mock_upstream.base_url,
        grants=loopback_grant(
            '{"models": "openai/gpt-4o-mini", "quotas": [{"bucket": "tpyo"}]}',
            '{"models": "anthropic/**", "quotas": [{"bucket": "broken"}]}',
            '{"models": "gemini/**"}',
        ),
        quotas='"typo": {"capacity": "$5.00"}, "broken": {"capacity": "5 dollars"}',
    )
    with running_gateway(config, tmp_path) as gw:
        status, headers, body = post(gw.port, "/v1/chat/completions", chat(5))
        assert status == 429 and headers["retry-after"] == "60"
        assert 'quota "tpyo" is not defined' in orjson.loads(body)["error"]["message"]
        status, headers, body = post(gw.port, "/v1/messages", MESSAGES_BODY)
        assert status == 429 and headers["retry-after"] == "60"
        assert 'quota "broken" cannot be used' in orjson.loads(body)["error"]["message"]
        gemini = "/v1beta/models/gemini-2.5-flash:generateContent"
        assert post(gw.port, gemini, GEMINI_BODY)[0] == 200
        assert [r.path for r in mock_upstream.requests] == [gemini]
        assert gw.gateway.ledger.states() == []


def whois_answer(login: str, node: str) -> dict[str, Any]:
    answer = fixture("user_alice")
    answer["Node"]["StableID"] = node
    answer["UserProfile"]["LoginName"] = login
    answer["CapMap"] = {}
    return answer


def test_user_and_node_templates_name_one_bucket_per_caller_and_device(
    mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    with FakeLocalAPI({}) as fake:
        config = gateway_config(
            mock_upstream.base_url,
            grants='{"src": ["*"], "app": {"tailscale.com/cap/aperture": [{"role": "user"},'
            ' {"models": "**", "quotas": [{"bucket": "daily:<user>"}, {"bucket": "device:<node>"}]}]}}',
            quotas='"daily:<user>": {"capacity": "$10.00"}, "device:<node>": {"capacity": "$2.00"}',
            server=f'"server": {{"identity": {{"tailscale_socket": "{fake.socket_path}"}}}}',
        )
        with running_gateway(config, tmp_path) as gw:
            callers = [
                ("alice@example.com", "nLaptop1CNTRL"),
                ("alice@example.com", "nDesktop1CNTRL"),
                ("bob@example.com", "nBobPc1CNTRL"),
            ]
            for login, node in callers:
                fake.answers = {"127.0.0.1": whois_answer(login, node)}  # a new connection asks again
                assert post(gw.port, "/v1/chat/completions", chat(100))[0] == 200
            costs = [r.cost_nd for r in reversed(gw.records())]
            assert all(costs) and len(costs) == 3
            assert [r.principal for r in reversed(gw.records())] == [c[0] for c in callers]
            settled(gw)
            got = {s.name: (s.capacity, s.balance) for s in gw.gateway.ledger.states()}
            assert got == {
                "daily:alice@example.com": (10 * ND, 10 * ND - costs[0] - costs[1]),
                "daily:bob@example.com": (10 * ND, 10 * ND - costs[2]),
                "device:nLaptop1CNTRL": (2 * ND, 2 * ND - costs[0]),
                "device:nDesktop1CNTRL": (2 * ND, 2 * ND - costs[1]),
                "device:nBobPc1CNTRL": (2 * ND, 2 * ND - costs[2]),
            }
            view = {v["bucket"]: v for v in gw.gateway.runtime.quotas.view()}
            assert view["device:nLaptop1CNTRL"]["quota"] == "device:<node>"
            assert view["daily:bob@example.com"]["capacity"] == "$10.00"


def test_model_scoped_quotas_charge_matching_requests_and_all_grants_charge_together(
    mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    grants = ", ".join(
        [
            loopback_grant(
                '{"models": "**", "quotas": [{"bucket": "team"}]}',
                '{"models": "openai/gpt-4o-*", "quotas": [{"bucket": "gpt4o"}, {"bucket": "team"}]}',
            ),
            '{"src": ["*"], "app": {"tailscale.com/cap/aperture": [{"quotas": [{"bucket": "org"}]}]}}',
        ]
    )
    quotas = '"team": {"capacity": "$1.00"}, "gpt4o": {"capacity": "$1.00"}, "org": {"capacity": "$1.00"}'
    config = gateway_config(mock_upstream.base_url, grants=grants, quotas=quotas)
    with running_gateway(config, tmp_path) as gw:
        assert post(gw.port, "/v1/chat/completions", chat(200))[0] == 200
        assert post(gw.port, "/v1/messages", MESSAGES_BODY)[0] == 200
        chat_cost, messages_cost = [r.cost_nd or 0 for r in reversed(gw.records())]
        assert chat_cost > 0 and messages_cost > 0
        assert balances(gw) == {
            "team": ND - chat_cost - messages_cost,  # charged once per request, though named twice
            "org": ND - chat_cost - messages_cost,  # from another grant (floating)
            "gpt4o": ND - chat_cost,  # only the model its capability names
        }


def test_unpriced_models_are_recorded_unpriced_and_charge_nothing(
    mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    config = gateway_config(
        mock_upstream.base_url,
        grants=loopback_grant('{"models": "**", "quotas": [{"bucket": "team"}]}'),
        quotas='"team": {"capacity": "$1.00"}',
    )
    with running_gateway(config, tmp_path) as gw:
        assert post(gw.port, "/v1/chat/completions", {**chat(50), "model": "mystery-model-x"})[0] == 200
        (record,) = gw.records()
        assert record.usage is not None and record.usage.output_tokens == 50
        assert record.cost_nd is None  # unknown, never $0
        assert balances(gw) == {"team": ND}
        totals = gw.store.usage(UsageQuery(), [])
        assert totals[0].totals.unpriced == 1 and totals[0].totals.cost_nd == 0


def test_balances_survive_restarts_and_follow_definition_changes(
    mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    def config(quotas: str, bucket: str = "daily:<user>") -> str:
        return gateway_config(
            mock_upstream.base_url,
            grants=loopback_grant(f'{{"models": "**", "quotas": [{{"bucket": "{bucket}"}}]}}'),
            quotas=quotas,
        )

    first = config('"daily:<user>": {"capacity": "$1.00"}, "team": {"capacity": "$3.00"}')
    with running_gateway(first, tmp_path) as gw:
        assert post(gw.port, "/v1/chat/completions", chat(1000))[0] == 200
        (record,) = gw.records()
        spent = record.cost_nd or 0
        assert balances(gw) == {"daily:(loopback)": ND - spent}
    with running_gateway(first, tmp_path) as gw:  # a restart on the same database
        assert balances(gw) == {"daily:(loopback)": ND - spent}
        gw.apply(config_from(config('"daily:<user>": {"capacity": "$0.0002"}')))  # a reload
        deadline = time.monotonic() + 5
        while balances(gw) != {"daily:(loopback)": 200_000}:
            assert time.monotonic() < deadline, balances(gw)
            time.sleep(0.02)
    # Started without the quota: its buckets are deleted.
    with running_gateway(config('"team": {"capacity": "$3.00"}', bucket="team"), tmp_path) as gw:
        assert balances(gw) == {}


def test_a_client_that_leaves_during_admission_gets_its_reservation_back(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "q.db"))
    store.migrate()
    assert isinstance(store, SQLStore)
    entered, gate = threading.Event(), threading.Event()

    class SlowStore(FlakyStore):
        def _write(self, work: Callable[[Any], Any]) -> Any:
            entered.set()
            gate.wait(5)
            return super()._write(work)

    ledger = QuotaLedger(SlowStore(store))  # type: ignore[arg-type]
    config = config_from(
        '{"quotas": {"team": {"capacity": "$1.00"}}, "providers": {"openai": {"baseurl": "http://127.0.0.1:9",'
        ' "models": ["gpt-4o-mini"], "compatibility": {"openai_chat": true}}}}'
    )
    runtime = build_runtime(config, ledger, 1)
    route = runtime.routing.resolve("gpt-4o-mini", Operation.CHAT_COMPLETIONS)

    async def leave_early() -> None:
        task = asyncio.create_task(runtime.quotas.admit(ALICE, route, [BucketRef("team")], chat(100), 100))
        for _ in range(500):  # until the admission runs in the ledger's thread
            if entered.is_set():
                break
            await asyncio.sleep(0.01)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(leave_early())
    assert ledger.flush(5)
    assert [(s.name, s.balance) for s in ledger.states()] == [("team", ND)]
    ledger.close()
    store.close()


def test_settlement_charges_the_cost_or_keeps_the_reservation_when_the_cost_is_unknown(
    tmp_path: Path,
) -> None:
    store = open_store(str(tmp_path / "q.db"))
    store.migrate()
    ledger = QuotaLedger(store)
    config = config_from(
        '{"quotas": {"a": {"capacity": "$1.00"}, "b": {"capacity": "$1.00"}, "c": {"capacity": "$1.00"}}}'
    )
    policy = build_runtime(config, ledger, 1).quotas
    for name, cost in (("a", 300), ("b", 0), ("c", None)):
        bucket = spec_of(name, config.quotas[name])
        assert ledger.reserve([bucket], 1000) == []
        policy.settle(Reservation((bucket,), 1000), cost)
    # A settlement is stored when settle returns: no flush needed.
    assert {s.name: ND - s.balance for s in ledger.states()} == {"a": 300, "b": 0, "c": 1000}
    ledger.close()
    store.close()
