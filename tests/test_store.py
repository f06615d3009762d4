"""The request log store, on SQLite and on PostgreSQL (the real server on loopback)."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import pytest

from tailgate.config.model import Retention
from tailgate.errors import BadRequest, NotFound
from tailgate.identity.keys import hash_key
from tailgate.record import Outcome, Record
from tailgate.store import (
    PostgresStore,
    RecordFilter,
    SessionFilter,
    SQLiteStore,
    Store,
    UsageQuery,
    default_database_path,
    open_store,
)
from tailgate.store.base import USAGE_ROW_COLUMNS
from tailgate.store.migrations import migration_names
from tailgate.store.serialize import RECORD_COLUMNS, record_row
from tailgate.store.sql import SQLStore, Tx
from tests.pg import DAY_MS, PRINCIPALS, pg_admin_url, sample_record, store, store_url

__all__ = ["pg_admin_url", "store", "store_url"]

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def spread(n: int, *, start: int = T0, step: int = 3_600_000, capture: bool = False) -> list[Record]:
    """``n`` records, one every ``step`` ms (hourly by default, so they cover several days)."""
    return [sample_record(i, start + i * step, capture=capture) for i in range(n)]


def newest_first(records: list[Record]) -> list[str]:
    return [r.id for r in sorted(records, key=lambda r: (r.ts_ms, r.id), reverse=True)]


def all_pages(store: Store, filters: RecordFilter, limit: int, scope: str | None = None) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(1000):
        page = store.list_records(filters, limit=limit, cursor=cursor, scope=scope)
        assert len(page.items) <= limit
        ids.extend(r.id for r in page.items)
        cursor = page.next_cursor
        if cursor is None:
            return ids
    raise AssertionError("pagination did not end")


def columns(store: SQLStore, table: str) -> list[str]:
    if store.backend == "sqlite":
        return [row[1] for row in store._read(f"PRAGMA table_info({table})")]
    sql = (
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position"
    )
    return [row[0] for row in store._read(sql, (table,))]


# -- opening and migrating ------------------------------------------------------------------


def test_open_store_picks_the_backend(tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_database_path() == os.path.join(str(tmp_path), "tailgate", "tailgate.db")
    default = open_store("")
    assert isinstance(default, SQLiteStore) and default.path == default_database_path()
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_database_path() == os.path.expanduser("~/.local/share/tailgate/tailgate.db")
    by_url = open_store(f"sqlite://{tmp_path}/a b.db")
    assert isinstance(by_url, SQLiteStore) and by_url.path == f"{tmp_path}/a b.db"
    by_path = open_store(f"{tmp_path}/c.db")
    assert isinstance(by_path, SQLiteStore) and by_path.path == f"{tmp_path}/c.db"
    with pytest.raises(ValueError, match="scheme"):
        open_store("mysql://db/x")
    for s in (default, by_url, by_path):
        s.close()


@pytest.mark.postgres
def test_open_store_postgres(pg_admin_url: str) -> None:
    for url in (pg_admin_url, pg_admin_url.replace("postgresql://", "postgres://")):
        s = open_store(url)
        assert isinstance(s, PostgresStore)
        s.close()


def test_blank_database_migrates_to_head(store_url: str) -> None:
    s = open_store(store_url)
    assert isinstance(s, SQLStore)
    assert s.migrate() == migration_names()
    assert s.migrate() == []
    assert s.applied_migrations() == migration_names()
    assert columns(s, "records") == list(RECORD_COLUMNS)
    assert columns(s, "capture_bodies") == ["record_id", "ts_ms", "data"]
    assert columns(s, "api_keys") == [
        "id",
        "principal",
        "key_hash",
        "prefix",
        "note",
        "created_at",
        "expires_at",
        "revoked_at",
    ]
    assert columns(s, "quota_buckets") == [
        "name",
        "balance_nd",
        "updated_at_us",
        "capacity_nd",
        "rate_nd",
        "rate_period_s",
    ]
    assert {"day", "principal", "provider", "model", "cost_nd", "unpriced"} <= set(columns(s, "rollups"))
    s.close()


def test_upgrade_from_first_step_backfills_rollups_and_sessions(store_url: str, tmp_path: str) -> None:
    records = spread(60)
    old = open_store(store_url)
    assert isinstance(old, SQLStore)
    assert old.migrate(upto="m001_initial") == ["m001_initial"]
    # Rows written by a gateway that only knew the first schema: no roll-ups, no sessions.
    insert = (
        f"INSERT INTO records ({', '.join(RECORD_COLUMNS)}) VALUES ({', '.join('?' * len(RECORD_COLUMNS))})"
    )
    old._write(lambda tx: tx.executemany(insert, [record_row(r) for r in records]))
    assert old.migrate() == migration_names()[1:]

    fresh = SQLiteStore(f"{tmp_path}/fresh.db")
    fresh.migrate()
    fresh.insert_records(records)
    for by in ((), ("day",), ("day", "principal", "provider", "model")):
        assert old.usage(UsageQuery(), by) == fresh.usage(UsageQuery(), by)
    assert old.list_sessions(SessionFilter(), limit=100) == fresh.list_sessions(SessionFilter(), limit=100)
    assert old.insert_records(records) == 0
    old.close()
    fresh.close()


def test_concurrent_migrators_apply_each_step_once(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(3)]
    barrier = threading.Barrier(len(stores))
    applied: list[list[str]] = []

    def run(s: Store) -> None:
        barrier.wait(timeout=10)
        applied.append(s.migrate())

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(applied, key=len) == [[], [], migration_names()]
    for s in stores:
        s.close()


# -- writing --------------------------------------------------------------------------------


def test_insert_is_idempotent_on_id(store: SQLStore) -> None:
    records = spread(40)
    assert store.insert_records(records[:30]) == 30
    totals = store.usage(UsageQuery(), ())
    sessions = store.list_sessions(SessionFilter(), limit=100)
    # A replayed batch, overlapping the first, with a duplicate inside itself.
    assert store.insert_records(records[:30]) == 0
    assert store.insert_records([*records[20:40], records[35]]) == 10
    assert store.insert_records([]) == 0
    assert all_pages(store, RecordFilter(), 100) == newest_first(records)
    again = spread(30)
    store.insert_records(again)
    assert store.usage(UsageQuery(), ())[0].totals.requests == 40
    assert totals[0].totals.requests == 30
    assert sessions != store.list_sessions(SessionFilter(), limit=100)
    assert sum(s.totals.requests for s in store.list_sessions(SessionFilter(), limit=100).items) == 40


def test_record_round_trips_with_its_capture(store: SQLStore) -> None:
    records = spread(4, capture=True)
    store.insert_records(records)
    for original in records:
        got = store.get_record(original.id)
        assert got == original
    listed = store.list_records(RecordFilter(), limit=10).items
    assert all(r.capture is None for r in listed)
    with pytest.raises(NotFound):
        store.get_record("nope")
    with pytest.raises(NotFound):
        store.get_record(records[0].id, scope=PRINCIPALS[1])
    assert store.get_record(records[0].id, scope=PRINCIPALS[0]).id == records[0].id


def test_a_partly_stored_batch_adds_only_its_new_records(store: SQLStore) -> None:
    records = spread(120, step=600_000)  # twenty hours: several days' roll-ups, long sessions
    stored_before = records[10:80:3]
    assert store.insert_records(stored_before) == len(stored_before)
    # A replay: newest first, overlapping what is stored, with duplicates inside the batch.
    batch = list(reversed(records)) + records[:5] + stored_before[:2]
    assert store.insert_records(batch) == len(records) - len(stored_before)
    assert_sums_match(store, records)
    assert store.insert_records(batch) == 0
    assert_sums_match(store, records)


# -- reading the log ----------------------------------------------------------------------


def test_filters_match_the_records(store: SQLStore) -> None:
    records = spread(120)
    store.insert_records(records)
    cases = [
        (RecordFilter(principal=PRINCIPALS[1]), lambda r: r.principal == PRINCIPALS[1]),
        (RecordFilter(model="gpt-4o"), lambda r: r.model == "gpt-4o"),
        (RecordFilter(provider="gemini"), lambda r: r.provider == "gemini"),
        (RecordFilter(status=502), lambda r: r.status == 502),
        (RecordFilter(outcome="upstream_error"), lambda r: r.outcome == Outcome.UPSTREAM_ERROR),
        (RecordFilter(session="s2"), lambda r: r.session_id == "s2"),
        (
            RecordFilter(since_ms=T0 + DAY_MS, until_ms=T0 + 2 * DAY_MS),
            lambda r: r.ts_ms // DAY_MS == T0 // DAY_MS + 1,
        ),
        (
            RecordFilter(principal=PRINCIPALS[0], model="claude-sonnet-4", status=200),
            lambda r: r.principal == PRINCIPALS[0] and r.model == "claude-sonnet-4" and r.status == 200,
        ),
        (RecordFilter(model="no-such-model"), lambda r: False),
    ]
    for filters, keep in cases:
        expected = newest_first([r for r in records if keep(r)])
        assert all_pages(store, filters, 7) == expected, filters
    # A scope narrows every query; a filter outside it finds nothing.
    scoped = all_pages(store, RecordFilter(), 50, scope=PRINCIPALS[2])
    assert scoped == newest_first([r for r in records if r.principal == PRINCIPALS[2]])
    assert all_pages(store, RecordFilter(principal=PRINCIPALS[0]), 50, scope=PRINCIPALS[2]) == []


def test_keyset_pages_have_no_gaps_or_duplicates_under_concurrent_inserts(store: SQLStore) -> None:
    # Many records share a millisecond, so the id must break ties.
    records = [sample_record(i, T0 + (i // 4) * 1000) for i in range(100)]
    store.insert_records(records)
    seen: list[str] = []
    cursor = None
    later = 0
    for _ in range(100):
        page = store.list_records(RecordFilter(), limit=9, cursor=cursor)
        seen.extend(r.id for r in page.items)
        # Newer requests keep arriving while someone pages through the log.
        store.insert_records([sample_record(1000 + later + k, T0 + DAY_MS + later + k) for k in range(3)])
        later += 3
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == newest_first(records)
    with pytest.raises(BadRequest):
        store.list_records(RecordFilter(), cursor="garbage!")
    with pytest.raises(BadRequest):
        store.list_records(RecordFilter(), limit=0)


# -- sessions and roll-ups ----------------------------------------------------------------


KEYS = (
    "requests",
    "errors",
    "cost_nd",
    "unpriced",
    "duration_us",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "reasoning_tokens",
    "tool_calls",
)


def expected_totals(records: list[Record]) -> dict[str, int]:
    t = dict.fromkeys(KEYS, 0)
    for r in records:
        t["requests"] += 1
        t["errors"] += r.outcome != Outcome.OK
        t["cost_nd"] += r.cost_nd or 0
        t["unpriced"] += r.cost_nd is None and r.usage is not None
        t["duration_us"] += r.duration_us
        if r.usage:
            t["input_tokens"] += r.usage.input_tokens
            t["output_tokens"] += r.usage.output_tokens
            t["cache_read_tokens"] += r.usage.cache_read_tokens
            t["cache_write_5m_tokens"] += r.usage.cache_write_5m_tokens
            t["reasoning_tokens"] += r.usage.reasoning_tokens
            t["tool_calls"] += r.usage.tool_calls
    return t


def as_dict(totals: object) -> dict[str, int]:
    return {k: getattr(totals, k) for k in KEYS}


def test_rollups_match_the_records(store: SQLStore) -> None:
    records = spread(200)  # about eight days
    for start in range(0, 200, 37):  # several batches, as the recorder writes them
        store.insert_records(records[start : start + 37])
    groups: dict[tuple[date, str, str], list[Record]] = defaultdict(list)
    for r in records:
        groups[(_utc_day(r.ts_ms), r.principal, r.model or "")].append(r)
    rows = store.usage(UsageQuery(), ("day", "principal", "model"))
    assert [(row.day, row.principal, row.model) for row in rows] == sorted(groups)
    for row in rows:
        assert row.day is not None and row.principal is not None and row.model is not None
        assert as_dict(row.totals) == expected_totals(groups[(row.day, row.principal, row.model)])

    week = UsageQuery(since=date(2026, 1, 2), until=date(2026, 1, 4), model="gpt-4o")
    in_week = [
        r
        for r in records
        if date(2026, 1, 2) <= _utc_day(r.ts_ms) <= date(2026, 1, 4) and r.model == "gpt-4o"
    ]
    assert as_dict(store.usage(week, ())[0].totals) == expected_totals(in_week)

    top = store.usage(UsageQuery(), ("principal",), order="cost", limit=2)
    cost = {p: sum(r.cost_nd or 0 for r in records if r.principal == p) for p in PRINCIPALS}
    assert [row.principal for row in top] == sorted(cost, key=lambda p: -cost[p])[:2]
    by_tokens = store.usage(UsageQuery(), ("model",), order="tokens")
    tokens = [row.totals.total_tokens for row in by_tokens]
    assert tokens == sorted(tokens, reverse=True)

    mine = store.usage(UsageQuery(), ("principal",), scope=PRINCIPALS[1])
    assert [row.principal for row in mine] == [PRINCIPALS[1]]
    assert store.usage(UsageQuery(principal=PRINCIPALS[0]), (), scope=PRINCIPALS[1]) == []

    active = store.active_principals(UsageQuery(since=date(2026, 1, 1), until=date(2026, 1, 3)))
    assert active == [(date(2026, 1, d), 3) for d in (1, 2, 3)]
    assert store.active_principals(UsageQuery(), scope=PRINCIPALS[0])[0][1] == 1
    with pytest.raises(BadRequest):
        store.usage(UsageQuery(), ("agent",))  # type: ignore[arg-type]


def assert_sums_match(store: SQLStore, records: list[Record]) -> None:
    """The roll-ups and sessions are what ``records`` add up to, exactly."""
    groups: dict[tuple[date, str, str, str], list[Record]] = defaultdict(list)
    sessions: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        groups[(_utc_day(r.ts_ms), r.principal, r.model or "", r.provider or "")].append(r)
        if r.session_id is not None:
            sessions[(r.principal, r.session_id)].append(r)
    rows = store.usage(UsageQuery(), ("day", "principal", "model", "provider"))
    assert [(row.day, row.principal, row.model, row.provider) for row in rows] == sorted(groups)
    for row in rows:
        assert row.day is not None and row.principal is not None and row.model and row.provider
        assert as_dict(row.totals) == expected_totals(
            groups[(row.day, row.principal, row.model, row.provider)]
        )
    listed = store.list_sessions(SessionFilter(), limit=1000).items
    assert len(listed) == len(sessions)
    for s in listed:
        mine = sorted(sessions[(s.principal, s.session_id)], key=lambda r: (r.ts_ms, r.id))
        assert (s.first_ts_ms, s.last_ts_ms) == (mine[0].ts_ms, mine[-1].ts_ms)
        assert (s.user_agent, s.last_model) == (mine[0].user_agent, mine[-1].model)
        assert as_dict(s.totals) == expected_totals(mine)


def test_usage_rows_are_the_export_columns_in_key_order(store: SQLStore) -> None:
    records = spread(200)  # about eight days
    store.insert_records(records)
    unrouted = replace(sample_record(999, T0 + 3 * DAY_MS, prefix="x"), provider=None, model=None)
    store.insert_records([unrouted])
    week = UsageQuery(since=date(2026, 1, 2), until=date(2026, 1, 6))
    order = ("day", "principal", "model", "provider")
    for query, scope in (
        (week, None),
        (UsageQuery(), PRINCIPALS[1]),
        (UsageQuery(principal=PRINCIPALS[2]), None),
    ):
        expected = [
            (
                row.day.isoformat() if row.day else None,
                row.principal,
                row.provider or "",
                row.model or "",
                row.totals.requests,
                row.totals.input_tokens,
                row.totals.output_tokens,
                row.totals.cache_read_tokens,
                row.totals.cache_write_tokens,
                row.totals.reasoning_tokens,
                row.totals.cost_nd,
                row.totals.unpriced,
            )
            for row in store.usage(query, order, scope=scope)
        ]
        assert expected and store.usage_rows(query, scope=scope) == expected
    assert len(USAGE_ROW_COLUMNS) == len(expected[0])
    assert {row[1] for row in store.usage_rows(UsageQuery(), scope=PRINCIPALS[1])} == {PRINCIPALS[1]}
    assert store.usage_rows(UsageQuery(principal=PRINCIPALS[0]), scope=PRINCIPALS[1]) == []
    assert store.usage_rows(UsageQuery(since=date(2027, 1, 1))) == []


def _utc_day(ts_ms: int) -> date:
    return date.fromordinal(date(1970, 1, 1).toordinal() + ts_ms // DAY_MS)


def test_sessions_have_totals_and_page_newest_first(store: SQLStore) -> None:
    records = spread(90, step=60_000)
    store.insert_records(records[::2])
    store.insert_records(records[1::2])  # out of order: first/last must still be right
    by_session: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        assert r.session_id is not None
        by_session[(r.principal, r.session_id)].append(r)
    listed = []
    cursor = None
    for _ in range(20):
        page = store.list_sessions(SessionFilter(), limit=4, cursor=cursor)
        listed.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(listed) == len(by_session)
    assert [s.last_ts_ms for s in listed] == sorted((s.last_ts_ms for s in listed), reverse=True)
    for s in listed:
        mine = by_session[(s.principal, s.session_id)]
        assert s.first_ts_ms == min(r.ts_ms for r in mine)
        assert s.last_ts_ms == max(r.ts_ms for r in mine)
        assert s.last_model == max(mine, key=lambda r: r.ts_ms).model
        assert s.user_agent == min(mine, key=lambda r: r.ts_ms).user_agent
        assert as_dict(s.totals) == expected_totals(mine)
    own = store.list_sessions(SessionFilter(), limit=100, scope=PRINCIPALS[0]).items
    assert {s.principal for s in own} == {PRINCIPALS[0]}
    late = store.list_sessions(SessionFilter(since_ms=records[-3].ts_ms), limit=100).items
    assert {(s.principal, s.session_id) for s in late} == {(r.principal, r.session_id) for r in records[-3:]}
    one = listed[0]
    requests = all_pages(store, RecordFilter(session=one.session_id), 5, scope=one.principal)
    assert requests == newest_first(by_session[(one.principal, one.session_id)])


# -- one writer per process (SQLite) ----------------------------------------------------------


def test_writers_in_one_process_queue_on_a_lock_not_in_sqlite(tmp_path: str) -> None:
    # SQLite's busy handler would give up after 50 ms; the second writer waits 300 ms and succeeds.
    path = f"{tmp_path}/w.db"
    first = SQLiteStore(path, busy_timeout=0.05)
    first.migrate()
    second = SQLiteStore(path, busy_timeout=0.05)
    inside = threading.Event()

    def slow(tx: Tx) -> None:
        inside.set()
        time.sleep(0.3)
        tx.executemany("INSERT INTO quota_buckets VALUES (?, 1, 0, 1, 0, 1)", [("a",), ("b",)])

    writer = threading.Thread(target=first.transaction, args=(slow,))
    writer.start()
    assert inside.wait(5)
    started = time.monotonic()
    assert second.insert_records(spread(5)) == 5
    second._write(lambda tx: tx.execute("INSERT INTO quota_buckets VALUES ('c', 1, 0, 1, 0, 1)"))
    waited = time.monotonic() - started
    writer.join(5)
    assert 0.1 < waited < 2
    assert [row[0] for row in second.read("SELECT name FROM quota_buckets ORDER BY name")] == ["a", "b", "c"]
    first.close()
    second.close()


def test_close_waits_for_other_threads_then_refuses_them(tmp_path: str) -> None:
    path = f"{tmp_path}/c.db"
    store = SQLiteStore(path)
    store.migrate()
    inside, go = threading.Event(), threading.Event()
    results: list[object] = []

    def work(tx: Tx) -> str:
        inside.set()
        go.wait(5)
        tx.execute("INSERT INTO quota_buckets VALUES ('a', 1, 0, 1, 0, 1)")
        return "committed"

    def thread() -> None:
        results.append(store.transaction(work))
        try:
            store.read("SELECT 1")
        except RuntimeError as e:
            results.append(e)

    worker = threading.Thread(target=thread)
    worker.start()
    assert inside.wait(5)
    closer = threading.Thread(target=store.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # it waits for the transaction another thread is running
    go.set()
    closer.join(10)
    worker.join(10)
    assert results[0] == "committed"
    assert isinstance(results[1], RuntimeError)
    with pytest.raises(RuntimeError, match="closed"):
        store.read("SELECT 1")
    reopened = SQLiteStore(path)
    assert reopened.read("SELECT name FROM quota_buckets") == [("a",)]
    reopened.close()


def _hold_writer_byte(path: str, held: Any, release: Any) -> None:
    """Another process holding the database's writer lock until told to let go."""
    fd = os.open(path + "-writer", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)
    held.set()
    release.wait(20)
    os.close(fd)


def test_a_writer_in_another_process_is_waited_for_then_timed_out(tmp_path: str) -> None:
    path = f"{tmp_path}/p.db"
    store = SQLiteStore(path, busy_timeout=0.3)
    store.migrate()
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_writer_byte, args=(path, held, release))
    holder.start()
    assert held.wait(20)
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.insert_records(spread(3))
    assert 0.25 < time.monotonic() - started < 3
    threading.Timer(0.2, release.set).start()
    started = time.monotonic()
    store.busy_timeout = 10
    assert store.insert_records(spread(3)) == 3  # waits for the other process, then goes ahead
    assert 0.1 < time.monotonic() - started < 5
    holder.join(10)
    store.close()


def _take_turns(path: str, start: Any, out: Any) -> None:
    """Four threads committing back to back for a second; the longest wait for the lock."""
    store = SQLiteStore(path)
    start.wait(20)
    stop = time.monotonic() + 1.0
    waits: list[float] = []

    def hammer() -> None:
        while time.monotonic() < stop:
            t = time.monotonic()
            store.transaction(lambda tx: tx.execute("UPDATE quota_buckets SET balance_nd = balance_nd + 1"))
            waits.append(time.monotonic() - t)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    out.put((len(waits), max(waits)))
    store.close()


def test_busy_processes_take_turns(tmp_path: str) -> None:
    # Threads of one process hand the lock to each other at once; without the turnstile a
    # process whose threads always want it would keep it, and the other would wait its whole
    # busy timeout in SQLite's busy handler.
    path = f"{tmp_path}/t.db"
    store = SQLiteStore(path)
    store.migrate()
    store.transaction(lambda tx: tx.execute("INSERT INTO quota_buckets VALUES ('n', 0, 0, 1, 0, 1)"))
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_take_turns, args=(path, start, out)) for _ in range(2)]
    for proc in procs:
        proc.start()
    start.set()
    results = [out.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(10)
    commits = [n for n, _ in results]
    assert min(commits) > 0.25 * sum(commits), results
    assert max(longest for _, longest in results) < 0.5, results
    assert store.read("SELECT balance_nd FROM quota_buckets") == [(sum(commits),)]
    store.close()


def test_checkpoints_run_in_their_own_thread(tmp_path: str) -> None:
    store = SQLiteStore(f"{tmp_path}/k.db", checkpoint_frames=64)
    store.migrate()
    # Writers checkpoint only as a backstop, far beyond what the checkpointer lets pile up.
    assert store.read("PRAGMA wal_autocheckpoint") == [(256,)]
    assert store.checkpointer.pending() is not None
    for day in range(6):
        store.insert_records(spread(100, start=T0 + day * DAY_MS, step=60_000, capture=True))
    for _ in range(500):  # at most 5 s
        pending = store.checkpointer.pending()
        if store.checkpointer.checkpoints and pending is not None and pending < 64:
            break
        time.sleep(0.01)
    assert store.checkpointer.checkpoints >= 1
    pending = store.checkpointer.pending()
    assert pending is not None and pending < 64
    store.read("PRAGMA wal_checkpoint(TRUNCATE)")
    assert store.checkpointer.pending() == 0
    assert len(all_pages(store, RecordFilter(), 1000)) == 600
    store.insert_records([sample_record(1000, T0, prefix="z")])  # wakes the checkpointer
    started = time.monotonic()
    store.close()
    assert time.monotonic() - started < 2
    assert store.checkpointer._thread is not None and not store.checkpointer._thread.is_alive()


# -- retention ------------------------------------------------------------------------------


def test_purge_removes_old_captures_and_keeps_metrics(store: SQLStore) -> None:
    records = spread(48, capture=True)  # two days, hourly
    store.insert_records(records)
    usage_before = store.usage(UsageQuery(), ("day", "principal"))
    now = T0 + 48 * 3_600_000
    keep_day = Retention(duration=86_400)
    assert store.purge(Retention(duration=None), now) == 0
    assert store.purge(Retention(duration=86_400, require_export=True), now) == 0
    purged = 0
    for _ in range(10):
        n = store.purge(keep_day, now, batch_size=10)
        purged += n
        if n == 0:
            break
    old = [r for r in records if r.ts_ms < now - 86_400_000]
    assert purged == len(old)
    for r in records:
        got = store.get_record(r.id)
        assert got.usage == r.usage and got.cost_nd == r.cost_nd
        assert r.capture is not None
        if r in old:
            # Bodies and headers are gone; tool-use data stays unless "tools" is purged.
            assert got.capture is None if not r.capture.tool_calls else got.capture is not None
            if got.capture is not None:
                assert got.capture.tool_calls == r.capture.tool_calls and got.capture.request_body == b""
        else:
            assert got.capture == r.capture
    assert store.purge(Retention(duration=86_400, purge=("captures", "tools")), now) == sum(
        1 for r in old if r.capture and r.capture.tool_calls
    )
    assert all(store.get_record(r.id).capture is None for r in old)
    assert store.usage(UsageQuery(), ("day", "principal")) == usage_before
    assert len(all_pages(store, RecordFilter(), 100)) == 48


def capture_bytes(store: SQLStore) -> int:
    if isinstance(store, SQLiteStore):
        # Pages in use; the file itself shrinks to this at the next WAL checkpoint.
        (pages,) = store._read("PRAGMA page_count")[0]
        return int(pages) * 4096
    (size,) = store._read("SELECT pg_total_relation_size('capture_bodies')")[0]
    return int(size)


def test_purge_does_not_let_the_database_grow(store: SQLStore) -> None:
    big = os.urandom(20_000)  # incompressible, so the capture really takes space
    sizes = []
    for cycle in range(4):
        batch = spread(150, start=T0 + cycle * DAY_MS, step=1000, capture=True)
        for r in batch:
            assert r.capture is not None
            r.capture.response_body = big
        store.insert_records(batch)
        now = T0 + (cycle + 1) * DAY_MS
        for _ in range(100):
            if store.purge(Retention(duration=1), now, batch_size=50) == 0:
                break
        sizes.append(capture_bytes(store))
    # The space of purged captures is given back (SQLite) or reused (PostgreSQL): the database
    # grows by the kept metric rows, a small fraction of the 9 MB of captures written meanwhile.
    assert sizes[0] < 150 * len(big), sizes
    assert sizes[-1] - sizes[0] < 0.1 * 3 * 150 * len(big), sizes


# -- gateway API keys -----------------------------------------------------------------------


def test_store_keeps_gateway_keys(store: SQLStore) -> None:
    later = datetime(2030, 1, 1, tzinfo=UTC)
    info, secret = store.create_key("ci-bot", expires_at=later, note="deploys")
    assert secret.startswith("tg_") and info.key_hash == hash_key(secret)
    other, _ = store.create_key("build@example.com", expires_at=None)
    assert store.find_key(hash_key(secret)) == info
    assert store.find_key(hash_key("tg_unknown")) is None
    assert store.list_keys() == sorted([info, other], key=lambda k: (k.created_at, k.id))
    assert store.revoke_key(info.id) is True
    assert store.revoke_key(info.id) is False
    assert store.revoke_key("missing") is False
    revoked = store.find_key(info.key_hash)
    assert revoked is not None and revoked.state(datetime.now(UTC)) == "revoked"
    with pytest.raises(ValueError):
        store.create_key("tag:ci", expires_at=None)
