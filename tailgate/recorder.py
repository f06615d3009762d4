"""Records leave the request path here: handed over in O(1), written to the store in batches.

The request path calls :meth:`Recorder.submit` and moves on. A writer thread turns items into
records (``prepare``), and stores them in batches. When the store is slow the items wait in a
bounded buffer; when the buffer overflows or a write fails, batches go to a local spool file
that is replayed once the store answers again (and at start-up, after a crash or an outage
that outlived the process). Each worker process has its own spool; a worker also replays the
spools of workers that a restart with fewer workers left behind (:func:`spool_paths`). Nothing
is lost short of the disk failing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Generic, TypeVar

import orjson

from tailgate.config.model import Config, Retention
from tailgate.record import Record
from tailgate.store.base import Store
from tailgate.store.serialize import json_record, record_json

if TYPE_CHECKING:
    from tailgate.ledger import QuotaLedger

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
T = TypeVar("T")

_HEADER = struct.Struct(">II")  # payload length, crc32 of the payload
_MAX_FRAME = 1 << 30
_WORKER_SPOOL = re.compile(r"spool-([0-9]+)\.bin(?:\.replaying)?")


def spool_name(worker: int) -> str:
    """The file name of worker ``worker``'s spool: ``spool.bin``, ``spool-1.bin``, …"""
    return "spool.bin" if worker == 0 else f"spool-{worker}.bin"


def spool_paths(directory: str, worker: int, workers: int) -> tuple[str, list[str]]:
    """Worker ``worker``'s own spool in ``directory``, and the spools it adopts.

    A spool left by worker ``j >= workers`` (the gateway ran with more workers before) is
    adopted by worker ``j % workers``, so each has one adopter.
    """
    adopted = set()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            match = _WORKER_SPOOL.fullmatch(name)
            if match and (j := int(match.group(1))) >= workers and j % workers == worker:
                adopted.add(j)
    own = os.path.join(directory, spool_name(worker))
    return own, [os.path.join(directory, spool_name(j)) for j in sorted(adopted)]


def worker_recorder(
    store: Store,
    prepare: Callable[[T], Record],
    ledger: QuotaLedger,
    *,
    data_dir: str,
    worker: int,
    workers: int,
    retention: Retention | None,
) -> Recorder[T]:
    """The recorder of worker ``worker``: its own spool (adopting those a larger worker count left
    behind), and the quota settlements that preparing a batch queued stored before its records."""
    spool, adopted = spool_paths(data_dir, worker, workers)
    return Recorder(
        store,
        prepare,
        spool_path=spool,
        adopt=adopted,
        retention=retention,
        before_write=lambda: ledger.flush(ledger.stall_timeout),
    )


@dataclass(slots=True)
class RecorderStats:
    submitted: int = 0
    written: int = 0
    """Records stored straight from the buffer."""
    spooled: int = 0
    """Records written to the spool file."""
    replayed: int = 0
    """Records stored from the spool file."""
    dropped: int = 0
    """Items lost: the spool could not be written, ``prepare`` failed, or submitted after close."""
    errors: int = 0
    """Failed store writes, replays, prepares and spool writes."""


class Spool:
    """An append-only file of record batches: frames of (u32 length, u32 crc32, orjson payload).

    Replaying renames the file to ``<path>.replaying`` (new batches go to a fresh file), stores
    its batches and deletes it only once all were stored; an interrupted replay is repeated
    whole, which is harmless because the store ignores ids it already has.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.replaying_path = path + ".replaying"
        self._lock = threading.Lock()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock_file: IO[bytes] | None = open(path + ".lock", "ab")  # noqa: SIM115
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._lock_file.close()
                raise RuntimeError(f"spool {path} is in use by another process") from None
        for p in (self.replaying_path, path):
            _drop_torn_tail(p)
        self._unreplayed = _size(path)

    @property
    def pending(self) -> bool:
        """Whether some spooled batch has not been stored yet."""
        with self._lock:
            return self._unreplayed > 0 or os.path.exists(self.replaying_path)

    def append(self, records: list[Record]) -> None:
        payload = orjson.dumps([record_json(r) for r in records])
        frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock, open(self.path, "ab") as f:
            f.write(frame)
            f.flush()
            os.fsync(f.fileno())
            self._unreplayed += len(frame)

    def replay(self, store: Callable[[list[Record]], object], chunk: int) -> int:
        """Store every spooled record, ``chunk`` at a time; return how many. Raises if the store fails."""
        count = 0
        while True:
            with self._lock:
                if not os.path.exists(self.replaying_path):
                    if self._unreplayed == 0:
                        return count
                    os.replace(self.path, self.replaying_path)
                    self._unreplayed = 0
            batch: list[Record] = []
            for records in _read_frames(self.replaying_path):
                batch.extend(records)
                if len(batch) >= chunk:
                    store(batch)
                    count += len(batch)
                    batch = []
            if batch:
                store(batch)
                count += len(batch)
            with self._lock:
                os.remove(self.replaying_path)

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _frames(f: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(end offset, payload) of each whole, intact frame, stopping at the first bad one."""
    while True:
        header = f.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        size, crc = _HEADER.unpack(header)
        if size > _MAX_FRAME:
            return
        payload = f.read(size)
        if len(payload) < size or zlib.crc32(payload) != crc:
            return
        yield f.tell(), payload


def _read_frames(path: str) -> Iterator[list[Record]]:
    with open(path, "rb") as f:
        for _, payload in _frames(f):
            yield [json_record(doc) for doc in orjson.loads(payload)]


def _drop_torn_tail(path: str) -> None:
    # A crash in the middle of an append leaves a partial frame; cut it off before appending
    # more, or every later frame would sit behind it, unreadable.
    if not os.path.exists(path):
        return
    with open(path, "r+b") as f:
        good = 0
        for end, _ in _frames(f):
            good = end
        total = f.seek(0, os.SEEK_END)
        if good < total:
            log.error("spool %s: discarding %d bytes of a torn or corrupt batch", path, total - good)
            f.truncate(good)


class Recorder(Generic[T]):
    """Hands items from the request path to the store without ever waiting on it.

    ``prepare`` runs off the request path, on the writer thread (and on the overflow thread
    when the buffer is full), so it must be thread-safe. Each process needs its own spool path.
    """

    def __init__(
        self,
        store: Store,
        prepare: Callable[[T], Record],
        *,
        spool_path: str,
        adopt: Sequence[str] = (),
        batch_size: int = 500,
        flush_interval: float = 0.05,
        buffer_limit: int = 50_000,
        retention: Retention | None = None,
        purge_interval: float = 600.0,
        max_backoff: float = 5.0,
        before_write: Callable[[], object] | None = None,
    ) -> None:
        self.store = store
        self.prepare = prepare
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.buffer_limit = buffer_limit
        self.retention = retention
        self.purge_interval = purge_interval
        self.max_backoff = max_backoff
        self.before_write = before_write
        """Called on the writer thread after a batch is prepared and before it is stored (the
        gateway flushes the quota settlements that preparing the batch queued)."""
        self.stats = RecorderStats()
        self._spool = Spool(spool_path)
        self._adopted = list(adopt)
        """Other processes' spools still to replay; each is locked only while it is replayed."""
        self._queue: deque[T] = deque()
        self._wake = threading.Event()
        self._overflow = threading.Event()
        self._settled = threading.Condition()
        self._handled = 0
        self._stats_lock = threading.Lock()
        self._up = True
        self._closing = False
        self._closed = False
        self._next_purge = 0.0
        self._threads: list[threading.Thread] = []

    def apply_config(self, config: Config, generation: int) -> None:
        """A new configuration: only its retention concerns the recorder."""
        self.retention = config.database.retention

    # -- the request path ---------------------------------------------------------------

    def submit(self, item: T) -> None:
        """Queue ``item`` for storage: O(1), never blocks, never raises."""
        try:
            if self._closed:
                self.stats.dropped += 1
                log.error("record submitted after the recorder was closed; dropped")
                return
            self._queue.append(item)
            self.stats.submitted += 1
            pending = len(self._queue)
            if pending >= self.batch_size and not self._wake.is_set():
                self._wake.set()
            if pending > self.buffer_limit and not self._overflow.is_set():
                self._overflow.set()
        except Exception:  # pragma: no cover - defensive: the request path must not fail here
            log.exception("recorder.submit failed")

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        for name, target in (("tailgate-recorder", self._write_loop), ("tailgate-spill", self._spill_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def handled(self) -> int:
        """Items stored, spooled or dropped so far: always a prefix of the submitted ones."""
        return self._handled

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far, and every spool, is in the store; ``False`` on timeout."""
        target = self.stats.submitted
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._settled:
            while self._handled < target or self._spooled:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._settled.wait(min(remaining, self.flush_interval))
        return True

    def close(self, timeout: float) -> None:
        """Store what is pending (or spool it if the store is down), then stop the threads."""
        deadline = time.monotonic() + timeout
        self._closing = True
        self._wake.set()
        self._overflow.set()
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))
        self._closed = True
        if any(t.is_alive() for t in self._threads):
            log.error("recorder: the store did not answer in time; spooling what is left")
            # The stuck thread spools its own batch if its write ever fails.
        self._drain_to_spool()
        self._spool.close()

    # -- the writer thread ------------------------------------------------------------------

    def _write_loop(self) -> None:
        backoff = self._min_backoff
        next_probe = 0.0
        while True:
            now = time.monotonic()
            if (not self._up or self._spooled) and now >= next_probe and not self._closing:
                try:
                    self._replay()
                    self._up, backoff = True, self._min_backoff
                except Exception as e:
                    self._count(errors=1)
                    log.warning("store still unavailable (%s); next try in %.1fs", _describe(e), backoff)
                    self._up, next_probe = False, now + backoff
                    backoff = min(backoff * 2, self.max_backoff)
            batch = self._take(self.batch_size)
            if not batch:
                if self._closing:
                    return
                idle = self._up and not self._spooled and self._purge_step()
                if not idle:
                    wait = self.flush_interval if self._up else min(self.flush_interval, next_probe - now)
                    self._wake.wait(max(wait, 0.001))
                    self._wake.clear()
                continue
            records = self._prepare_all(batch)
            if self.before_write is not None:
                try:
                    self.before_write()
                except Exception:
                    log.exception("before-write hook failed")
            if self._up:
                try:
                    self.store.insert_records(records)
                    self._count(written=len(records))
                except Exception as e:
                    self._count(errors=1)
                    log.warning("store write failed (%s); spooling %d records", _describe(e), len(records))
                    self._up, next_probe = False, time.monotonic() + backoff
                    backoff = min(backoff * 2, self.max_backoff)
                    self._to_spool(records)
            else:
                self._to_spool(records)
            self._settle(len(batch))

    @property
    def _min_backoff(self) -> float:
        return min(0.1, self.max_backoff)

    @property
    def _spooled(self) -> bool:
        """Whether a spool (this process's or an adopted one) may hold records not yet stored."""
        return bool(self._adopted) or self._spool.pending

    def _replay(self) -> None:
        def store(records: list[Record]) -> None:
            self.store.insert_records(records)
            self._count(replayed=len(records))

        if self._spool.pending:
            replayed = self._spool.replay(store, self.batch_size)
            log.info("replayed %d spooled records into the store", replayed)
        while self._adopted:
            path = self._adopted[0]
            try:
                spool = Spool(path)
            except RuntimeError:
                # Its worker runs again, or another process adopted it: theirs to replay.
                log.info("spool %s is in use by another process; leaving it to that process", path)
            else:
                try:
                    replayed = spool.replay(store, self.batch_size)
                finally:
                    spool.close()
                log.info(
                    "replayed %d records from %s, the spool of a worker that no longer runs", replayed, path
                )
            self._adopted.pop(0)
        with self._settled:
            self._settled.notify_all()

    def _purge_step(self) -> bool:
        """Run one purge batch when one is due; ``True`` if it did some work."""
        retention = self.retention
        if retention is None or retention.duration is None or time.monotonic() < self._next_purge:
            return False
        try:
            if self.store.purge(retention, time.time_ns() // 1_000_000):
                return True
        except Exception as e:
            log.warning("capture purge failed: %s", _describe(e))
        self._next_purge = time.monotonic() + self.purge_interval
        return False

    # -- the overflow thread --------------------------------------------------------------

    def _spill_loop(self) -> None:
        while not self._closing:
            self._overflow.wait(0.25)
            self._overflow.clear()
            while len(self._queue) > self.buffer_limit and not self._closing:
                excess = len(self._queue) - self.buffer_limit * 3 // 4
                batch = self._take(min(excess, self.batch_size))
                if not batch:
                    break
                self._to_spool(self._prepare_all(batch))
                self._settle(len(batch))

    # -- shared steps -------------------------------------------------------------------------

    def _take(self, n: int) -> list[T]:
        batch: list[T] = []
        with contextlib.suppress(IndexError):
            for _ in range(n):
                batch.append(self._queue.popleft())
        return batch

    def _prepare_all(self, batch: list[T]) -> list[Record]:
        records = []
        for item in batch:
            try:
                record = self.prepare(item)
            except Exception:
                self._count(errors=1, dropped=1)
                log.exception("recorder: prepare failed; the record is lost")
                continue
            if self.retention is not None and self.retention.duration == 0:
                record.capture = None  # zero retention: bodies never reach the disk
            records.append(record)
        return records

    def _to_spool(self, records: list[Record]) -> None:
        if not records:
            return
        try:
            self._spool.append(records)
            self._count(spooled=len(records))
        except Exception:
            self._count(errors=1, dropped=len(records))
            log.critical(
                "recorder: cannot write the spool %s; %d records LOST", self._spool.path, len(records)
            )

    def _drain_to_spool(self) -> None:
        while batch := self._take(self.batch_size):
            self._to_spool(self._prepare_all(batch))
            self._settle(len(batch))

    def _settle(self, n: int) -> None:
        with self._settled:
            self._handled += n
            self._settled.notify_all()

    def _count(
        self, *, written: int = 0, spooled: int = 0, replayed: int = 0, dropped: int = 0, errors: int = 0
    ) -> None:
        with self._stats_lock:
            s = self.stats
            s.written += written
            s.spooled += spooled
            s.replayed += replayed
            s.dropped += dropped
            s.errors += errors


def _describe(e: BaseException) -> str:
    # Driver messages can be long and multi-line; the first line says enough for a warning.
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
