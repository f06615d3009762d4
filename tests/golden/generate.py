"""Writes the golden usage corpus: wire-shaped answers, streamed and not, with expected usage and cost.

Run from the repository root: ``.venv/bin/python tests/golden/generate.py``. Each case starts
from the normalised token split it must yield; the wire payload is written from that split by
each provider's own convention (Anthropic input excludes cache, Gemini thoughts sit outside
candidates, …), and the expected cost is ``genai_prices.calc_price`` on the split. The parsers
under test never take part in writing the corpus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import genai_prices

HERE = Path(__file__).parent
PRICED_AT = "2026-11-20T12:00:00+00:00"
GENAI_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "google": "google"}


@dataclass
class Split:
    """A normalised usage, in tailgate's convention (input and output are totals)."""

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    web_search_requests: int = 0
    input_audio_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Case:
    name: str
    operation: str
    basis: str
    model: str
    response_model: str
    split: Split | None
    body: str
    form: str = "json"
    """``json`` (one answer), ``sse`` (SSE stream) or ``array`` (Gemini's JSON-array stream)."""
    complete: bool = True
    tool_calls: int = 0
    service_tier: str | None = None
    speed: str | None = None
    partial: bool = False
    error: bool = False
    same_as: str | None = None
    priced: bool = True
    notes: str = ""


CASES: list[Case] = []


def add(case: Case) -> None:
    CASES.append(case)


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# OpenAI Chat Completions -----------------------------------------------------------------------


def chat_usage(s: Split) -> dict[str, Any]:
    prompt_details: dict[str, Any] = {"cached_tokens": s.cache_read_tokens, "audio_tokens": 0}
    if s.cache_write_tokens:
        prompt_details["cache_write_tokens"] = s.cache_write_tokens
    return {
        "prompt_tokens": s.input_tokens,
        "completion_tokens": s.output_tokens,
        "total_tokens": s.input_tokens + s.output_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": s.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_json(
    cid: str, model: str, text: str | None, calls: list[tuple[str, str, str]], s: Split, tier: str
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    if calls:
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            for call_id, name, args in calls
        ]
    return {
        "id": cid,
        "object": "chat.completion",
        "created": 1763800000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        ],
        "usage": chat_usage(s),
        "service_tier": tier,
        "system_fingerprint": None,
    }


def chat_sse(
    cid: str,
    model: str,
    text: str | None,
    calls: list[tuple[str, str, str]],
    s: Split | None,
    tier: str,
    *,
    include_usage: bool = True,
) -> str:
    base = {"id": cid, "object": "chat.completion.chunk", "created": 1763800000, "model": model}
    base |= {"service_tier": tier, "system_fingerprint": "fp_560af6e559"}
    events: list[dict[str, Any]] = []

    def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
        body = dict(base)
        body["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        if include_usage:
            body["usage"] = None
        body["obfuscation"] = "Xq3L"[: 1 + len(events) % 4]
        events.append(body)

    chunk({"role": "assistant", "content": "" if text is not None else None, "refusal": None})
    for piece in chunks(text, 7) if text else []:
        chunk({"content": piece})
    for position, (call_id, name, args) in enumerate(calls):
        first = {"index": position, "id": call_id, "type": "function"}
        chunk({"tool_calls": [first | {"function": {"name": name, "arguments": ""}}]})
        for piece in chunks(args, 9):
            chunk({"tool_calls": [{"index": position, "function": {"arguments": piece}}]})
    chunk({}, "tool_calls" if calls else "stop")
    lines = [f"data: {dumps(e)}\n\n" for e in events]
    if include_usage and s is not None:
        final = dict(base) | {"choices": [], "usage": chat_usage(s), "obfuscation": "P"}
        lines.append(f"data: {dumps(final)}\n\n")
    lines.append("data: [DONE]\n\n")
    return "".join(lines)


def add_chat(
    name: str,
    model: str,
    response_model: str,
    s: Split,
    *,
    text: str | None = None,
    calls: list[tuple[str, str, str]] | None = None,
    tier: str = "default",
    stream: bool = True,
    priced: bool = True,
) -> None:
    calls = calls or []
    cid = "chatcmpl-" + name.replace("_", "")[:24]
    body = dumps(chat_json(cid, response_model, text, calls, s, tier))
    common = {"operation": "chat_completions", "basis": "openai", "model": model, "priced": priced}
    add(
        Case(
            name,
            response_model=response_model,
            split=s,
            body=body,
            tool_calls=len(calls),
            service_tier=tier,
            **common,
        )
    )
    if stream:
        raw = chat_sse(cid, response_model, text, calls, s, tier)
        add(
            Case(
                name + "_stream",
                response_model=response_model,
                split=s,
                body=raw,
                form="sse",
                tool_calls=len(calls),
                service_tier=tier,
                same_as=name,
                **common,
            )
        )


WEATHER_ARGS = '{"city":"Paris","unit":"celsius"}'

add_chat(
    "chat_gpt4o_mini_text",
    "gpt-4o-mini",
    "gpt-4o-mini-2024-07-18",
    Split(19, output_tokens=2),
    text="Bonjour",
)
add_chat(
    "chat_gpt5_mini_tool_cached",
    "gpt-5-mini",
    "gpt-5-mini-2025-08-07",
    Split(1843, cache_read_tokens=1536, output_tokens=214, reasoning_tokens=192),
    calls=[("call_7QmB2xv0pA", "get_weather", '{"city":"Paris"}')],
)
add_chat(
    "chat_gpt5_priority",
    "gpt-5",
    "gpt-5-2025-08-07",
    Split(5230, cache_read_tokens=4096, output_tokens=1210, reasoning_tokens=896),
    text="The migration plan has three phases: freeze, copy, switch.",
    tier="priority",
)
add_chat(
    "chat_gpt5_flex",
    "gpt-5",
    "gpt-5-2025-08-07",
    Split(880, output_tokens=3100, reasoning_tokens=2944),
    text="Proof sketch: induct on n; the base case is immediate.",
    tier="flex",
)
add_chat(
    "chat_gpt5_mini_parallel_tools",
    "gpt-5-mini",
    "gpt-5-mini-2025-08-07",
    Split(412, output_tokens=151, reasoning_tokens=64),
    calls=[
        ("call_A1b2C3d4E5", "get_weather", '{"city":"Paris"}'),
        ("call_F6g7H8i9J0", "get_weather", '{"city":"Lyon"}'),
    ],
)
add_chat(
    "chat_gpt56_cache_write",
    "gpt-5.6-sol",
    "gpt-5.6-sol-2026-08-21",
    Split(24000, cache_read_tokens=8000, cache_write_tokens=12000, output_tokens=640, reasoning_tokens=320),
    text="Summary written.",
)
add_chat(
    "chat_gpt4o_mini_calls_and_text",
    "gpt-4o-mini",
    "gpt-4o-mini-2024-07-18",
    Split(230, output_tokens=41),
    text="Checking the weather now.",
    calls=[("call_K1l2M3n4O5", "get_weather", WEATHER_ARGS)],
)
add_chat(
    "chat_unpriced_local_model",
    "llama-3.3-70b-local",
    "llama-3.3-70b-local",
    Split(55, output_tokens=12),
    text="Hi there!",
    stream=False,
    priced=False,
)

# A stream cut before its usage chunk: OpenAI sends no running totals, so nothing is known.
_cut = chat_sse(
    "chatcmpl-cut01", "gpt-4o-mini-2024-07-18", "A long answer that never finishes", [], None, "default"
)
add(
    Case(
        "chat_stream_cut",
        "chat_completions",
        "openai",
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
        None,
        _cut[: _cut.index('"content":"ver fin"') + 14],
        form="sse",
        complete=False,
    )
)
add(
    Case(
        "chat_stream_without_usage",
        "chat_completions",
        "openai",
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
        None,
        chat_sse(
            "chatcmpl-nou01", "gpt-4o-mini-2024-07-18", "Sure.", [], None, "default", include_usage=False
        ),
        form="sse",
    )
)
_err = chat_sse("chatcmpl-err01", "gpt-4o-mini-2024-07-18", "Partial ans", [], None, "default")
_err = _err[: _err.index("data: [DONE]")].rsplit("data: ", 2)[0]
_err += 'data: {"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}\n\n'
add(
    Case(
        "chat_stream_error",
        "chat_completions",
        "openai",
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
        None,
        _err,
        form="sse",
        complete=False,
        error=True,
    )
)


# OpenAI Responses ------------------------------------------------------------------------------


def responses_usage(s: Split) -> dict[str, Any]:
    return {
        "input_tokens": s.input_tokens,
        "input_tokens_details": {
            "cached_tokens": s.cache_read_tokens,
            "cache_write_tokens": s.cache_write_tokens,
        },
        "output_tokens": s.output_tokens,
        "output_tokens_details": {"reasoning_tokens": s.reasoning_tokens},
        "total_tokens": s.input_tokens + s.output_tokens,
    }


def responses_object(
    rid: str, model: str, items: list[dict[str, Any]], s: Split | None, status: str, tier: str
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rid,
        "object": "response",
        "created_at": 1763800000,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": "Answer briefly.",
        "max_output_tokens": 2048,
        "model": model,
        "output": items,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "low", "summary": None},
        "service_tier": tier,
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": responses_usage(s) if s is not None else None,
        "metadata": {},
    }
    return body


def message_item(mid: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": mid, "type": "message", "status": status, "role": "assistant", "content": [part]}


def function_item(fid: str, call_id: str, name: str, args: str) -> dict[str, Any]:
    return {
        "id": fid,
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": args,
    }


def responses_sse(rid: str, model: str, items: list[dict[str, Any]], s: Split, status: str, tier: str) -> str:
    out: list[tuple[str, dict[str, Any]]] = []

    def emit(kind: str, **fields: Any) -> None:
        out.append((kind, {"type": kind, "sequence_number": len(out), **fields}))

    start = responses_object(rid, model, [], None, "in_progress", tier)
    emit("response.created", response=start)
    emit("response.in_progress", response=start)
    for index, item in enumerate(items):
        if item["type"] == "reasoning":
            emit("response.output_item.added", output_index=index, item=item)
            emit("response.output_item.done", output_index=index, item=item)
        elif item["type"] == "message":
            text = item["content"][0]["text"]
            opened = dict(item, status="in_progress", content=[])
            emit("response.output_item.added", output_index=index, item=opened)
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            emit(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=empty,
            )
            for piece in chunks(text, 6):
                emit(
                    "response.output_text.delta",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                )
            emit(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            )
            emit(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=item["content"][0],
            )
            emit("response.output_item.done", output_index=index, item=item)
        else:
            opened = dict(item, status="in_progress", arguments="")
            emit("response.output_item.added", output_index=index, item=opened)
            for piece in chunks(item["arguments"], 8):
                emit(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=piece,
                )
            emit(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=item["arguments"],
            )
            emit("response.output_item.done", output_index=index, item=item)
    final = responses_object(rid, model, items, s, status, tier)
    emit("response.completed" if status == "completed" else "response.incomplete", response=final)
    return "".join(f"event: {kind}\ndata: {dumps(data)}\n\n" for kind, data in out)


def add_responses(
    name: str,
    model: str,
    response_model: str,
    s: Split,
    items: list[dict[str, Any]],
    *,
    tier: str = "default",
    status: str = "completed",
    stream: bool = True,
    tool_calls: int = 0,
    extra: dict[str, Any] | None = None,
) -> None:
    rid = "resp_" + name.replace("_", "")[:20]
    body = responses_object(rid, response_model, items, s, status, tier) | (extra or {})
    common = {"operation": "responses", "basis": "openai", "model": model, "response_model": response_model}
    common |= {"split": s, "tool_calls": tool_calls, "service_tier": tier}
    add(Case(name, body=dumps(body), **common))
    if stream:
        raw = responses_sse(rid, response_model, items, s, status, tier)
        add(Case(name + "_stream", body=raw, form="sse", same_as=name, **common))


REASONING = {"id": "rs_68a1c0ffee02", "type": "reasoning", "summary": []}
add_responses(
    "resp_gpt5_mini_reasoning_cached",
    "gpt-5-mini",
    "gpt-5-mini-2025-08-07",
    Split(1320, cache_read_tokens=1024, output_tokens=156, reasoning_tokens=128),
    [REASONING, message_item("msg_68a1c0ffee03", "Paris: 18 C, sunny.")],
)
add_responses(
    "resp_gpt5_function_call",
    "gpt-5",
    "gpt-5-2025-08-07",
    Split(2210, output_tokens=98, reasoning_tokens=64),
    [REASONING, function_item("fc_68a1c0ffee04", "call_9XyZ", "get_weather", WEATHER_ARGS)],
    tool_calls=1,
)
add_responses(
    "resp_gpt4o_mini_cached",
    "gpt-4o-mini",
    "gpt-4o-mini-2024-07-18",
    Split(3072, cache_read_tokens=2944, output_tokens=37),
    [message_item("msg_a11ce0000001", "The invoice total is 1,280 EUR.")],
    stream=False,
)
add_responses(
    "resp_gpt5_mini_incomplete",
    "gpt-5-mini",
    "gpt-5-mini-2025-08-07",
    Split(640, output_tokens=2048, reasoning_tokens=1980),
    [REASONING, message_item("msg_a11ce0000002", "The first ste", status="incomplete")],
    status="incomplete",
)
_search_items = [
    {
        "id": "ws_68a1c0ffee05",
        "type": "web_search_call",
        "status": "completed",
        "action": {"type": "search", "query": "Paris weather today"},
    },
    {
        "id": "ws_68a1c0ffee06",
        "type": "web_search_call",
        "status": "completed",
        "action": {"type": "search", "query": "Paris forecast tomorrow"},
    },
    message_item("msg_68a1c0ffee07", "Sunny today, rain tomorrow."),
]
add_responses(
    "resp_gpt5_web_search",
    "gpt-5",
    "gpt-5-2025-08-07",
    Split(9120, output_tokens=412, reasoning_tokens=256, web_search_requests=2),
    _search_items,
    stream=False,
)
_resp_full = responses_sse(
    "resp_cut01",
    "gpt-5-mini-2025-08-07",
    [message_item("msg_cut01", "This answer is cut off in the middle.")],
    Split(1, output_tokens=1),
    "completed",
    "default",
)
add(
    Case(
        "resp_stream_cut",
        "responses",
        "openai",
        "gpt-5-mini",
        "gpt-5-mini-2025-08-07",
        None,
        _resp_full[: _resp_full.index('"delta":"n the "') + 12],
        form="sse",
        complete=False,
    )
)
_resp_err = _resp_full[: _resp_full.index("event: response.output_text.done")]
_resp_err += (
    'event: error\ndata: {"type":"error","sequence_number":12,"code":"server_error","message":'
    '"The server had an error while processing your request.","param":null}\n\n'
)
add(
    Case(
        "resp_stream_error",
        "responses",
        "openai",
        "gpt-5-mini",
        "gpt-5-mini-2025-08-07",
        None,
        _resp_err,
        form="sse",
        complete=False,
        error=True,
    )
)


# Anthropic Messages ----------------------------------------------------------------------------


def anthropic_usage(
    s: Split, *, split_creation: bool = True, output: int | None = None, speed: str | None = None
) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": s.input_tokens - s.cache_read_tokens - s.cache_write_tokens,
        "cache_creation_input_tokens": s.cache_write_tokens,
        "cache_read_input_tokens": s.cache_read_tokens,
    }
    if split_creation:
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": s.cache_write_5m_tokens,
            "ephemeral_1h_input_tokens": s.cache_write_1h_tokens,
        }
    usage["output_tokens"] = s.output_tokens if output is None else output
    if s.web_search_requests:
        usage["server_tool_use"] = {"web_search_requests": s.web_search_requests, "web_fetch_requests": 0}
    usage["service_tier"] = "standard"
    if speed:
        usage["speed"] = speed
    return usage


def anthropic_json(
    mid: str, model: str, blocks: list[dict[str, Any]], stop: str, usage: dict[str, Any]
) -> str:
    return dumps(
        {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
    )


def anthropic_sse(
    mid: str, model: str, blocks: list[dict[str, Any]], stop: str, usage: dict[str, Any]
) -> str:
    start_usage = dict(usage, output_tokens=1)
    start_usage.pop("server_tool_use", None)
    message = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    out: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": message})]

    def emit(kind: str, **fields: Any) -> None:
        out.append((kind, {"type": kind, **fields}))

    for index, block in enumerate(blocks):
        if block["type"] == "text":
            emit("content_block_start", index=index, content_block={"type": "text", "text": ""})
            if index == 0:
                out.append(("ping", {"type": "ping"}))
            for piece in chunks(block["text"], 5):
                emit("content_block_delta", index=index, delta={"type": "text_delta", "text": piece})
        elif block["type"] == "thinking":
            emit(
                "content_block_start",
                index=index,
                content_block={"type": "thinking", "thinking": "", "signature": ""},
            )
            for piece in chunks(block["thinking"], 11):
                emit("content_block_delta", index=index, delta={"type": "thinking_delta", "thinking": piece})
            emit(
                "content_block_delta",
                index=index,
                delta={"type": "signature_delta", "signature": block["signature"]},
            )
        else:
            emit(
                "content_block_start",
                index=index,
                content_block={"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}},
            )
            text = json.dumps(block["input"])
            for piece in chunks(text, 10):
                emit(
                    "content_block_delta",
                    index=index,
                    delta={"type": "input_json_delta", "partial_json": piece},
                )
        emit("content_block_stop", index=index)
    final = {
        key: value for key, value in usage.items() if key not in ("cache_creation", "service_tier", "speed")
    }
    emit("message_delta", delta={"stop_reason": stop, "stop_sequence": None}, usage=final)
    emit("message_stop")
    return "".join(f"event: {kind}\ndata: {dumps(data)}\n\n" for kind, data in out)


def add_messages(
    name: str,
    model: str,
    response_model: str,
    s: Split,
    blocks: list[dict[str, Any]],
    *,
    stream: bool = True,
    split_creation: bool = True,
    priced: bool = True,
    speed: str | None = None,
) -> None:
    mid = "msg_01" + name.replace("_", "")[:22]
    calls = sum(1 for block in blocks if block["type"] == "tool_use")
    stop = "tool_use" if calls else "end_turn"
    usage = anthropic_usage(s, split_creation=split_creation, speed=speed)
    common = {"operation": "messages", "basis": "anthropic", "model": model, "response_model": response_model}
    common |= {"split": s, "tool_calls": calls, "service_tier": "standard", "priced": priced, "speed": speed}
    add(Case(name, body=anthropic_json(mid, response_model, blocks, stop, usage), **common))
    if stream:
        raw = anthropic_sse(mid, response_model, blocks, stop, usage)
        add(Case(name + "_stream", body=raw, form="sse", same_as=name, **common))


SONNET = "claude-sonnet-4-5-20250929"
HAIKU = "claude-haiku-4-5-20251001"
OPUS = "claude-opus-4-5-20251101"
TOOL_USE = {
    "type": "tool_use",
    "id": "toolu_01A09q90qw90lq917835lq9",
    "name": "get_weather",
    "input": {"city": "Paris", "unit": "celsius"},
}
THINKING = {
    "type": "thinking",
    "thinking": "User wants current weather; call the tool with Paris.",
    "signature": "EqQBCkYIBxgCKkAfakeSignatureForTheGoldenCorpus==",
}

add_messages(
    "msg_sonnet45_cache_read_tool",
    "claude-sonnet-4-5",
    SONNET,
    Split(42 + 2048, cache_read_tokens=2048, output_tokens=187),
    [THINKING, {"type": "text", "text": "Let me check."}, TOOL_USE],
)
add_messages(
    "msg_haiku45_cache_write_5m",
    "claude-haiku-4-5",
    HAIKU,
    Split(12 + 1800, cache_write_tokens=1800, cache_write_5m_tokens=1800, output_tokens=64),
    [{"type": "text", "text": "Hello! How can I help with the report?"}],
)
add_messages(
    "msg_opus45_cache_write_1h",
    "claude-opus-4-5",
    OPUS,
    Split(
        310 + 4000 + 9000 + 20000,
        cache_read_tokens=20000,
        cache_write_tokens=13000,
        cache_write_5m_tokens=4000,
        cache_write_1h_tokens=9000,
        output_tokens=900,
    ),
    [{"type": "text", "text": "Here is the refactored module, with the cache layer split out."}],
)
add_messages(
    "msg_sonnet45_thinking",
    "claude-sonnet-4-5",
    SONNET,
    Split(1530, output_tokens=2210),
    [
        {
            "type": "thinking",
            "thinking": "Consider both orderings of the join, then compare costs.",
            "signature": "ErcBCkgIAxgCIkD2thinkingSig==",
        },
        {"type": "text", "text": "Use a hash join: the smaller side fits in memory."},
    ],
)
add_messages(
    "msg_haiku45_two_tools",
    "claude-haiku-4-5",
    HAIKU,
    Split(880, output_tokens=133),
    [
        {"type": "text", "text": "I'll look both up."},
        {"type": "tool_use", "id": "toolu_01Bq", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_01Cr", "name": "get_time", "input": {"tz": "Europe/Paris"}},
    ],
)
add_messages(
    "msg_sonnet45_unsplit_creation",
    "claude-sonnet-4-5",
    SONNET,
    Split(25 + 3000, cache_write_tokens=3000, cache_write_5m_tokens=3000, output_tokens=40),
    [{"type": "text", "text": "Cached."}],
    stream=False,
    split_creation=False,
)
add_messages(
    "msg_sonnet45_web_search",
    "claude-sonnet-4-5",
    SONNET,
    Split(14200, output_tokens=520, web_search_requests=2),
    [{"type": "text", "text": "Two sources agree: the release is on Tuesday."}],
    stream=False,
)
add_messages(
    "msg_sonnet45_long_context",
    "claude-sonnet-4-5",
    SONNET,
    Split(215000, cache_read_tokens=180000, output_tokens=1500),
    [{"type": "text", "text": "Across the whole repository, the config loader is duplicated twice."}],
    stream=False,
)
add_messages(
    "msg_opus48_fast_mode",
    "claude-opus-4-8",
    "claude-opus-4-8",
    Split(6400, cache_read_tokens=6000, output_tokens=730),
    [{"type": "text", "text": "Fast answer: the race comes from the unsynchronised counter."}],
    speed="fast",
)
add_messages(
    "msg_unpriced_model",
    "claude-internal-experiment",
    "claude-internal-experiment",
    Split(100, output_tokens=10),
    [{"type": "text", "text": "ok"}],
    stream=False,
    priced=False,
)

# Cut Anthropic streams keep the message_start usage: input side exact, output a placeholder.
_cut_split = Split(12 + 1800, cache_write_tokens=1800, cache_write_5m_tokens=1800, output_tokens=64)
_cut_full = anthropic_sse(
    "msg_01cut",
    HAIKU,
    [{"type": "text", "text": "Hello! How can I help with the report?"}],
    "end_turn",
    anthropic_usage(_cut_split),
)
_cut_at = _cut_full.index("event: content_block_stop")
add(
    Case(
        "msg_stream_cut",
        "messages",
        "anthropic",
        "claude-haiku-4-5",
        HAIKU,
        Split(12 + 1800, cache_write_tokens=1800, cache_write_5m_tokens=1800, output_tokens=1),
        _cut_full[: _cut_at + 20],
        form="sse",
        complete=False,
        partial=True,
        service_tier="standard",
    )
)
_err_body = _cut_full[:_cut_at]
_err_body += (
    'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},'
    '"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}\n\n'
)
add(
    Case(
        "msg_stream_error",
        "messages",
        "anthropic",
        "claude-haiku-4-5",
        HAIKU,
        Split(12 + 1800, cache_write_tokens=1800, cache_write_5m_tokens=1800, output_tokens=1),
        _err_body,
        form="sse",
        complete=False,
        partial=True,
        error=True,
        service_tier="standard",
    )
)


# Gemini ----------------------------------------------------------------------------------------


def gemini_usage(s: Split, *, tool_prompt: int = 0, thoughts_inside: bool = False) -> dict[str, Any]:
    prompt = s.input_tokens - tool_prompt
    thoughts = s.reasoning_tokens
    candidates = s.output_tokens if thoughts_inside else s.output_tokens - thoughts
    usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": candidates}
    total = prompt + candidates + tool_prompt + (0 if thoughts_inside else thoughts)
    usage["totalTokenCount"] = total
    if s.cache_read_tokens:
        usage["cachedContentTokenCount"] = s.cache_read_tokens
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    if tool_prompt:
        usage["toolUsePromptTokenCount"] = tool_prompt
        usage["toolUsePromptTokensDetails"] = [{"modality": "TEXT", "tokenCount": tool_prompt}]
    details = [{"modality": "TEXT", "tokenCount": prompt - s.input_audio_tokens}]
    if s.input_audio_tokens:
        details.append({"modality": "AUDIO", "tokenCount": s.input_audio_tokens})
    usage["promptTokensDetails"] = details
    if s.cache_read_tokens:
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": s.cache_read_tokens}]
    usage["candidatesTokensDetails"] = [{"modality": "TEXT", "tokenCount": candidates}]
    return usage


def gemini_json(
    model: str, parts: list[dict[str, Any]], usage: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    candidate = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0} | extra
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": "mDkIaYHtLq2vz7IPq9",
    }


def gemini_chunks(
    model: str,
    parts: list[dict[str, Any]],
    s: Split,
    usage: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Text arrives in pieces with running usage; a function call arrives whole; usage totals last."""
    pieces: list[dict[str, Any]] = []
    for part in parts:
        if "text" in part:
            texts = chunks(part["text"], 12)
            for position, text in enumerate(texts):
                piece = {key: value for key, value in part.items() if key not in ("text", "thoughtSignature")}
                piece["text"] = text
                if position == len(texts) - 1 and "thoughtSignature" in part:
                    piece["thoughtSignature"] = part["thoughtSignature"]
                pieces.append(piece)
        else:
            pieces.append(part)
    running = {"promptTokenCount": usage["promptTokenCount"], "totalTokenCount": usage["promptTokenCount"]}
    if "cachedContentTokenCount" in usage:
        running["cachedContentTokenCount"] = usage["cachedContentTokenCount"]
    out = []
    for position, piece in enumerate(pieces):
        last = position == len(pieces) - 1
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [piece]}, "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
            candidate |= extra or {}
        out.append(
            {
                "candidates": [candidate],
                "usageMetadata": usage if last else running,
                "modelVersion": model,
                "responseId": "mDkIaYHtLq2vz7IPq9",
            }
        )
    return out


def add_gemini(
    name: str,
    model: str,
    s: Split,
    parts: list[dict[str, Any]],
    *,
    tool_prompt: int = 0,
    thoughts_inside: bool = False,
    forms: tuple[str, ...] = ("sse",),
    priced: bool = True,
    extra: dict[str, Any] | None = None,
) -> None:
    usage = gemini_usage(s, tool_prompt=tool_prompt, thoughts_inside=thoughts_inside)
    calls = sum(1 for part in parts if "functionCall" in part)
    common = {"basis": "google", "model": model, "response_model": model, "split": s, "tool_calls": calls}
    common |= {"priced": priced}
    add(
        Case(
            name, "generate_content", body=dumps(gemini_json(model, parts, usage, **(extra or {}))), **common
        )
    )
    stream = gemini_chunks(model, parts, s, usage, extra)
    if "sse" in forms:
        raw = "".join(f"data: {dumps(chunk)}\r\n\r\n" for chunk in stream)
        add(Case(name + "_stream", "stream_generate_content", body=raw, form="sse", same_as=name, **common))
    if "array" in forms:
        raw = "[" + ",\r\n".join(dumps(chunk) for chunk in stream) + "]"
        add(Case(name + "_array", "stream_generate_content", body=raw, form="array", same_as=name, **common))


SIGNATURE = "CiQBzXlBOWZha2VTaWc="
add_gemini(
    "gem_flash_thoughts_cached",
    "gemini-2.5-flash",
    Split(1320, cache_read_tokens=1024, output_tokens=12 + 245, reasoning_tokens=245),
    [{"text": "Paris: 18 C, sunny."}],
)
add_gemini(
    "gem_flash_function_call",
    "gemini-2.5-flash",
    Split(96, output_tokens=18 + 60, reasoning_tokens=60),
    [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SIGNATURE}],
    forms=("sse", "array"),
)
add_gemini(
    "gem_pro_tool_use_prompt",
    "gemini-2.5-pro",
    Split(2400 + 5100, output_tokens=640 + 1210, reasoning_tokens=1210, web_search_requests=1),
    [{"text": "According to two recent reports, the bridge reopens in March."}],
    tool_prompt=5100,
    extra={"groundingMetadata": {"webSearchQueries": ["bridge reopening date"]}},
)
add_gemini(
    "gem_pro_long_context",
    "gemini-2.5-pro",
    Split(240000, cache_read_tokens=200000, output_tokens=800 + 3000, reasoning_tokens=3000),
    [{"text": "The contract's termination clause appears in sections 4 and 19."}],
    forms=(),
)
add_gemini(
    "gem_flash_thought_summary_text",
    "gemini-2.5-flash",
    Split(520, output_tokens=95 + 400, reasoning_tokens=400),
    [
        {"text": "**Weighing options** I compare the two plans by cost.", "thought": True},
        {"text": "Plan B is cheaper over three years.", "thoughtSignature": SIGNATURE},
    ],
    forms=("sse", "array"),
)
add_gemini(
    "gem_flash_thoughts_inside_candidates",
    "gemini-2.5-flash",
    Split(300, output_tokens=150, reasoning_tokens=100),
    [{"text": "Done."}],
    thoughts_inside=True,
    forms=(),
)
add_gemini(
    "gem_flash_audio_input",
    "gemini-2.5-flash",
    Split(4800, output_tokens=120, input_audio_tokens=4600),
    [{"text": "The caller asks to reschedule to Friday."}],
    forms=(),
)
add_gemini(
    "gem_unpriced_model",
    "gemini-ultra-internal",
    Split(100, output_tokens=20),
    [{"text": "ok"}],
    forms=(),
    priced=False,
)

_gem_split = Split(1320, cache_read_tokens=1024, output_tokens=12 + 245, reasoning_tokens=245)
_gem_stream = gemini_chunks(
    "gemini-2.5-flash",
    [{"text": "Paris: 18 C, sunny, light wind from the west."}],
    _gem_split,
    gemini_usage(_gem_split),
)
_gem_cut = "".join(f"data: {dumps(chunk)}\r\n\r\n" for chunk in _gem_stream[:-1]) + 'data: {"candid'
add(
    Case(
        "gem_stream_cut",
        "stream_generate_content",
        "google",
        "gemini-2.5-flash",
        "gemini-2.5-flash",
        Split(1320, cache_read_tokens=1024),
        _gem_cut,
        form="sse",
        complete=False,
        partial=True,
    )
)
_gem_array_cut = "[" + ",\r\n".join(dumps(chunk) for chunk in _gem_stream)
_gem_array_cut = _gem_array_cut[: _gem_array_cut.rindex('"finishReason"')]
add(
    Case(
        "gem_array_cut",
        "stream_generate_content",
        "google",
        "gemini-2.5-flash",
        "gemini-2.5-flash",
        Split(1320, cache_read_tokens=1024),
        _gem_array_cut,
        form="array",
        complete=False,
        partial=True,
    )
)
_gem_error = "".join(f"data: {dumps(chunk)}\r\n\r\n" for chunk in _gem_stream[:2])
_gem_error += (
    'data: {"error":{"code":503,"message":"The model is overloaded. Please try again later.",'
    '"status":"UNAVAILABLE"}}\r\n\r\n'
)
add(
    Case(
        "gem_stream_error",
        "stream_generate_content",
        "google",
        "gemini-2.5-flash",
        "gemini-2.5-flash",
        Split(1320, cache_read_tokens=1024),
        _gem_error,
        form="sse",
        complete=False,
        partial=True,
        error=True,
    )
)


# Writing ---------------------------------------------------------------------------------------

EXTENSIONS = {"json": ".json", "sse": ".sse", "array": ".array.json"}


def expected_usage(case: Case) -> dict[str, Any] | None:
    s = case.split
    if s is None:
        return None
    usage: dict[str, Any] = {key: value for key, value in vars(s).items() if key != "extra" and value}
    if case.tool_calls and not case.partial:
        usage["tool_calls"] = case.tool_calls
    if case.partial:
        usage["partial"] = True
    if case.service_tier:
        usage["service_tier"] = case.service_tier
    if case.speed:
        usage["speed"] = case.speed
    usage["response_model"] = case.response_model
    return usage


def price_context(case: Case) -> dict[str, str]:
    context = {}
    if case.service_tier and case.basis == "openai":
        context["service_tier"] = case.service_tier
    if case.speed:
        context["speed"] = case.speed
    return context


def expected_cost(case: Case) -> int | None:
    s = case.split
    if s is None or not case.priced:
        return None
    values = {key: value for key, value in vars(s).items() if key != "extra" and value}
    values.pop("reasoning_tokens", None)
    if s.reasoning_tokens:
        values["output_reasoning_tokens"] = s.reasoning_tokens
    if "web_search_requests" in values:
        values["web_searches"] = values.pop("web_search_requests")
    usage = genai_prices.Usage(**values)
    price = genai_prices.calc_price(
        usage,
        case.model,
        provider_id=GENAI_PROVIDER[case.basis],
        genai_request_timestamp=datetime.fromisoformat(PRICED_AT).astimezone(UTC),
        price_context=price_context(case) or None,
    )
    return int((price.total_price * 1_000_000_000).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def main() -> None:
    manifest = []
    for case in CASES:
        filename = case.name + EXTENSIONS[case.form]
        (HERE / filename).write_bytes(case.body.encode())
        manifest.append(
            {
                "name": case.name,
                "operation": case.operation,
                "cost_basis": case.basis,
                "model": case.model,
                "file": filename,
                "form": case.form,
                "complete": case.complete,
                "error": case.error,
                "same_as": case.same_as,
                "usage": expected_usage(case),
                "price_context": price_context(case),
                "priced_at": PRICED_AT,
                "nanodollars": expected_cost(case),
            }
        )
    (HERE / "cases.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(manifest)} cases written")


if __name__ == "__main__":
    main()
