"""WAL checkpoints from a thread of their own, so that SQLite writers never wait for one.

A checkpoint copies the pages committed to the write-ahead log back into the database file and
syncs both: ~100-150 ms for 32 MB of WAL on the benchmark machine. Left to SQLite
(``wal_autocheckpoint``), it runs inside the ``COMMIT`` of whichever writer crossed the
threshold, holding up that writer and, through the in-process write lock, every other one.
Here a thread runs it instead (``PASSIVE``: it never blocks readers or writers), woken after
each commit, when the log holds enough uncopied frames. Writers keep a larger
``wal_autocheckpoint`` as a backstop, in case this thread falls behind or cannot run.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import struct
import threading
import time

log = logging.getLogger(__name__)

# The wal-index header (https://www.sqlite.org/walformat.html, fixed so that processes running
# different SQLite versions can share a database): mxFrame, the frames in the log, at byte 16,
# and nBackfill, the frames already copied into the database, at byte 96; native byte order.
_SHM_VERSION = 3007000
_SHM_HEADER = struct.Struct("=I12xI76xI")  # iVersion, mxFrame, nBackfill
# Between two looks at the WAL: commits come in hundreds a second (quota transactions), and a
# look costs a wake-up and a file read; at 20 000 records/s the WAL grows ~3 300 frames in this.
_MIN_INTERVAL = 0.05


class Checkpointer:
    """Checkpoints the database at ``path`` whenever ``frames`` or more frames wait in its WAL."""

    def __init__(self, path: str, frames: int, busy_timeout: float) -> None:
        self.path = path
        self.frames = frames
        self.busy_timeout = busy_timeout
        self.checkpoints = 0
        """Checkpoints run (for tests and the benchmark)."""
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def committed(self) -> None:
        """Tell the checkpointer a write transaction committed: O(1), never blocks."""
        thread = self._thread
        if thread is None or not thread.is_alive():  # not started yet, or gone in a forked child
            self._start()
        self._wake.set()

    def _start(self) -> None:
        with self._lock:
            thread = self._thread
            if (thread is None or not thread.is_alive()) and not self._stopping:
                self._thread = threading.Thread(target=self._run, name="tailgate-checkpoint", daemon=True)
                self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (a checkpoint under way finishes first)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout)

    def pending(self) -> int | None:
        """Frames in the WAL not yet copied into the database; ``None`` if that cannot be read."""
        try:
            with open(self.path + "-shm", "rb") as f:
                header = f.read(_SHM_HEADER.size)
        except OSError:
            return None
        if len(header) < _SHM_HEADER.size:
            return None
        version, frames, copied = _SHM_HEADER.unpack(header)
        return frames - copied if version == _SHM_VERSION else None

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        except sqlite3.Error as e:
            log.warning("WAL checkpointer cannot open %s (%s); writers checkpoint instead", self.path, e)
            return
        try:
            while True:
                self._wake.wait()
                if not self._stopping:
                    time.sleep(_MIN_INTERVAL)
                self._wake.clear()
                if self._stopping:  # after clear(): the close() that set both is never missed
                    return
                pending = self.pending()
                # Unreadable (another format): leave it to the writers' backstop.
                if pending is None or pending < self.frames:
                    continue
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as e:
                    log.warning("WAL checkpoint failed: %s", e)
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.close()
