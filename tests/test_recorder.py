"""The recorder: off-path batching, the spool, outages, restarts and two writer processes."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tailgate.config.model import Retention
from tailgate.record import Record
from tailgate.recorder import Recorder, Spool, spool_name, spool_paths
from tailgate.store import PostgresStore, RecordFilter, SessionFilter, SQLiteStore, UsageQuery, open_store
from tailgate.store.sql import SQLStore
from tests.pg import HOST, PORT, TcpProxy, new_schema_url, pg_admin_url, sample_record, store, store_url

__all__ = ["pg_admin_url", "store", "store_url"]

T0 = 1_767_225_600_000


def stored_ids(store: SQLStore) -> list[str]:
    return [row[0] for row in store._read("SELECT id FROM records ORDER BY id")]


def requests_in_rollups(store: SQLStore) -> int:
    rows = store.usage(UsageQuery(), ())
    return rows[0].totals.requests if rows else 0


def same(record: Record) -> Record:
    return record


class DownStore:
    """A store that is never reachable."""

    def insert_records(self, records: Iterable[Record]) -> int:
        raise ConnectionError("store is down")

    def purge(self, *args: Any, **kwargs: Any) -> int:
        raise ConnectionError("store is down")


class GatedStore:
    """A real store whose writes wait until the gate opens: a slow, not a failed, store."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        self.gate = threading.Event()

    def insert_records(self, records: Iterable[Record]) -> int:
        self.gate.wait(timeout=20)
        return self.store.insert_records(records)


def recorder(store: Any, tmp_path: Path, name: str = "spool.bin", **kwargs: Any) -> Recorder[Record]:
    options: dict[str, Any] = {"batch_size": 50, "flush_interval": 0.01, "max_backoff": 0.2} | kwargs
    return Recorder(store, same, spool_path=str(tmp_path / name), **options)


def test_records_reach_the_store_in_batches(store: SQLStore, tmp_path: Path) -> None:
    threads: set[str] = set()

    def prepare(r: Record) -> Record:
        threads.add(threading.current_thread().name)
        return r

    rec = Recorder(store, prepare, spool_path=str(tmp_path / "spool.bin"), batch_size=64, flush_interval=0.01)
    rec.start()
    records = [sample_record(i, T0 + i, capture=True) for i in range(300)]
    for r in records:
        rec.submit(r)
    assert rec.flush(10)
    assert stored_ids(store) == sorted(r.id for r in records)
    assert store.get_record(records[7].id) == records[7]
    assert threading.current_thread().name not in threads
    rec.close(5)
    s = rec.stats
    assert (s.submitted, s.written, s.spooled, s.replayed, s.dropped, s.errors) == (300, 300, 0, 0, 0, 0)
    rec.submit(records[0])  # after close: counted, never raised
    assert rec.stats.dropped == 1


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_an_outage_blocks_no_submit_and_loses_nothing(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    proxy: TcpProxy | None = None
    locker: sqlite3.Connection | None = None
    if backend == "sqlite":
        db = str(tmp_path / "tailgate.db")
        target: SQLStore = SQLiteStore(db, busy_timeout=0.2)

        def outage() -> None:
            nonlocal locker
            locker = sqlite3.connect(db, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock

        def recovery() -> None:
            assert locker is not None
            locker.execute("COMMIT")
            locker.close()
    else:
        proxy = TcpProxy((HOST, PORT))
        proxy.start()
        url = new_schema_url(request.getfixturevalue("pg_admin_url"), port=proxy.port)
        target = PostgresStore(url, timeout=1.0, connect_timeout=1)
        outage, recovery = proxy.cut, proxy.start  # connections reset, new ones refused
    target.migrate()
    rec = recorder(target, tmp_path)
    rec.start()
    records = [sample_record(i, T0 + i) for i in range(1500)]
    slowest = 0.0
    started = time.monotonic()
    for step in range(50):  # 30 records every 20 ms for about a second
        if step == 10:
            outage()
        if step == 35:
            recovery()
        for r in records[step * 30 : (step + 1) * 30]:
            t = time.perf_counter()
            rec.submit(r)
            slowest = max(slowest, time.perf_counter() - t)
        time.sleep(max(0.0, started + (step + 1) * 0.02 - time.monotonic()))
    assert rec.flush(30), rec.stats
    assert slowest < 0.05
    assert stored_ids(target) == sorted(r.id for r in records)
    assert requests_in_rollups(target) == 1500
    s = rec.stats
    assert s.spooled > 0 and s.replayed >= s.spooled and s.errors > 0
    assert s.dropped == 0 and s.written + s.spooled == 1500
    assert not os.path.exists(tmp_path / "spool.bin.replaying")
    rec.close(5)
    target.close()
    if proxy is not None:
        proxy.cut()


def test_a_restart_replays_the_spool_once(store: SQLStore, tmp_path: Path) -> None:
    records = [sample_record(i, T0 + i, capture=True) for i in range(120)]
    down = recorder(DownStore(), tmp_path)
    down.start()
    for r in records:
        down.submit(r)
    down.close(5)
    assert (down.stats.spooled, down.stats.written, down.stats.dropped) == (120, 0, 0)
    with open(tmp_path / "spool.bin", "ab") as f:
        f.write(b"\x00\x00\x10\x00\x12\x34torn")  # the process died in the middle of an append

    for expected_replays in (120, 0):
        rec = recorder(store, tmp_path)
        rec.start()
        assert rec.flush(10)
        rec.close(5)
        assert rec.stats.replayed == expected_replays and rec.stats.errors == 0
        assert stored_ids(store) == sorted(r.id for r in records)
        assert requests_in_rollups(store) == 120
    assert store.get_record(records[3].id) == records[3]


def test_an_interrupted_replay_is_repeated_without_double_counting(store: SQLStore, tmp_path: Path) -> None:
    records = [sample_record(i, T0 + i) for i in range(80)]
    spool = Spool(str(tmp_path / "spool.bin"))
    spool.append(records[:50])
    spool.append(records[50:])
    spool.close()
    store.insert_records(records[:50])  # a replay stored the first batch, then the process died
    shutil.copy(tmp_path / "spool.bin", tmp_path / "spool.bin.replaying")
    os.remove(tmp_path / "spool.bin")
    sessions = sum(s.totals.requests for s in store.list_sessions(SessionFilter(), limit=100).items)
    assert sessions == 50
    rec = recorder(store, tmp_path)
    rec.start()
    assert rec.flush(10)
    rec.close(5)
    assert stored_ids(store) == sorted(r.id for r in records)
    assert requests_in_rollups(store) == 80
    assert sum(s.totals.requests for s in store.list_sessions(SessionFilter(), limit=100).items) == 80


def test_a_full_buffer_spills_to_the_spool(store: SQLStore, tmp_path: Path) -> None:
    slow = GatedStore(store)
    rec = recorder(slow, tmp_path, batch_size=10, buffer_limit=100)
    rec.start()
    records = [sample_record(i, T0 + i) for i in range(1000)]
    for r in records:
        rec.submit(r)
    for _ in range(500):  # at most 5 s
        if rec.stats.spooled >= 1000 - 100 - 10:
            break
        time.sleep(0.01)
    assert rec.stats.spooled >= 1000 - 100 - 10  # memory stays bounded while the store stalls
    slow.gate.set()
    assert rec.flush(20)
    rec.close(5)
    assert stored_ids(store) == sorted(r.id for r in records)
    assert rec.stats.dropped == 0


def test_zero_retention_never_writes_bodies(store: SQLStore, tmp_path: Path) -> None:
    records = [sample_record(i, T0 + i, capture=True) for i in range(10)]
    down = recorder(DownStore(), tmp_path, retention=Retention(duration=0))
    down.start()
    for r in records:
        down.submit(replace(r))
    down.close(5)
    assert b"x-request-id" not in (tmp_path / "spool.bin").read_bytes()
    rec = recorder(store, tmp_path, retention=Retention(duration=0))
    rec.start()
    for r in records:
        rec.submit(replace(r, id=r.id + "b"))
    assert rec.flush(10)
    rec.close(5)
    assert len(stored_ids(store)) == 20
    assert all(store.get_record(i).capture is None for i in stored_ids(store))


def test_the_recorder_purges_old_captures_in_the_background(store: SQLStore, tmp_path: Path) -> None:
    now = time.time_ns() // 1_000_000
    old = [sample_record(i, now - 7_200_000 + i, capture=True) for i in range(30)]
    new = [sample_record(i, now + i, prefix="n", capture=True) for i in range(5)]
    retention = Retention(duration=3600, purge=("captures", "tools"))
    rec = recorder(store, tmp_path, retention=retention, purge_interval=0.05)
    rec.start()
    for r in old + new:
        rec.submit(r)
    assert rec.flush(10)
    for _ in range(500):  # at most 5 s
        if all(store.get_record(r.id).capture is None for r in old):
            break
        time.sleep(0.01)
    rec.close(5)
    assert all(store.get_record(r.id).capture is None for r in old)
    assert all(store.get_record(r.id).capture is not None for r in new)
    assert len(store.list_records(RecordFilter(), limit=100).items) == 35


def test_a_failing_prepare_is_counted_and_the_rest_is_stored(store: SQLStore, tmp_path: Path) -> None:
    def prepare(r: Record) -> Record:
        if r.ts_ms == T0 + 3:
            raise ValueError("bug")
        return r

    rec: Recorder[Record] = Recorder(store, prepare, spool_path=str(tmp_path / "s.bin"), flush_interval=0.01)
    rec.start()
    for i in range(10):
        rec.submit(sample_record(i, T0 + i))
    assert rec.flush(10)
    rec.close(5)
    assert len(stored_ids(store)) == 9
    assert (rec.stats.errors, rec.stats.dropped) == (1, 1)


def test_a_spool_serves_one_process(tmp_path: Path) -> None:
    first = Spool(str(tmp_path / "spool.bin"))
    with pytest.raises(RuntimeError, match="in use"):
        Spool(str(tmp_path / "spool.bin"))
    first.close()
    Spool(str(tmp_path / "spool.bin")).close()


def write_from_process(url: str, spool_path: str, worker: int, n: int) -> tuple[int, int, int]:
    """A gateway process: its own store connection and recorder, the database shared."""
    store = open_store(url)
    rec: Recorder[Record] = Recorder(store, same, spool_path=spool_path, batch_size=100, flush_interval=0.01)
    rec.start()
    for i in range(n):
        rec.submit(sample_record(i, T0 + i * 1000, prefix=f"w{worker}"))
    rec.flush(60)
    rec.close(30)
    store.close()
    return rec.stats.written + rec.stats.replayed, rec.stats.dropped, rec.stats.submitted


def test_two_processes_share_one_database(store: SQLStore, store_url: str, tmp_path: Path) -> None:
    n = 1500
    ctx = multiprocessing.get_context("spawn")
    jobs = [(store_url, str(tmp_path / f"spool{w}.bin"), w, n) for w in range(2)]
    with ctx.Pool(2) as pool:
        results = pool.starmap_async(write_from_process, jobs).get(timeout=120)
    assert [dropped for _, dropped, _ in results] == [0, 0]
    assert len(stored_ids(store)) == 2 * n
    assert requests_in_rollups(store) == 2 * n
    sessions = store.list_sessions(SessionFilter(), limit=1000).items
    assert sum(s.totals.requests for s in sessions) == 2 * n


# -- spools of workers that no longer run ----------------------------------------------------------


def test_each_missing_workers_spool_has_one_adopter(tmp_path: Path) -> None:
    for name in ("spool.bin", "spool-1.bin", "spool-2.bin", "spool-3.bin.replaying", "spool-7.bin"):
        (tmp_path / name).write_bytes(b"")
    for name in ("spool-2.bin.lock", "spool-x.bin", "other-5.bin", "spool-5.bin.old"):
        (tmp_path / name).write_bytes(b"")
    d = str(tmp_path)
    assert spool_paths(d, 0, 2) == (f"{d}/spool.bin", [f"{d}/spool-2.bin"])
    assert spool_paths(d, 1, 2) == (f"{d}/spool-1.bin", [f"{d}/spool-3.bin", f"{d}/spool-7.bin"])
    assert spool_paths(d, 0, 1)[1] == [f"{d}/spool-{j}.bin" for j in (1, 2, 3, 7)]
    assert spool_paths(d, 2, 8) == (f"{d}/spool-2.bin", [])
    assert spool_paths(f"{d}/missing", 0, 1) == (f"{d}/missing/spool.bin", [])


def test_fewer_workers_replay_the_spools_of_the_missing_ones(store: SQLStore, tmp_path: Path) -> None:
    # Four workers ran while the store was down, then the gateway restarts with two.
    records = {
        w: [sample_record(i, T0 + i, prefix=f"w{w}", capture=True) for i in range(60)] for w in range(4)
    }
    for w in range(4):
        down = recorder(DownStore(), tmp_path, spool_name(w))
        down.start()
        for r in records[w]:
            down.submit(r)
        down.close(5)
        assert down.stats.spooled == 60
    (tmp_path / "spool-3.bin").rename(tmp_path / "spool-3.bin.replaying")  # died while replaying
    workers = []
    for w in range(2):
        own, adopted = spool_paths(str(tmp_path), w, 2)
        workers.append(
            Recorder(store, same, spool_path=own, adopt=adopted, batch_size=50, flush_interval=0.01)
        )
    for rec in workers:
        rec.start()
    for rec in workers:
        assert rec.flush(10)
        rec.close(5)
    assert [rec.stats.replayed for rec in workers] == [120, 120]
    assert stored_ids(store) == sorted(r.id for w in range(4) for r in records[w])
    assert requests_in_rollups(store) == 240
    assert store.get_record(records[3][5].id) == records[3][5]
    # Only lock files stay (removing one could let two processes lock different files).
    assert sorted(p.name for p in tmp_path.glob("*.bin*") if p.suffix != ".lock") == []


def test_an_adopted_spool_is_replayed_by_one_process_only(store: SQLStore, tmp_path: Path) -> None:
    records = [sample_record(i, T0 + i) for i in range(80)]
    left = Spool(str(tmp_path / "spool-5.bin"))
    left.append(records)
    left.close()
    slow = GatedStore(store)
    first = recorder(slow, tmp_path, "spool.bin", adopt=[str(tmp_path / "spool-5.bin")])
    first.start()
    for _ in range(500):  # at most 5 s, until the first is replaying (and holds the lock)
        if os.path.exists(tmp_path / "spool-5.bin.replaying"):
            break
        time.sleep(0.01)
    # A second process told to adopt it too (say, a misconfigured worker count) leaves it alone.
    second = recorder(store, tmp_path, "spool-1.bin", adopt=[str(tmp_path / "spool-5.bin")])
    second.start()
    assert second.flush(10)
    second.close(5)
    assert second.stats.replayed == 0 and stored_ids(store) == []
    slow.gate.set()
    assert first.flush(10)
    first.close(5)
    assert first.stats.replayed == 80
    assert stored_ids(store) == sorted(r.id for r in records)
    assert not os.path.exists(tmp_path / "spool-5.bin.replaying")
