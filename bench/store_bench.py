"""Store benchmark: the queries behind the logs and usage pages on a large SQLite database.

    .venv/bin/python bench/store_bench.py [--records 10000000] [--db /tmp/tailgate-bench.db]

Generates synthetic records (about 200 principals, 15 models on 5 providers, 90 days, sessions
of 1-50 requests) through ``insert_records`` in large batches, unless the database already holds
them, then times each query (median and worst of several runs) and ``insert_records`` throughput
in batches of 500. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tailgate.record import Capture, Outcome, Record
from tailgate.store import RecordFilter, SessionFilter, SQLiteStore, Store, UsageQuery, open_store
from tailgate.store.serialize import encode_cursor
from tailgate.usage import Usage

DAY_MS = 86_400_000
DAYS = 90
END_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, the end of the generated range
START_MS = END_MS - DAYS * DAY_MS
PROVIDERS = {
    "openai": ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3", "gpt-5"),
    "anthropic": ("claude-sonnet-4", "claude-opus-4", "claude-haiku-4"),
    "gemini": ("gemini-2.5-pro", "gemini-2.5-flash"),
    "bedrock": ("anthropic.claude-sonnet-4", "amazon.nova-pro", "meta.llama4"),
    "vertex": ("gemini-2.5-flash-lite", "claude-sonnet-4@vertex"),
}
MODELS = [(p, m) for p, ms in PROVIDERS.items() for m in ms]
STATUSES = (
    [(200, Outcome.OK)] * 970
    + [(429, Outcome.UPSTREAM_ERROR)] * 12
    + [(500, Outcome.UPSTREAM_ERROR)] * 5
    + [(502, Outcome.UPSTREAM_FAILED)] * 3
    + [(403, Outcome.DENIED)] * 6
    + [(499, Outcome.CLIENT_DISCONNECTED)] * 4
)
AGENTS = (
    "claude-cli/2.0.14",
    "codex_cli_rs/0.45.0",
    "OpenAI/Python 1.99.1",
    "curl/8.5.0",
    "gemini-cli/0.9.0",
)


def synthetic(n: int, seed: int = 7) -> Iterator[Record]:
    """``n`` records spread evenly over 90 days, oldest first, with sessions running per principal."""
    rng = random.Random(seed)
    principals = [f"user{i:03d}@example.com" for i in range(190)] + [f"tag:ci,tag:svc{i}" for i in range(10)]
    activity = [1 / (i + 1) ** 0.8 for i in range(len(principals))]  # a few heavy users, a long tail
    favourite = {p: rng.sample(range(len(MODELS)), 3) for p in principals}
    session: dict[str, tuple[str, int, int]] = {}  # principal -> (session id, model, requests left)
    step = (END_MS - START_MS) / n
    chosen = rng.choices(principals, activity, k=min(n, 1_000_000))
    for i in range(n):
        ts = START_MS + int(i * step)
        principal = chosen[i % len(chosen)]
        sid, model_index, left = session.get(principal, ("", 0, 0))
        if left == 0:
            sid = f"s{i:x}{rng.getrandbits(32):08x}"
            model_index = rng.choice(favourite[principal])
            left = rng.randint(1, 50)
        session[principal] = (sid, model_index, left - 1)
        provider, model = MODELS[model_index]
        status, outcome = rng.choice(STATUSES)
        ok = status == 200
        inp = rng.randint(200, 60_000)
        cached = rng.randint(0, inp) if rng.random() < 0.6 else 0
        usage = (
            Usage(
                input_tokens=inp,
                cache_read_tokens=cached,
                output_tokens=rng.randint(10, 4000),
                reasoning_tokens=rng.randint(0, 800) if model_index % 3 == 0 else 0,
                tool_calls=rng.randint(0, 3),
            )
            if ok
            else None
        )
        yield Record(
            id=f"{ts:012x}{i:014x}",
            ts_ms=ts,
            principal=principal,
            identity_kind="tagged" if principal.startswith("tag:") else "user",
            identity_source="whois",
            node_id=f"n{hash(principal) % 1000}",
            path="/v1/messages",
            dialect="anthropic",
            operation="messages",
            provider=provider,
            model=model,
            stream=True,
            status=status,
            outcome=outcome,
            duration_us=rng.randint(200_000, 60_000_000),
            ttfb_us=rng.randint(100_000, 3_000_000) if ok else None,
            usage=usage,
            cost_nd=(inp * 3 + (usage.output_tokens if usage else 0) * 15)
            if ok and model_index != 14
            else None,
            price_version="0.2.3",
            session_id=sid,
            user_agent=AGENTS[model_index % len(AGENTS)],
        )


def populate(store: SQLiteStore, n: int) -> float:
    """Insert ``n`` synthetic records in batches of 20 000; return seconds taken."""
    started = time.perf_counter()
    batch: list[Record] = []
    done = 0
    for record in synthetic(n):
        batch.append(record)
        if len(batch) == 20_000:
            done += store.insert_records(batch)
            batch = []
            if done % 1_000_000 == 0:
                rate = done / (time.perf_counter() - started)
                print(f"  {done:>10,} records, {rate:,.0f}/s", file=sys.stderr, flush=True)
    done += store.insert_records(batch)
    return time.perf_counter() - started


def timed(fn: Callable[[], object], runs: int = 7) -> tuple[float, float, object]:
    """Median and worst milliseconds of ``runs`` calls (after one warm-up call), and the last result."""
    result = fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times), result


def size(result: object) -> str:
    items = getattr(result, "items", result)
    return str(len(items)) if isinstance(items, list) else "1"


def queries(store: SQLiteStore) -> list[tuple[str, Callable[[], object]]]:
    last_day = date(2026, 1, 1) - timedelta(days=1)
    month = UsageQuery(since=last_day - timedelta(days=29), until=last_day)
    week = UsageQuery(since=last_day - timedelta(days=6), until=last_day)  # what the dashboard asks at once
    heavy = "user000@example.com"
    light = "user150@example.com"
    middle = store.list_records(RecordFilter(until_ms=START_MS + 45 * DAY_MS), limit=1).items[0]
    deep = encode_cursor(middle.ts_ms, middle.id)
    one = store.list_records(RecordFilter(principal=light, until_ms=END_MS), limit=1).items[0]
    assert one.session_id is not None
    session = one.session_id
    return [
        ("logs: first page (50)", lambda: store.list_records(RecordFilter())),
        ("logs: principal (heavy user)", lambda: store.list_records(RecordFilter(principal=heavy))),
        ("logs: principal (light user)", lambda: store.list_records(RecordFilter(principal=light))),
        ("logs: model", lambda: store.list_records(RecordFilter(model="claude-opus-4"))),
        ("logs: status 500", lambda: store.list_records(RecordFilter(status=500))),
        (
            "logs: principal + model",
            lambda: store.list_records(RecordFilter(principal=light, model=one.model)),
        ),
        (
            "logs: principal + status 500",
            lambda: store.list_records(RecordFilter(principal=heavy, status=500)),
        ),
        ("logs: deep page (cursor, 45 days back)", lambda: store.list_records(RecordFilter(), cursor=deep)),
        (
            "logs: one day (since/until)",
            lambda: store.list_records(
                RecordFilter(since_ms=END_MS - 10 * DAY_MS, until_ms=END_MS - 9 * DAY_MS)
            ),
        ),
        (
            "logs: one session's requests",
            lambda: store.list_records(RecordFilter(session=session), scope=light),
        ),
        ("logs: one record with capture", lambda: store.get_record(one.id)),
        ("sessions: first page (50)", lambda: store.list_sessions(SessionFilter())),
        ("sessions: one principal", lambda: store.list_sessions(SessionFilter(), scope=heavy)),
        ("usage: per day, 30 days", lambda: store.usage(month, ("day",))),
        ("usage: per day, 30 days, one principal", lambda: store.usage(month, ("day",), scope=heavy)),
        ("usage: totals, 90 days", lambda: store.usage(UsageQuery(), ())),
        (
            "usage: top 20 principals by cost, 30 days",
            lambda: store.usage(month, ("principal",), order="cost", limit=20),
        ),
        ("usage: model popularity, 30 days", lambda: store.usage(month, ("model",), order="requests")),
        ("usage: active principals per day, 90 days", lambda: store.active_principals(UsageQuery())),
        (
            "usage: CSV rows (day, principal, model), 30 days",
            lambda: store.usage(month, ("day", "principal", "model")),
        ),
        ("usage: CSV rows, usage_rows(), 30 days", lambda: store.usage_rows(month)),
        ("usage: CSV rows, usage_rows(), 7 days", lambda: store.usage_rows(week)),
    ]


_WORD_TEXT = (
    "the a to of and in that is for it on with as this be you are can not but what do by your use "
    "function return value error file test code data list string request response model token user "
    "server client config python rust query index table write read cache stream chunk batch json"
)
WORDS = _WORD_TEXT.split()
REQUEST_HEADERS = [
    ("host", "ai.example.ts.net"),
    ("content-type", "application/json"),
    ("accept", "application/json"),
    ("authorization", "[redacted]"),
    ("user-agent", "OpenAI/Python 1.99.1"),
    ("x-stainless-lang", "python"),
    ("x-stainless-package-version", "1.99.1"),
    ("x-stainless-os", "Linux"),
    ("x-stainless-runtime", "CPython"),
    ("x-stainless-runtime-version", "3.12.3"),
    ("x-stainless-retry-count", "0"),
    ("content-length", "1400"),
]
RESPONSE_HEADERS = [
    ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
    ("content-type", "application/json"),
    ("openai-organization", "org-example"),
    ("openai-processing-ms", "812"),
    ("openai-version", "2020-10-01"),
    ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-remaining-requests", "9999"),
    ("x-ratelimit-reset-requests", "6ms"),
    ("x-request-id", "req_0123456789abcdef"),
    ("cf-cache-status", "DYNAMIC"),
    ("server", "cloudflare"),
]


def _text(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def chat_capture(rng: random.Random, kind: str) -> Capture:
    """A capture shaped like a real chat call: ``"chat"`` has 1-2 kB JSON bodies, ``"8k"`` 8 kB each."""
    if kind == "8k":
        body = rng.randbytes(4000).hex().encode()
        return Capture(request_body=body, response_body=body, tool_calls=[{"name": "x", "params": {}}])
    request = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": _text(rng, 300)},
                {"role": "user", "content": _text(rng, rng.randint(600, 1400))},
            ],
            "temperature": 0.2,
        }
    )
    response = orjson.dumps(
        {
            "id": f"chatcmpl-{rng.getrandbits(96):024x}",
            "object": "chat.completion",
            "created": 1767225600,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _text(rng, rng.randint(700, 1600))},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 412, "completion_tokens": 288, "total_tokens": 700},
        }
    )
    return Capture(
        request_headers=REQUEST_HEADERS,
        request_body=request,
        response_headers=RESPONSE_HEADERS,
        response_body=response,
    )


def insert_batches(batches: int, capture: str, start_ms: int) -> list[list[Record]]:
    """``batches`` batches of 500 new records from ``start_ms`` on, with captures of kind ``capture``.

    One stream, 4 000 requests a second (a gateway core's rate): sessions go on across batches,
    as a gateway's do.
    """
    rng = random.Random(capture)
    marker = capture[:2].encode().hex()
    stream = []
    for i, r in enumerate(synthetic(batches * 500, seed=1000 + start_ms % 1000)):
        r.ts_ms = start_ms + i // 4
        r.id = f"{r.ts_ms:012x}{marker:>04}{i:010x}"
        if capture != "none":
            r.capture = chat_capture(rng, capture)
        stream.append(r)
    return [stream[b * 500 : (b + 1) * 500] for b in range(batches)]


def insert_throughput(store: Store, batches: int, capture: str) -> tuple[float, float]:
    """Rows per second of ``insert_records`` with batches of 500 new, newest records, and the
    CPU µs per row this process spent (every thread: the store's checkpoints too)."""
    # Later than every generated record, and new on every run (a rerun must not insert nothing).
    start = END_MS + DAY_MS + time.time_ns() // 1_000_000 % DAY_MS
    records = insert_batches(batches, capture, start)
    started, cpu = time.perf_counter(), time.process_time()
    for batch in records:
        assert store.insert_records(batch) == len(batch)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return batches * 500 / elapsed, cpu / (batches * 500) * 1e6


CAPTURES = {"none": "without captures", "chat": "with 1-2 kB chat captures", "8k": "with 8 kB captures"}


def report_inserts(store: Store, batches: int) -> None:
    for capture, what in CAPTURES.items():
        rate, cpu = insert_throughput(store, batches, capture)
        print(f"insert_records, batches of 500, {what}: {rate:,.0f} rows/s, {cpu:.0f} µs CPU/row", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--db", default="/tmp/tailgate-bench.db")
    parser.add_argument("--fresh", action="store_true", help="delete the database first")
    parser.add_argument("--batches", type=int, default=40, help="batches of 500 per insert test")
    parser.add_argument("--inserts-only", action="store_true", help="skip the query timings")
    parser.add_argument("--postgres", metavar="URL", help="also time inserts on this (empty) database")
    args = parser.parse_args()
    if args.fresh:
        for suffix in ("", "-wal", "-shm"):
            Path(args.db + suffix).unlink(missing_ok=True)
    store = SQLiteStore(args.db)
    store.migrate()
    (count,) = store._read("SELECT COUNT(*) FROM records WHERE ts_ms < ?", (END_MS,))[0]
    if count < args.records:
        print(f"generating {args.records - count:,} records into {args.db} …", file=sys.stderr)
        if count:
            raise SystemExit("the database holds a different number of records; use --fresh")
        seconds = populate(store, args.records)
        print(f"generated {args.records:,} records in {seconds:.0f} s ({args.records / seconds:,.0f}/s)")
        store._read("ANALYZE")
    print(
        f"database: {os.path.getsize(args.db) / 1e9:.2f} GB, {args.records:,} records, "
        f"{store._read('SELECT COUNT(*) FROM rollups')[0][0]:,} roll-up rows, "
        f"{store._read('SELECT COUNT(*) FROM sessions')[0][0]:,} sessions"
    )
    print()
    if not args.inserts_only:
        print(f"| {'query':<52} | median ms | worst ms | rows |")
        print(f"|{'-' * 54}|----------:|---------:|-----:|")
        for name, fn in queries(store):
            median, worst, result = timed(fn)
            print(f"| {name:<52} | {median:9.2f} | {worst:8.2f} | {size(result):>4} |")
        print()
    report_inserts(store, args.batches)
    store.close()
    if args.postgres:
        print("PostgreSQL:")
        pg = open_store(args.postgres)
        pg.migrate()
        report_inserts(pg, args.batches)
        pg.close()


if __name__ == "__main__":
    main()
