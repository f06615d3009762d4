"""Recording in a child process, so that the worker's interpreter only serves.

A worker hands each finished exchange to its recording process over a socket pair, as one
frame holding a pickled tuple of plain values (about 2 µs; one ``send`` per event-loop
iteration, never a wait). The child does what the recorder thread does in process: metering
(usage, cost), quota settlement, metrics, batched store writes and the spool. It reports how
many exchanges it has stored or spooled; the worker keeps every frame not yet acknowledged and,
should the child die, starts another and sends them again. A resent exchange already stored
is ignored by the store (records are idempotent on ``id``); its quota settlement is not
repeated — the reservation stays charged, erring on the safe side as a cut stream does.

Why a process: recording costs about as much CPU as serving. In one interpreter the recorder
thread and the event loop take turns on the GIL, and every callback of the loop may wait up to
the GIL's switch interval (5 ms) behind a batch of record work — with hundreds of streams in
flight that delays chunks by tens of milliseconds. In its own process, at a lower scheduling
priority, recording never holds up the event loop, and on a machine with a core to spare it
runs beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from tailgate import garbage
from tailgate.dialects import Dialect, Operation
from tailgate.identity import Identity, IdentityKind, IdentitySource
from tailgate.ledger import BucketSpec
from tailgate.proxy import Exchange
from tailgate.quotas import Reservation
from tailgate.record import Outcome, Record
from tailgate.recorder import RecorderStats
from tailgate.routing import Route

if TYPE_CHECKING:
    from tailgate.config.model import Config
    from tailgate.metrics import Metrics
    from tailgate.runtime import Runtime

log = logging.getLogger("tailgate.recording")

_HEAD = struct.Struct(">IB")  # payload length, kind
_INIT, _EXCHANGE, _RESENT, _CONFIG, _FLUSH, _QUIT, _STATUS = b"IXRCFQS"
_STAT_FIELDS = ("written", "spooled", "replayed", "dropped", "errors")
_KEEP_GENERATIONS = 16
DEFAULT_NICE = 19
"""How much lower the recording process's CPU priority is than the worker's (``nice``): on a
CPU both need, a woken event loop runs at once instead of waiting out the child's time slice."""


def frame(kind: int, payload: bytes) -> bytes:
    return _HEAD.pack(len(payload), kind) + payload


def split_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Take every whole frame off the front of ``buffer``."""
    out: list[tuple[int, bytes]] = []
    start = 0
    end = len(buffer)
    while end - start >= _HEAD.size:
        size, kind = _HEAD.unpack_from(buffer, start)
        stop = start + _HEAD.size + size
        if stop > end:
            break
        out.append((kind, bytes(buffer[start + _HEAD.size : stop])))
        start = stop
    del buffer[:start]
    return out


# -- an exchange as plain values --------------------------------------------------------------


def pack(ex: Exchange) -> bytes:
    """What :func:`tailgate.metering.finalize` reads of ``ex``, as bytes (runs on the event loop)."""
    identity, route, reservation = ex.identity, ex.route, ex.reservation
    return pickle.dumps(
        (
            ex.runtime.generation,
            ex.id,
            ex.started_ns,
            ex.ts_ms,
            ex.method,
            ex.path,
            ex.query,
            ex.operation.value if ex.operation is not None else None,
            ex.dialect.value,
            ex.request_headers,
            ex.request_body,
            ex.user_agent,
            None
            if identity is None
            else (
                identity.principal,
                identity.kind.value,
                identity.source.value,
                identity.display_name,
                identity.node_id,
                identity.tags,
            ),
            None if route is None else (route.provider.id, route.model, route.requested),
            None
            if reservation is None
            else ([_spec_values(b) for b in reservation.buckets], reservation.amount),
            ex.stream,
            ex.injected_usage,
            ex.forwarded_body,
            ex.status,
            ex.outcome.value,
            ex.error,
            ex.response_headers,
            b"".join(ex.response_chunks),  # one chunk is passed on as is, not copied
            ex.first_byte_ns,
            ex.ended_ns,
            ex.gateway_ns,
        ),
        protocol=pickle.HIGHEST_PROTOCOL,
    )


# Enum members by value: a dictionary lookup, several times cheaper than calling the enum.
_OPERATIONS = {member.value: member for member in Operation}
_DIALECTS = {member.value: member for member in Dialect}
_OUTCOMES = {member.value: member for member in Outcome}
_KINDS = {member.value: member for member in IdentityKind}
_SOURCES = {member.value: member for member in IdentitySource}


def _spec_values(spec: BucketSpec) -> tuple[str, str, int, int, int]:
    return (spec.name, spec.quota, spec.capacity, spec.rate_amount, spec.rate_period)


# Most exchanges repeat a caller and a bucket set seen before; finding those frozen objects again
# costs less than building them.
@functools.lru_cache(maxsize=4096)
def _identity(who: tuple[Any, ...]) -> Identity:
    principal, kind, source, display_name, node_id, tags = who
    return Identity(
        principal=principal,
        kind=_KINDS[kind],
        source=_SOURCES[source],
        display_name=display_name,
        node_id=node_id,
        tags=tuple(tags),
    )


@functools.lru_cache(maxsize=4096)
def _specs(values: tuple[tuple[str, str, int, int, int], ...]) -> tuple[BucketSpec, ...]:
    return tuple(BucketSpec(*spec) for spec in values)


def unpack(data: bytes, runtime_of: Callable[[int], Runtime], *, settle: bool = True) -> Exchange:
    """The exchange :func:`pack` wrote, on ``runtime_of(generation)``; without its reservation
    when ``settle`` is false (a resent exchange whose settlement may already be stored)."""
    (
        generation,
        record_id,
        started_ns,
        ts_ms,
        method,
        path,
        query,
        operation,
        dialect,
        request_headers,
        request_body,
        user_agent,
        who,
        where,
        reserved,
        stream,
        injected_usage,
        forwarded_body,
        status,
        outcome,
        error,
        response_headers,
        response_body,
        first_byte_ns,
        ended_ns,
        gateway_ns,
    ) = pickle.loads(data)
    runtime = runtime_of(generation)
    identity = None if who is None else _identity(who)
    route = None
    if where is not None:
        provider = runtime.config.providers.get(where[0])
        if provider is not None:
            route = Route(provider, where[1], where[2])
    reservation = None
    if reserved is not None and settle:
        reservation = Reservation(_specs(tuple(reserved[0])), reserved[1])
    body = None
    if request_body:
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(request_body)
            body = parsed if isinstance(parsed, dict) else None
    return Exchange(
        id=record_id,
        started_ns=started_ns,
        ts_ms=ts_ms,
        runtime=runtime,
        method=method,
        path=path,
        query=query,
        operation=_OPERATIONS[operation] if operation is not None else None,
        dialect=_DIALECTS[dialect],
        request_headers=request_headers,
        request_body=request_body,
        user_agent=user_agent,
        body=body,
        identity=identity,
        route=route,
        reservation=reservation,
        stream=stream,
        injected_usage=injected_usage,
        forwarded_body=forwarded_body,
        status=status,
        outcome=_OUTCOMES[outcome],
        error=error,
        response_headers=response_headers,
        response_chunks=[response_body] if response_body else [],
        first_byte_ns=first_byte_ns,
        ended_ns=ended_ns,
        gateway_ns=gateway_ns,
    )


# -- the worker's side --------------------------------------------------------------------------


class RecordingProcess:
    """The worker's handle on its recording process: the recorder's interface, out of process.

    :meth:`submit` runs on the event loop; :meth:`flush` and :meth:`close` on any other thread.
    """

    buffer_limit = 200_000
    """Exchanges kept for a child that does not acknowledge them; beyond, the oldest are lost."""
    restart_delay = 0.5
    send_interval = 0.01
    """Seconds exchanges gather before they are sent to the child together."""
    high_water = 1_000
    """Exchanges the child may be behind before the worker gives it CPU time (back-pressure)."""

    def __init__(
        self,
        config: Config,
        *,
        database: str,
        data_dir: str,
        worker: int = 0,
        workers: int = 1,
        nice: int = DEFAULT_NICE,
    ) -> None:
        self.stats = RecorderStats()
        self._config = config
        self._generation = 1
        self._database = database
        self._data_dir = data_dir
        self._worker, self._workers = worker, workers
        self._nice = nice
        self._loop: asyncio.AbstractEventLoop | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._inbox = bytearray()
        self._outbox: list[bytes] = []
        self._pending_out = b""
        self._send_scheduled = False
        self._unacked: deque[bytes] = deque()
        self._first_seq = 0
        """The sequence number of ``_unacked[0]`` (exchanges are numbered from 0 in submit order)."""
        self._sent_upto = 0
        """Exchanges below this number went to a child (resent as such to the next one)."""
        self._child_base = 0
        """The sequence number of the current child's first exchange."""
        self._finished = RecorderStats()
        """What the children before the current one reported, summed."""
        self._last: dict[str, int] = {}
        self._cond = threading.Condition()
        self._flush_wanted = 0
        self._flushed = 0
        self._closing = False
        self._metrics: Metrics | None = None
        self._metrics_before: list[dict[str, Any]] = []
        self._metrics_now: dict[str, Any] = {}
        self.restarts = 0

    def attach_metrics(self, metrics: Metrics) -> None:
        """Keep ``metrics`` equal to what the recording processes have counted."""
        self._metrics = metrics

    # -- lifecycle (event loop) ------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn()

    def apply_config(self, config: Config, generation: int) -> None:
        self._config, self._generation = config, generation
        self._send_now(frame(_CONFIG, pickle.dumps((generation, config), protocol=pickle.HIGHEST_PROTOCOL)))

    def _spawn(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "tailgate.recording", str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        parent.setblocking(False)
        self._sock = parent
        self._inbox.clear()
        self._pending_out = b""
        self._outbox = []
        self._child_base = self._first_seq
        self._last = {}
        init = {
            "database": self._database,
            "data_dir": self._data_dir,
            "worker": self._worker,
            "workers": self._workers,
            "nice": self._nice,
            "log_level": logging.getLogger("tailgate").getEffectiveLevel(),
            "generation": self._generation,
            "config": self._config,
        }
        out = [frame(_INIT, pickle.dumps(init, protocol=pickle.HIGHEST_PROTOCOL))]
        resent = self._sent_upto - self._first_seq
        for index, item in enumerate(self._unacked):
            out.append(item if index >= resent else bytes((*item[:4], _RESENT)) + item[5:])
        self._sent_upto = self._first_seq + len(self._unacked)
        if self._flush_wanted > self._flushed:
            out.append(frame(_FLUSH, str(self._flush_wanted).encode()))
        loop = self._loop
        assert loop is not None
        loop.add_reader(parent.fileno(), self._readable)
        self._send_now(b"".join(out))

    def _lost(self) -> None:
        """The child closed its end: it exited (or crashed). Start another unless closing."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        loop = self._loop
        assert loop is not None
        loop.remove_reader(sock.fileno())
        loop.remove_writer(sock.fileno())
        sock.close()
        for name in _STAT_FIELDS:
            setattr(self._finished, name, getattr(self._finished, name) + self._last.get(name, 0))
        self._last = {}
        if self._metrics_now:
            self._metrics_before.append(self._metrics_now)
            self._metrics_now = {}
        child = self._child
        if child is not None and child.poll() is None:
            with contextlib.suppress(OSError):
                child.kill()
        if self._closing:
            return
        self.restarts += 1
        code = child.wait(5) if child is not None else None
        log.error(
            "the recording process stopped (exit %s); starting another, %d exchange(s) to resend",
            code,
            len(self._unacked),
        )
        loop.call_later(self.restart_delay, self._restart)

    def _restart(self) -> None:
        if not self._closing and self._sock is None:
            self._spawn()

    # -- the request path (event loop) -----------------------------------------------------

    def submit(self, ex: Exchange) -> None:
        """Hand ``ex`` to the recording process: O(1), never blocks, never raises."""
        try:
            item = frame(_EXCHANGE, pack(ex))
        except Exception:
            log.exception("could not hand record %s to the recording process; dropped", ex.id)
            self.stats.dropped += 1
            return
        self.stats.submitted += 1
        unacked = self._unacked
        unacked.append(item)
        if len(unacked) > self.buffer_limit:
            unacked.popleft()
            self._first_seq += 1
            self._sent_upto = max(self._sent_upto, self._first_seq)
            self.stats.dropped += 1
            log.error("the recording process is not keeping up; a record was lost")
        if self._sock is None:
            return  # sent when the next child starts
        self._sent_upto = self._first_seq + len(unacked)
        self._outbox.append(item)
        if not self._send_scheduled:
            # Exchanges leave together, at most every ``send_interval``: each send wakes the
            # child, and a wake-up per request would cost more than the hand-over itself.
            self._send_scheduled = True
            loop = self._loop
            assert loop is not None
            loop.call_later(self.send_interval, self._send)

    def _send_now(self, data: bytes) -> None:
        self._outbox.append(data)
        self._send()

    def _send(self) -> None:
        self._send_scheduled = False
        sock = self._sock
        if sock is None:
            self._outbox.clear()
            return
        behind = len(self._unacked) - self.high_water
        if behind > 0:
            # The child runs at a lower priority; when the worker keeps its CPU busy, the child
            # falls behind. Stepping aside (2 ms per 1,000 behind, at most 50 ms per send)
            # bounds the backlog, and the memory it holds, at the cost of serving slower until
            # the child catches up.
            time.sleep(min(2 * behind / self.high_water, 50.0) / 1000)
        if self._outbox:
            self._pending_out += b"".join(self._outbox)
            self._outbox.clear()
        data = self._pending_out
        if not data:
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost()
            return
        self._pending_out = data[sent:]
        loop = self._loop
        assert loop is not None
        if self._pending_out:
            loop.add_writer(sock.fileno(), self._send)
        else:
            loop.remove_writer(sock.fileno())

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        self._inbox += data
        for kind, payload in split_frames(self._inbox):
            if kind == _STATUS:
                self._on_status(orjson.loads(payload))

    def _on_status(self, status: dict[str, Any]) -> None:
        handled = int(status["handled"])
        acked = self._child_base + handled
        unacked = self._unacked
        while self._first_seq < acked and unacked:
            unacked.popleft()
            self._first_seq += 1
        counts: dict[str, int] = status["stats"]
        self._last = counts
        for name in _STAT_FIELDS:
            setattr(self.stats, name, getattr(self._finished, name) + counts.get(name, 0))
        snapshot = status.get("metrics")
        if snapshot is not None:
            self._metrics_now = snapshot
            if self._metrics is not None:
                self._metrics.replace(*self._metrics_before, snapshot)
        flushed = int(status.get("flushed", 0))
        if flushed > self._flushed:
            with self._cond:
                self._flushed = flushed
                self._cond.notify_all()

    # -- waiting (any thread but the event loop's) ------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is stored (or spooled); ``False`` on timeout."""
        loop = self._loop
        if loop is None:
            return self.stats.submitted == 0
        with self._cond:
            self._flush_wanted += 1
            token = self._flush_wanted
        loop.call_soon_threadsafe(self._request_flush, token)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._flushed < token:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _request_flush(self, token: int) -> None:
        if self._sock is not None:
            self._send_now(frame(_FLUSH, str(token).encode()))

    def close(self, timeout: float) -> None:
        """Store what is pending, then stop the recording process."""
        deadline = time.monotonic() + timeout
        if not self.flush(timeout):
            log.error("the recording process did not store every record in time")
        loop, child = self._loop, self._child
        if loop is None or child is None:
            return
        stopped = threading.Event()

        def quit_child() -> None:
            self._closing = True
            if self._sock is not None:
                self._send_now(frame(_QUIT, b""))
            stopped.set()

        loop.call_soon_threadsafe(quit_child)
        stopped.wait(max(deadline - time.monotonic(), 0.1))
        try:
            child.wait(max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            log.error("the recording process did not stop in time; killed")
            child.kill()
            child.wait(5)
        if self._unacked:
            log.error("%d record(s) were not acknowledged by the recording process", len(self._unacked))


# -- the child's side ---------------------------------------------------------------------------


class _Reporter:
    """The child's only writer to the socket: a status after each change, at most every 50 ms."""

    interval = 0.05

    def __init__(self, sock: socket.socket, handled: Callable[[], int], stats: Callable[[], dict[str, int]]):
        self._sock = sock
        self._handled = handled
        self._stats = stats
        self._metrics: Metrics | None = None
        self._flushed = 0
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="tailgate-recording-status", daemon=True)

    def start(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._thread.start()

    def flushed(self, token: int) -> None:
        self._flushed = max(self._flushed, token)
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(5)
        self._report()

    def _run(self) -> None:
        last: tuple[int, int] = (-1, -1)
        while not self._stop:
            self._wake.wait(self.interval)
            self._wake.clear()
            now = (self._handled(), self._flushed)
            if now != last:
                last = now
                if not self._report():
                    return

    def _report(self) -> bool:
        status: dict[str, Any] = {"handled": self._handled(), "stats": self._stats()}
        status["flushed"] = self._flushed
        if self._metrics is not None:
            status["metrics"] = self._metrics.snapshot()
        try:
            self._sock.sendall(frame(_STATUS, orjson.dumps(status)))
        except OSError:
            return False
        return True


def serve_child(sock: socket.socket) -> None:
    """The recording process: read frames from the worker until it says quit or goes away."""
    from tailgate.ledger import QuotaLedger
    from tailgate.metering import finalize
    from tailgate.metrics import Metrics, observed
    from tailgate.recorder import Recorder, worker_recorder
    from tailgate.runtime import build_runtime
    from tailgate.store import open_store

    reader = sock.makefile("rb", buffering=1 << 20)
    head = reader.read(_HEAD.size)
    if len(head) < _HEAD.size:
        return
    size, kind = _HEAD.unpack(head)
    if kind != _INIT:
        raise RuntimeError("the recording process expects its settings first")
    init = pickle.loads(reader.read(size))
    logging.basicConfig(level=init["log_level"], format="%(levelname)s %(name)s (recording): %(message)s")
    with contextlib.suppress(OSError):
        os.nice(int(init["nice"]))
    config: Config = init["config"]
    store = open_store(init["database"])
    ledger = QuotaLedger(store)
    runtimes: dict[int, Runtime] = {init["generation"]: build_runtime(config, ledger, init["generation"])}
    newest = init["generation"]

    def runtime_of(generation: int) -> Runtime:
        return runtimes.get(generation) or runtimes[newest]

    metrics = Metrics()
    counted = observed(finalize, metrics)

    def prepare(ex: Exchange | None) -> Record:
        if ex is None:
            raise ValueError("an unreadable exchange")
        return counted(ex)

    os.makedirs(init["data_dir"], exist_ok=True)
    recorder: Recorder[Exchange | None] = worker_recorder(
        store,
        prepare,
        ledger,
        data_dir=init["data_dir"],
        worker=init["worker"],
        workers=init["workers"],
        retention=config.database.retention,
    )

    def counts() -> dict[str, int]:
        stats = recorder.stats
        return {name: getattr(stats, name) for name in _STAT_FIELDS}

    reporter = _Reporter(sock, lambda: recorder.handled, counts)
    recorder.start()
    reporter.start(metrics)
    garbage.settle()
    try:
        while True:
            head = reader.read(_HEAD.size)
            if len(head) < _HEAD.size:
                break  # the worker went away: store what is pending and stop
            size, kind = _HEAD.unpack(head)
            payload = reader.read(size)
            if len(payload) < size:
                break
            if kind in (_EXCHANGE, _RESENT):
                try:
                    recorder.submit(unpack(payload, runtime_of, settle=kind == _EXCHANGE))
                except Exception:
                    log.exception("could not read an exchange from the worker; counted as dropped")
                    recorder.submit(None)  # keeps the acknowledged count in step
            elif kind == _CONFIG:
                generation, config = pickle.loads(payload)
                runtimes[generation] = build_runtime(config, ledger, generation)
                newest = max(newest, generation)
                for old in sorted(runtimes)[:-_KEEP_GENERATIONS]:
                    del runtimes[old]
                recorder.apply_config(config, generation)
            elif kind == _FLUSH:
                if recorder.flush(30.0) and ledger.flush(ledger.stall_timeout):
                    reporter.flushed(int(payload))
            elif kind == _QUIT:
                break
    finally:
        recorder.close(30.0)
        ledger.close()
        reporter.stop()
        store.close()


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    sock.setblocking(True)
    try:
        serve_child(sock)
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
