"""Dashboard benchmark: every page rendered through its real handler over a 10-million-record log.

    .venv/bin/python bench/dashboard_bench.py [--db /tmp/tailgate-bench.db] [--records 10000000]

Uses the synthetic database of ``bench/store_bench.py`` (generating it first when it holds fewer
records). Each page goes through the gateway's router and handler as a request would: identify
the caller, read the store in a worker thread, render the template (and, for the CSV, produce
every chunk). Prints the median and worst milliseconds of several runs per page, for an admin and
for a user. Not a test: the target is under 300 ms a page.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_bench import DAY_MS, END_MS, MODELS, START_MS, populate

from tailgate.app import Gateway
from tailgate.config.loader import load_config
from tailgate.http.messages import Request, Response, StreamingResponse
from tailgate.identity import LOOPBACK_IDENTITY, Identity, IdentityKind, IdentitySource
from tailgate.store import RecordFilter, SessionFilter, SQLiteStore
from tailgate.store.serialize import encode_cursor
from tailgate.web import register_dashboard

TARGET_MS = 300
HEAVY = "user000@example.com"
LIGHT = "user150@example.com"
MONTH = "since=2025-12-02&until=2025-12-31"
QUARTER = "since=2025-10-03&until=2025-12-31"


def bench_config() -> str:
    """The synthetic data's providers and models, an admin (loopback) and users with quotas."""
    providers = {}
    for provider in dict.fromkeys(p for p, _ in MODELS):
        models = ", ".join(f'"{m}"' for p, m in MODELS if p == provider)
        providers[provider] = (
            f'"{provider}": {{"baseurl": "http://127.0.0.1:9", "models": [{models}], '
            '"compatibility": {"openai_chat": true, "anthropic_messages": true}}'
        )
    return (
        "{"
        f'"providers": {{{", ".join(providers.values())}}},'
        '"grants": ['
        '{"src": ["(loopback)"], "app": {"tailscale.com/cap/aperture": [{"role": "admin"}, {"models": "**"}]}},'
        '{"src": ["*"], "app": {"tailscale.com/cap/aperture": [{"role": "user"},'
        ' {"models": "**", "quotas": [{"bucket": "daily:<user>"}]}]}}],'
        '"quotas": {"daily:<user>": {"capacity": "$10.00", "rate": "$10.00/day"}}'
        "}"
    )


def user(principal: str) -> Identity:
    return Identity(principal=principal, kind=IdentityKind.USER, source=IdentitySource.WHOIS)


def request(target: str) -> Request:
    headers = [(b"host", b"ai.example.ts.net")]
    return Request("GET", target.encode(), headers, b"", None, True)  # type: ignore[arg-type]


FIRST_CHUNK: dict[str, float] = {}
"""Milliseconds to the first data chunk of a streamed page (the CSV), by target, last run."""


async def render(gateway: Gateway, target: str) -> int:
    """Serve one page as the router would; return its size in bytes."""
    started = time.perf_counter()
    path = target.partition("?")[0]
    handlers = gateway.router.lookup(path)
    assert handlers is not None, path
    response = await handlers["GET"](request(target))
    if isinstance(response, StreamingResponse):
        size, chunks = 0, 0
        async for chunk in response.chunks:
            chunks += 1
            if chunks == 2:  # the first after the header row
                FIRST_CHUNK[target] = (time.perf_counter() - started) * 1000
            size += len(chunk)
        return size
    assert isinstance(response, Response), target
    assert response.status == 200, (target, response.status, response.body[:500])
    assert b'class="error-page"' not in response.body, target
    return len(response.body)


async def timed(fn: Callable[[], Awaitable[int]], runs: int) -> tuple[float, float, int]:
    size = await fn()  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        size = await fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times), size


def pages(store: SQLiteStore) -> list[tuple[str, Identity, str]]:
    """(label, viewer, target) for every page, with ids picked from the data."""
    one = store.list_records(RecordFilter(principal=LIGHT, until_ms=END_MS), limit=1).items[0]
    middle = store.list_records(RecordFilter(until_ms=START_MS + 45 * DAY_MS), limit=1).items[0]
    deep = quote(encode_cursor(middle.ts_ms, middle.id), safe="")
    recent = store.list_sessions(SessionFilter(until_ms=END_MS), limit=200, scope=HEAVY).items
    longest = max(recent, key=lambda s: s.totals.requests)
    session = quote(longest.session_id, safe="")
    admin = LOOPBACK_IDENTITY
    return [
        ("dashboard: heavy user, 30 days (admin view)", admin, f"/ui/dashboard/{HEAVY}?{MONTH}"),
        ("dashboard: heavy user, 90 days", user(HEAVY), f"/ui/?{QUARTER}"),
        ("dashboard: light user, 30 days", user(LIGHT), f"/ui/?{MONTH}"),
        ("logs: sessions, first page (admin)", admin, "/ui/logs"),
        ("logs: sessions, 30 days (admin)", admin, f"/ui/logs?{MONTH}"),
        ("logs: sessions, heavy user", user(HEAVY), "/ui/logs"),
        ("logs: requests, first page (admin)", admin, "/ui/logs?view=requests"),
        ("logs: requests, deep page by cursor", admin, f"/ui/logs?view=requests&cursor={deep}"),
        ("logs: filter model", admin, "/ui/logs?model=claude-opus-4"),
        ("logs: filter status 500", admin, "/ui/logs?status=500"),
        ("logs: filter principal + model", admin, f"/ui/logs?principal={LIGHT}&model={one.model}"),
        (
            "logs: filter outcome, one day",
            admin,
            "/ui/logs?outcome=upstream_failed&since=2025-12-20&until=2025-12-20",
        ),
        ("logs: requests, light user", user(LIGHT), "/ui/logs?view=requests"),
        (
            f"logs: one session of {longest.totals.requests} requests",
            user(HEAVY),
            f"/ui/logs/sessions/{session}",
        ),
        ("logs: one request (record and capture reads)", admin, f"/ui/logs/{one.id}"),
        ("usage: 30 days", admin, f"/ui/usage?{MONTH}"),
        ("usage: 90 days", admin, f"/ui/usage?{QUARTER}"),
        ("usage.csv: 30 days (day x principal x model)", admin, f"/ui/usage.csv?{MONTH}"),
        ("usage.csv: 90 days", admin, f"/ui/usage.csv?{QUARTER}"),
        ("usage.csv: one user, 90 days", user(LIGHT), f"/ui/usage.csv?{QUARTER}"),
        ("models (admin)", admin, "/ui/models"),
        ("models (user, with buckets)", user(LIGHT), "/ui/models"),
        ("quotas (admin)", admin, "/ui/quotas"),
        ("quotas (user)", user(LIGHT), "/ui/quotas"),
        ("settings", admin, "/ui/settings"),
        ("quick start", user(LIGHT), "/ui/quickstart"),
    ]


async def run(store: SQLiteStore, runs: int) -> list[tuple[str, float, float, int]]:
    loaded = load_config(bench_config(), environ={})
    assert loaded.config is not None, loaded.problems
    with tempfile.TemporaryDirectory() as data_dir:
        gateway = Gateway(loaded.config, store=store, data_dir=data_dir)
        gateway.mount(register_dashboard)
        viewer: dict[str, Identity] = {}

        async def identify(_request: Any) -> Identity:
            return viewer["now"]

        gateway.identify = identify  # type: ignore[method-assign]
        results = []
        for label, identity, target in pages(store):
            viewer["now"] = identity
            median, worst, size = await timed(lambda target=target: render(gateway, target), runs)
            first = FIRST_CHUNK.get(target)
            shown = label if first is None else f"{label} (first rows after {first:.0f} ms)"
            results.append((shown, median, worst, size))
        await gateway.pool.aclose()
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="/tmp/tailgate-bench.db")
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    store = SQLiteStore(args.db)
    store.migrate()
    (count,) = store._read("SELECT COUNT(*) FROM records WHERE ts_ms < ?", (END_MS,))[0]
    if count < args.records:
        if count:
            raise SystemExit("the database holds a different number of records; start from an empty one")
        print(f"generating {args.records:,} records into {args.db} …", file=sys.stderr)
        populate(store, args.records)
        store._read("ANALYZE")
    print(f"{count or args.records:,} records in {args.db}; median and worst of {args.runs} runs\n")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        results = runner.run(run(store, args.runs))
    print(f"| {'page':<70} | median ms | worst ms |     bytes |")
    print(f"|{'-' * 72}|----------:|---------:|----------:|")
    for label, median, worst, size in results:
        flag = "" if worst < TARGET_MS else "  ← over target"
        print(f"| {label:<70} | {median:9.1f} | {worst:8.1f} | {size:>9,} |{flag}")
    store.close()


if __name__ == "__main__":
    main()
