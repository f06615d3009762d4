"""The embedded store: one SQLite file in WAL mode, shared safely by threads and processes."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tailgate.store.base import Row
from tailgate.store.checkpoint import Checkpointer
from tailgate.store.migrations import Backend
from tailgate.store.serialize import RECORD_COLUMNS
from tailgate.store.sql import SQLStore, Tx

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: threads still queue, processes use busy_timeout
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
R = TypeVar("R")
_INSERT_RECORD = (
    f"INSERT INTO records ({', '.join(RECORD_COLUMNS)}) VALUES ({', '.join('?' * len(RECORD_COLUMNS))})"
)
# SQLite's limit on bound parameters is 32766 since 3.32; stay well below it.
_IN_CHUNK = 900
# A checkpoint syncs the file; a batch of records touches many index pages, so letting the WAL
# reach ~32 MB between checkpoints measured 1.4-1.8x the insert rate of 4 MB. The checkpointer
# thread runs them; writers do only past four times that, if it falls behind.
CHECKPOINT_FRAMES = 8192
_WRITER_BYTE, _TURNSTILE_BYTE = 0, 1


class _Writer:
    """Lets one write transaction at a time run on a database file, without starving anyone.

    Threads of this process queue on a lock. Processes take byte 0 of ``<path>-writer`` (a POSIX
    record lock), polled every 0.2-1 ms: that wakes a waiter about when the holder commits, where
    SQLite's busy handler sleeps 1, 2, 5, 10 … 100 ms between tries and leaves the database idle
    meanwhile. A process waiting for byte 0 holds byte 1, the turnstile, which every process
    passes first: a process that has just committed queues behind the waiter instead of taking
    byte 0 again at once, so busy processes take turns.
    """

    def __init__(self, path: str) -> None:
        self.path = path + "-writer"
        self.lock = threading.RLock()
        self._depth = 0
        self._fd = -1

    def acquire(self, timeout: float) -> None:
        self.lock.acquire()
        if self._depth == 0:
            try:
                self._lock_file(timeout)
            except BaseException:
                self.lock.release()
                raise
        self._depth += 1

    def try_acquire(self) -> bool:
        """Take the writer at once if nobody holds or waits for it; never waits."""
        if not self.lock.acquire(blocking=False):
            return False
        if self._depth == 0 and fcntl is not None:
            try:
                self._open()
                # A process waiting for the writer holds the turnstile: let it go first.
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _TURNSTILE_BYTE)
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _WRITER_BYTE)
                finally:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, _TURNSTILE_BYTE)
            except OSError:
                self.lock.release()
                return False
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and fcntl is not None:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, _WRITER_BYTE)
        finally:
            self.lock.release()

    def _open(self) -> None:
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def _lock_file(self, timeout: float) -> None:
        if fcntl is None:
            return
        self._open()
        deadline = time.monotonic() + timeout
        self._take(_TURNSTILE_BYTE, deadline)
        try:
            self._take(_WRITER_BYTE, deadline)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, _TURNSTILE_BYTE)

    def _take(self, byte: int, deadline: float) -> None:
        assert fcntl is not None
        delay = 0.0002
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
                return
            except OSError as e:  # EAGAIN or EACCES: another process holds it
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise sqlite3.OperationalError("database is locked (by another process)") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.001)

    def forget(self) -> None:
        """In a forked child: start afresh (record locks are not inherited; the parent's are its own)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self.lock = threading.RLock()
        self._depth = 0


_writers: dict[str, _Writer] = {}
_writers_guard = threading.Lock()


def _writer_for(path: str) -> _Writer:
    """The writer of the database at ``path``, shared by every store object of this process."""
    key = os.path.realpath(path)
    with _writers_guard:
        writer = _writers.get(key)
        if writer is None:
            writer = _writers[key] = _Writer(key)
        return writer


def _forget_writers() -> None:
    # A lock held by another thread at fork time would stay held forever in the child. The
    # writers stay registered, so store objects from before the fork share them with new ones.
    global _writers_guard
    _writers_guard = threading.Lock()
    for writer in _writers.values():
        writer.forget()


os.register_at_fork(after_in_child=_forget_writers)


class _Connection:
    """A thread's connection, with the lock that :meth:`SQLiteStore.close` takes to close it."""

    __slots__ = ("db", "in_use")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        # Reentrant: a read inside a transaction's work uses the same connection.
        self.in_use = threading.RLock()


class _SQLiteTx:
    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.conn.executemany(sql, rows)


class SQLiteStore(SQLStore):
    """A SQLite database file; one connection per thread, writes in ``BEGIN IMMEDIATE`` transactions.

    Write transactions take the file's writer lock first (:class:`_Writer`: one per database
    file and process, shared by every store object on it), so the recorder and the quota ledger,
    and the worker processes, queue on locks that wake the next writer about at once, not in
    SQLite's sleeping busy handler (which still covers other programs writing the file). WAL
    checkpoints run in a thread of their own (:mod:`tailgate.store.checkpoint`).
    """

    backend: Backend = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 5.0,
        cache_mb: int = 16,
        checkpoint_frames: int = CHECKPOINT_FRAMES,
    ) -> None:
        self.path = path
        self.url = path
        self.busy_timeout = busy_timeout
        self.cache_mb = cache_mb
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._local = threading.local()
        self._connections: list[_Connection] = []
        self._lock = threading.Lock()
        self._writer = _writer_for(path)
        self.checkpointer = Checkpointer(path, checkpoint_frames, busy_timeout)
        self._closed = False

    def _hold(self) -> _Connection:
        """This thread's connection, held (release ``in_use``) so :meth:`close` waits for it."""
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
        conn.in_use.acquire()
        if self._closed:
            conn.in_use.release()
            raise RuntimeError("store is closed")
        return conn

    def _connect(self, busy_timeout: float | None = None) -> _Connection:
        if self._closed:
            raise RuntimeError("store is closed")
        busy = self.busy_timeout if busy_timeout is None else busy_timeout
        db = sqlite3.connect(self.path, timeout=busy, isolation_level=None, check_same_thread=False)
        # auto_vacuum only takes effect before the first table exists, so it comes first.
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        # After a burst the WAL is truncated back to this size at the next checkpoint.
        db.execute("PRAGMA journal_size_limit = 67108864")
        db.execute(f"PRAGMA wal_autocheckpoint = {4 * self.checkpointer.frames}")
        db.execute(f"PRAGMA busy_timeout = {int(busy * 1000)}")
        db.execute(f"PRAGMA cache_size = -{self.cache_mb * 1024}")
        conn = _Connection(db)
        with self._lock:
            if self._closed:
                db.close()
                raise RuntimeError("store is closed")
            self._connections.append(conn)
        if busy_timeout is None:
            self._local.conn = conn
        return conn

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        conn = self._hold()
        try:
            return conn.db.execute(sql, params).fetchall()
        finally:
            conn.in_use.release()

    def transaction(self, work: Callable[[Tx], R]) -> R:
        self._writer.acquire(self.busy_timeout)
        try:
            conn = self._hold()
            try:
                result = _run(conn.db, work)
            finally:
                conn.in_use.release()
        finally:
            self._writer.release()
        self.checkpointer.committed()
        return result

    def try_transaction(self, work: Callable[[Tx], R]) -> tuple[bool, R | None]:
        """Run ``work`` as a write transaction only if the file is free right now.

        ``(False, None)`` without waiting when another thread or process is writing it; for the
        event loop, which must never sleep on a lock.
        """
        if self._closed or not self._writer.try_acquire():
            return False, None
        try:
            conn = self._hold_inline()
            try:
                result = _run(conn.db, work)
            except sqlite3.OperationalError as e:
                if "locked" in str(e) or "busy" in str(e):  # another program holds the file
                    return False, None
                raise
            finally:
                conn.in_use.release()
        finally:
            self._writer.release()
        self.checkpointer.committed()
        return True, result

    def _hold_inline(self) -> _Connection:
        """This thread's connection for :meth:`try_transaction`: SQLite's busy wait set to 0."""
        conn: _Connection | None = getattr(self._local, "inline", None)
        if conn is None:
            conn = self._connect(busy_timeout=0.0)
            self._local.inline = conn
        conn.in_use.acquire()
        if self._closed:
            conn.in_use.release()
            raise RuntimeError("store is closed")
        return conn

    def _insert_new(self, tx: Tx, rows: list[Row]) -> set[str]:
        # Safe without RETURNING: BEGIN IMMEDIATE makes this the only writer until commit.
        ids = [row[0] for row in rows]
        known: set[str] = set()
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            known.update(r[0] for r in tx.execute(f"SELECT id FROM records WHERE id IN ({marks})", chunk))
        fresh = [row for row in rows if row[0] not in known]
        tx.executemany(_INSERT_RECORD, fresh)
        return {row[0] for row in fresh}

    def _index_hint(self, index: str) -> str:
        # Without fresh statistics (a new index, a young database) SQLite can pick an index
        # that matches the filter but not the order, and sort a user's whole history: 2 s at
        # 10M records instead of 0.4 ms. The choice is clear from the filters, so name it.
        return f" INDEXED BY {index}"

    def _after_purge(self, deleted: int, batch_size: int) -> None:
        if deleted:
            # execute() would free one page per step and stop after the first; a script runs
            # the pragma to completion.
            conn = self._hold()
            try:
                conn.db.executescript("PRAGMA incremental_vacuum;")
            finally:
                conn.in_use.release()

    def close(self) -> None:
        """Close every thread's connection, each once its thread is done with it.

        Calls made after this (from any thread) raise ``RuntimeError``.
        """
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        self.checkpointer.close()
        for conn in connections:
            # Waits for a statement another thread is running; the busy timeout bounds it.
            if not conn.in_use.acquire(timeout=self.busy_timeout + 5):
                log.warning("store: a connection still busy at close is left to its thread")
                continue
            try:
                with contextlib.suppress(sqlite3.Error):
                    conn.db.execute("PRAGMA optimize")
                conn.db.close()
            finally:
                conn.in_use.release()


def _run(db: sqlite3.Connection, work: Callable[[Tx], R]) -> R:
    # IMMEDIATE takes the write lock up front: a deferred transaction that upgrades later
    # can fail with SQLITE_BUSY without waiting for busy_timeout.
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(_SQLiteTx(db))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result
