"""``GET /metrics``: requests, errors, tokens, cost, latencies and the gateway's own overhead.

Counters are plain ints in dicts and histograms are pre-bucketed arrays. Nothing is counted on
the event loop: :meth:`Metrics.observe` runs once per request in the recorder's thread, with the
exchange the request path handed over and the record it became (usage and cost included), so a
request pays nothing for being measured. The recorder may prepare records on two threads (the
writer and, when its buffer overflows, the spill thread), so observing takes a lock; the loop
takes it only to copy the figures when ``/metrics`` is scraped.

The text follows the Prometheus exposition format 0.0.4. Labels carry only configured names
(provider ids and model ids of resolved routes, statuses, outcomes), never caller input, so the
number of series stays bounded by the configuration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from tailgate import __version__
from tailgate.errors import AccessDenied
from tailgate.http.messages import Request, Response
from tailgate.record import Outcome, Record
from tailgate.recording import RecordingProcess

if TYPE_CHECKING:
    from tailgate.app import Gateway
    from tailgate.proxy import Exchange
    from tailgate.router import Router

log = logging.getLogger("tailgate.metrics")

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
DENIED = "access denied: /metrics needs a grant with read_metrics"

_US = 1_000
_MS = 1_000_000
_S = 1_000_000_000
OVERHEAD_BOUNDS_NS: tuple[int, ...] = (
    *(n * _US for n in (25, 50, 100, 150, 200, 300, 500, 750)),
    *(n * _MS for n in (1, 2, 5, 10, 25, 50, 100, 250)),
    _S,
)
LATENCY_BOUNDS_NS: tuple[int, ...] = (
    *(n * _MS for n in (5, 10, 25, 50, 100, 250, 500)),
    *(n * _S for n in (1, 2, 5, 10, 30, 60, 120, 300, 600)),
)
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")

ProviderModel = tuple[str, str]
Labels = tuple[str, ...]


class Histogram:
    """Observations in nanoseconds counted into fixed buckets (``le`` = less than or equal)."""

    __slots__ = ("bounds", "counts", "sum_ns")

    def __init__(self, bounds: tuple[int, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum_ns = 0

    def observe(self, ns: int) -> None:
        self.counts[bisect_left(self.bounds, ns)] += 1
        self.sum_ns += ns

    def copy(self) -> Histogram:
        twin = Histogram(self.bounds)
        twin.counts = list(self.counts)
        twin.sum_ns = self.sum_ns
        return twin


class Metrics:
    """The gateway's counters and histograms, and their text rendering."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[Labels, int] = {}
        """(provider, model, status, outcome) → requests."""
        self.errors: dict[Labels, int] = {}
        """(provider, model, outcome) → requests whose outcome was not ``ok``."""
        self.tokens: dict[Labels, int] = {}
        """(provider, model, kind) → tokens."""
        self.cost_nd: dict[Labels, int] = {}
        self.unpriced: dict[Labels, int] = {}
        self.upstream: dict[ProviderModel, Histogram] = {}
        self.first_byte: dict[ProviderModel, Histogram] = {}
        self.overhead = Histogram(OVERHEAD_BOUNDS_NS)

    def observe(self, ex: Exchange, record: Record) -> None:
        """Count one finished request (called once per request, off the event loop)."""
        route = ex.route
        key: ProviderModel = (route.provider.id, route.model) if route is not None else ("", "")
        provider, model = key
        usage = record.usage
        with self._lock:
            _add(self.requests, (provider, model, str(record.status), str(record.outcome)), 1)
            if record.outcome is not Outcome.OK:
                _add(self.errors, (provider, model, str(record.outcome)), 1)
            if usage is not None:
                counts = (
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cache_read_tokens,
                    usage.cache_write_tokens,
                    usage.reasoning_tokens,
                )
                for kind, count in zip(TOKEN_KINDS, counts, strict=True):
                    if count:
                        _add(self.tokens, (provider, model, kind), count)
                if record.cost_nd is None:
                    _add(self.unpriced, key, 1)
                else:
                    _add(self.cost_nd, key, record.cost_nd)
            if ex.gateway_ns > 0:  # the request was handed to a provider
                self.overhead.observe(ex.gateway_ns)
                if ex.ended_ns:
                    _histogram(self.upstream, key, LATENCY_BOUNDS_NS).observe(
                        ex.ended_ns - ex.started_ns - ex.gateway_ns
                    )
                if ex.first_byte_ns:
                    _histogram(self.first_byte, key, LATENCY_BOUNDS_NS).observe(
                        ex.first_byte_ns - ex.started_ns
                    )

    _COUNTERS = ("requests", "errors", "tokens", "cost_nd", "unpriced")
    _HISTOGRAMS = ("upstream", "first_byte")

    def snapshot(self) -> dict[str, Any]:
        """Every figure as plain JSON data, for another worker to add to its own."""
        with self._lock:
            out: dict[str, Any] = {
                name: [[list(k), v] for k, v in getattr(self, name).items()] for name in self._COUNTERS
            }
            for name in self._HISTOGRAMS:
                out[name] = [[list(k), h.counts, h.sum_ns] for k, h in getattr(self, name).items()]
            out["overhead"] = [self.overhead.counts, self.overhead.sum_ns]
        return out

    def absorb(self, snapshot: Mapping[str, Any]) -> None:
        """Add the figures of another worker's :meth:`snapshot` to these."""
        with self._lock:
            self._absorb(snapshot)

    def replace(self, *snapshots: Mapping[str, Any]) -> None:
        """Make these figures the sum of ``snapshots`` (a recording process's, and its predecessors')."""
        with self._lock:
            for name in (*self._COUNTERS, *self._HISTOGRAMS):
                getattr(self, name).clear()
            self.overhead = Histogram(OVERHEAD_BOUNDS_NS)
            for snapshot in snapshots:
                self._absorb(snapshot)

    def _absorb(self, snapshot: Mapping[str, Any]) -> None:
        for name in self._COUNTERS:
            target = getattr(self, name)
            for key, value in snapshot.get(name, ()):
                _add(target, tuple(key), int(value))
        for name in self._HISTOGRAMS:
            for key, counts, total in snapshot.get(name, ()):
                _merge(_histogram(getattr(self, name), tuple(key), LATENCY_BOUNDS_NS), counts, total)
        overhead = snapshot.get("overhead")
        if overhead:
            _merge(self.overhead, overhead[0], overhead[1])

    def render(self, gauges: Iterable[tuple[str, str, str, float | int]] = ()) -> bytes:
        """The exposition text; ``gauges`` adds (name, type, help, value) lines without labels."""
        with self._lock:
            requests = dict(self.requests)
            errors = dict(self.errors)
            tokens = dict(self.tokens)
            cost = dict(self.cost_nd)
            unpriced = dict(self.unpriced)
            upstream = {k: h.copy() for k, h in self.upstream.items()}
            first_byte = {k: h.copy() for k, h in self.first_byte.items()}
            overhead = self.overhead.copy()
        out: list[str] = []
        _counter(
            out,
            "tailgate_requests_total",
            "Inference requests by provider, model, HTTP status and outcome.",
            ("provider", "model", "status", "outcome"),
            requests,
        )
        _counter(
            out,
            "tailgate_errors_total",
            "Inference requests that did not end ok, by outcome.",
            ("provider", "model", "outcome"),
            errors,
        )
        _counter(
            out,
            "tailgate_tokens_total",
            "Tokens by kind (input includes cached input; output includes reasoning).",
            ("provider", "model", "kind"),
            tokens,
        )
        _counter(
            out,
            "tailgate_cost_nanodollars_total",
            "Cost of priced requests, in nanodollars.",
            ("provider", "model"),
            cost,
        )
        _counter(
            out,
            "tailgate_unpriced_requests_total",
            "Requests with usage but no known price.",
            ("provider", "model"),
            unpriced,
        )
        _histograms(
            out,
            "tailgate_upstream_latency_seconds",
            "From asking the provider to the end of its answer.",
            upstream,
        )
        _histograms(
            out,
            "tailgate_time_to_first_byte_seconds",
            "From the request's arrival to the first answer byte sent to the client.",
            first_byte,
        )
        _histograms(
            out,
            "tailgate_gateway_overhead_seconds",
            "Time the gateway spent on a request before asking the provider.",
            {("", ""): overhead},
            labelled=False,
        )
        for name, kind, help_text, value in gauges:
            _family(out, name, kind, help_text)
            out.append(f"{name} {value}\n")
        return "".join(out).encode()


def register_metrics(gateway: Gateway, router: Router) -> Metrics:
    """Count every request the gateway records and serve ``GET /metrics`` (``read_metrics`` only)."""
    metrics = Metrics()
    recorder = gateway.recorder
    if isinstance(recorder, RecordingProcess):
        recorder.attach_metrics(metrics)  # the recording process counts; its figures come back
    else:
        recorder.prepare = observed(recorder.prepare, metrics)

    share: WorkerShare | None = None
    if gateway.workers > 1:
        share = WorkerShare(gateway.data_dir / "metrics", gateway.worker, gateway.workers)
        share.start(metrics)

    async def serve(request: Request) -> Response:
        identity = await gateway.identify(request)
        if not gateway.runtime.grants.read_metrics(identity):
            raise AccessDenied(DENIED)
        figures = metrics if share is None else await asyncio.to_thread(share.combined, metrics)
        return Response(200, figures.render(_gateway_gauges(gateway)), content_type=CONTENT_TYPE)

    router.add("GET", "/metrics", serve)
    return metrics


def observed(prepare: Callable[[Exchange], Record], metrics: Metrics) -> Callable[[Exchange], Record]:
    """``prepare`` that also counts each request in ``metrics``."""

    def counted(ex: Exchange) -> Record:
        record = prepare(ex)
        try:
            metrics.observe(ex, record)
        except Exception:  # a metrics bug must never cost a record
            log.exception("could not count request %s in the metrics", record.id)
        return record

    return counted


def _merge(histogram: Histogram, counts: Iterable[int], total: int) -> None:
    counts = list(counts)
    if len(counts) != len(histogram.counts):
        return  # written by a version with other buckets
    histogram.counts = [a + int(b) for a, b in zip(histogram.counts, counts, strict=True)]
    histogram.sum_ns += int(total)


class WorkerShare:
    """Makes ``/metrics`` on any worker count the requests of every worker of the gateway.

    Each worker writes its figures to ``<data dir>/metrics/worker-<n>.json`` every second; a
    scrape adds the other workers' latest files to the answering worker's own figures. A file
    older than ``stale`` seconds (a worker that stopped) is left out.
    """

    def __init__(
        self, directory: Path, worker: int, workers: int, *, interval: float = 1.0, stale: float = 60.0
    ) -> None:
        self.directory = directory
        self.worker = worker
        self.workers = workers
        self.interval = interval
        self.stale = stale
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, worker: int) -> Path:
        return self.directory / f"worker-{worker}.json"

    def publish(self, metrics: Metrics) -> None:
        """Write this worker's figures (atomically: a reader sees the old file or the new one)."""
        path = self._path(self.worker)
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(orjson.dumps(metrics.snapshot()))
        os.replace(temporary, path)

    def combined(self, metrics: Metrics) -> Metrics:
        """This worker's figures plus every other live worker's last published ones."""
        total = Metrics()
        total.absorb(metrics.snapshot())
        now = time.time()
        for other in range(self.workers):
            if other == self.worker:
                continue
            path = self._path(other)
            try:
                if now - path.stat().st_mtime > self.stale:
                    continue
                total.absorb(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError):
                continue
        return total

    def start(self, metrics: Metrics) -> None:
        """Publish every ``interval`` seconds, in a thread (never on the event loop)."""

        def loop() -> None:
            while True:
                time.sleep(self.interval)
                try:
                    self.publish(metrics)
                except OSError as exc:
                    log.warning("could not publish this worker's metrics: %s", exc)

        threading.Thread(target=loop, name="tailgate-metrics", daemon=True).start()


def _gateway_gauges(gateway: Gateway) -> list[tuple[str, str, str, float | int]]:
    stats = gateway.recorder.stats
    usage = resource.getrusage(resource.RUSAGE_SELF)
    gauges: list[tuple[str, str, str, float | int]] = [
        (
            "tailgate_config_generation",
            "gauge",
            "Configurations loaded since start.",
            gateway.runtime.generation,
        ),
        ("tailgate_records_written_total", "counter", "Records stored.", stats.written + stats.replayed),
        (
            "tailgate_records_spooled_total",
            "counter",
            "Records written to the local spool file.",
            stats.spooled,
        ),
        ("tailgate_records_dropped_total", "counter", "Records lost.", stats.dropped),
        (
            "tailgate_records_pending",
            "gauge",
            "Records waiting to be stored.",
            max(stats.submitted - stats.written - stats.dropped - stats.spooled, 0),
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of this process.",
            round(usage.ru_utime + usage.ru_stime, 6),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process, Unix seconds.",
            round(gateway.started_at, 3),
        ),
    ]
    rss = _resident_bytes()
    if rss is not None:
        gauges.append(("process_resident_memory_bytes", "gauge", "Resident memory size.", rss))
    gauges.append(("tailgate_build_info", "gauge", f"Always 1; tailgate {__version__}.", 1))
    return gauges


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


# -- exposition format ---------------------------------------------------------------------------


def escape_label(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def seconds(ns: int) -> str:
    """Nanoseconds as exact decimal seconds (``1500000`` → ``0.0015``), no float rounding."""
    whole, frac = divmod(ns, _S)
    return f"{whole}.{frac:09d}".rstrip("0").rstrip(".") if frac else str(whole)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True))


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {escape_help(help_text)}\n# TYPE {name} {kind}\n")


def _counter(
    out: list[str], name: str, help_text: str, names: tuple[str, ...], values: Mapping[Labels, int]
) -> None:
    _family(out, name, "counter", help_text)
    for key in sorted(values):
        out.append(f"{name}{{{_labels(names, key)}}} {values[key]}\n")


def _histograms(
    out: list[str],
    name: str,
    help_text: str,
    series: Mapping[ProviderModel, Histogram],
    *,
    labelled: bool = True,
) -> None:
    _family(out, name, "histogram", help_text)
    for key in sorted(series):
        histogram = series[key]
        base = _labels(("provider", "model"), key) + "," if labelled else ""
        cumulative = 0
        for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
            cumulative += count
            out.append(f'{name}_bucket{{{base}le="{seconds(bound)}"}} {cumulative}\n')
        cumulative += histogram.counts[-1]
        out.append(f'{name}_bucket{{{base}le="+Inf"}} {cumulative}\n')
        plain = f"{{{base.rstrip(',')}}}" if labelled else ""
        out.append(f"{name}_sum{plain} {seconds(histogram.sum_ns)}\n")
        out.append(f"{name}_count{plain} {cumulative}\n")


def _add(counter: dict[Labels, int], key: Labels, amount: int) -> None:
    counter[key] = counter.get(key, 0) + amount


def _histogram(
    series: dict[ProviderModel, Histogram], key: ProviderModel, bounds: tuple[int, ...]
) -> Histogram:
    histogram = series.get(key)
    if histogram is None:
        histogram = series[key] = Histogram(bounds)
    return histogram
