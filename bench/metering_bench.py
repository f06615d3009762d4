"""Time usage extraction, the recorder's per-request parsing: CPU µs per call, per dialect and input.

    .venv/bin/python bench/metering_bench.py [--seconds 0.3] [--json out.json]

Streams: ``usage_from_stream`` (reassembly plus usage) on the 20-chunk chat stream the gateway
benchmark sends (``fast_upstream.py``), on 20- and 200-chunk answers of the demo provider (text,
and a tool call) and on the golden corpus's streams (mean per dialect). Answers:
``usage_from_response`` on a parsed small answer, on the golden corpus's answers (mean) and on a
~100 KB answer (long text and a tool call with large arguments), with ``orjson.loads`` of the body
timed beside it because the recorder parses before it meters. Each figure is the best of five
timed loops in thread CPU time, so other load on the machine inflates it less than wall time.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from fast_upstream import stream_events  # noqa: E402

from tailgate.demo import DemoOptions, demo_answer  # noqa: E402
from tailgate.dialects import Operation  # noqa: E402
from tailgate.usage import usage_from_response, usage_from_stream  # noqa: E402
from tests.golden_corpus import CASES  # noqa: E402

DIALECTS: tuple[tuple[str, Operation, str], ...] = (
    ("chat", Operation.CHAT_COMPLETIONS, ""),
    ("responses", Operation.RESPONSES, ""),
    ("messages", Operation.MESSAGES, ""),
    ("gemini sse", Operation.STREAM_GENERATE_CONTENT, "alt=sse"),
    ("gemini array", Operation.STREAM_GENERATE_CONTENT, ""),
)
REQUEST: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
    "stream_options": {"include_usage": True},
    "input": "What is the weather in Paris?",
    "contents": [{"role": "user", "parts": [{"text": "What is the weather in Paris?"}]}],
    "tools": [{"type": "function", "name": "get_weather", "function": {"name": "get_weather"}}],
    "max_tokens": 4096,
}
BIG = 100_000


def per_call_us(call: Callable[[], object], seconds: float) -> float:
    """Best mean over five timed loops of ``call``, in µs."""
    call()
    started = time.perf_counter()
    count = 1
    while time.perf_counter() - started < seconds / 20 and count < 1_000_000:
        call()
        count += 1
    loops = max(count, 5)
    best = float("inf")
    gc.disable()
    try:
        for _ in range(5):
            begin = time.thread_time_ns()
            for _ in range(loops):
                call()
            best = min(best, (time.thread_time_ns() - begin) / loops / 1000)
    finally:
        gc.enable()
    return best


def demo_stream(operation: Operation, query: str, chunks: int, tools: bool = False) -> bytes:
    options = DemoOptions(chunks=chunks, tool_call=tools)
    return demo_answer(operation, "m", REQUEST, stream=True, query=query, options=options).body


def demo_body(operation: Operation) -> bytes:
    if operation is Operation.STREAM_GENERATE_CONTENT:
        operation = Operation.GENERATE_CONTENT
    return demo_answer(operation, "m", REQUEST, stream=False, options=DemoOptions(chunks=20)).body


def big_body(operation: Operation) -> bytes:
    """A ~100 KB answer: a long text and a tool call writing a large file."""
    if operation is Operation.STREAM_GENERATE_CONTENT:
        operation = Operation.GENERATE_CONTENT
    text = "All work and no play makes a long answer. " * (BIG // 2 // 42)
    params = {"path": "notes.txt", "content": text}
    arguments = json.dumps(params)
    tools = demo_answer(operation, "m", REQUEST, stream=False, options=DemoOptions(tool_call=True))
    answer = orjson.loads(tools.body)
    if operation is Operation.CHAT_COMPLETIONS:
        message = answer["choices"][0]["message"]
        message["content"] = text
        message["tool_calls"][0]["function"]["arguments"] = arguments
    elif operation is Operation.RESPONSES:
        call = next(item for item in answer["output"] if item["type"] == "function_call")
        call["arguments"] = arguments
        message = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
        answer["output"].insert(0, message)
    elif operation is Operation.MESSAGES:
        block = next(block for block in answer["content"] if block["type"] == "tool_use")
        block["input"] = params
        answer["content"].insert(0, {"type": "text", "text": text})
    else:
        parts = answer["candidates"][0]["content"]["parts"]
        call = next(part for part in parts if "functionCall" in part)
        call["functionCall"]["args"] = params
        parts.insert(0, {"text": text})
    body: bytes = orjson.dumps(answer)
    return body


def stream_rows(seconds: float) -> list[tuple[str, str, int, float]]:
    # The stream bench/run.py and bench/profile.py send through the gateway, as the recorder sees it.
    bench_stream = b"".join(stream_events())
    assert usage_from_stream(Operation.CHAT_COMPLETIONS, bench_stream)[0] is not None
    us = per_call_us(partial(usage_from_stream, Operation.CHAT_COMPLETIONS, bench_stream), seconds)
    rows = [("chat", "bench stream (fast_upstream.py)", len(bench_stream), us)]
    for label, operation, query in DIALECTS:
        sse = query == "alt=sse" or operation is not Operation.STREAM_GENERATE_CONTENT
        inputs = [
            ("demo 20 chunks", demo_stream(operation, query, 20)),
            ("demo 200 chunks", demo_stream(operation, query, 200)),
            ("demo tool call", demo_stream(operation, query, 20, tools=True)),
        ]
        for name, raw in inputs:
            assert usage_from_stream(operation, raw, sse=sse)[0] is not None, (label, name)
            us = per_call_us(partial(usage_from_stream, operation, raw, sse=sse), seconds)
            rows.append((label, name, len(raw), us))
        form = "sse" if sse else "array"
        golden = [
            case for case in CASES if case.form == form and _dialect(case.operation) == _dialect(operation)
        ]
        if golden:
            timings = [
                per_call_us(partial(usage_from_stream, case.operation, case.raw, sse=sse), seconds / 4)
                for case in golden
            ]
            size = int(statistics.mean(len(case.raw) for case in golden))
            rows.append((label, f"golden streams (mean of {len(golden)})", size, statistics.mean(timings)))
    return rows


def answer_rows(seconds: float) -> list[tuple[str, str, int, float, float]]:
    rows = []
    for dialect, operation, _ in DIALECTS[:4]:
        label = dialect.removesuffix(" sse")
        metered = Operation.GENERATE_CONTENT if operation is Operation.STREAM_GENERATE_CONTENT else operation
        inputs = [("demo answer", demo_body(operation)), ("~100 KB answer", big_body(operation))]
        golden = [
            case for case in CASES if case.form == "json" and _dialect(case.operation) == _dialect(operation)
        ]
        for name, body in inputs:
            parsed = orjson.loads(body)
            assert usage_from_response(metered, parsed) is not None, (label, name)
            us = per_call_us(partial(usage_from_response, metered, parsed), seconds)
            parse = per_call_us(partial(orjson.loads, body), seconds)
            rows.append((label, name, len(body), us, parse))
        usage_us = [
            per_call_us(partial(usage_from_response, case.operation, case.body()), seconds / 4)
            for case in golden
        ]
        parse_us = [per_call_us(partial(orjson.loads, case.raw), seconds / 4) for case in golden]
        size = int(statistics.mean(len(case.raw) for case in golden))
        mean_us, mean_parse = statistics.mean(usage_us), statistics.mean(parse_us)
        rows.append((label, f"golden answers (mean of {len(golden)})", size, mean_us, mean_parse))
    return rows


def _dialect(operation: Operation) -> str:
    return (
        "gemini"
        if operation in (Operation.GENERATE_CONTENT, Operation.STREAM_GENERATE_CONTENT)
        else str(operation)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="time budget per figure")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    streams = stream_rows(args.seconds)
    answers = answer_rows(args.seconds)
    print("usage_from_stream (reassembly + usage)")
    print(f"  {'dialect':<13} {'input':<32} {'bytes':>8} {'µs/call':>9}")
    for label, name, size, us in streams:
        print(f"  {label:<13} {name:<32} {size:>8} {us:>9.1f}")
    print()
    print("usage_from_response (and orjson.loads of the body, which the recorder does first)")
    print(f"  {'dialect':<13} {'input':<32} {'bytes':>8} {'µs/call':>9} {'parse µs':>9}")
    for label, name, size, us, parse in answers:
        print(f"  {label:<13} {name:<32} {size:>8} {us:>9.1f} {parse:>9.1f}")
    if args.json:
        figures = {
            "python": sys.version.split()[0],
            "streams": [{"dialect": d, "input": n, "bytes": b, "us": round(u, 2)} for d, n, b, u in streams],
            "answers": [
                {"dialect": d, "input": n, "bytes": b, "us": round(u, 2), "parse_us": round(p, 2)}
                for d, n, b, u, p in answers
            ],
        }
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
