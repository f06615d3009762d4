from __future__ import annotations

import contextlib
import copy
import json
import random
from typing import Any

import pytest

from tailgate.demo import DemoOptions, demo_answer
from tailgate.dialects import Operation
from tailgate.streams import SseEvent, iter_gemini_array, iter_sse, reassemble, tool_calls
from tailgate.usage import usage_from_response, usage_from_stream
from tests import streams_reference as reference
from tests.golden_corpus import BY_NAME, CASES, GoldenCase

# SSE parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_sse_line_endings(newline: str) -> None:
    raw = newline.join(["event: a", "data: 1", "", "data: 2", "", ""]).encode()
    assert list(iter_sse(raw)) == [SseEvent("a", "1"), SseEvent(None, "2")]


def test_sse_joins_data_lines_and_skips_comments() -> None:
    raw = b": keep-alive\n\ndata: first\n: note\ndata:second\ndata:  third\nid: 7\nretry: 10\n\n"
    assert list(iter_sse(raw)) == [SseEvent(None, "first\nsecond\n third")]


def test_sse_events_without_data_are_not_dispatched() -> None:
    assert list(iter_sse(b"event: ping\n\n\n\ndata\n\n")) == [SseEvent(None, "")]


def test_sse_incomplete_trailing_event_only_when_asked() -> None:
    raw = b'data: done\n\nevent: x\ndata: {"half'
    assert list(iter_sse(raw)) == [SseEvent(None, "done")]
    assert list(iter_sse(raw, include_incomplete=True)) == [SseEvent(None, "done"), SseEvent("x", '{"half')]
    unterminated = b"data: done\n\ndata: whole line\n"
    assert list(iter_sse(unterminated))[-1] == SseEvent(None, "done")
    assert list(iter_sse(unterminated, include_incomplete=True))[-1] == SseEvent(None, "whole line")


def test_sse_keeps_unicode_line_separators_inside_data() -> None:
    payload = '{"text":"a\u2028b\u0085c"}'
    assert [e.data for e in iter_sse(f"\ufeffdata: {payload}\n\n".encode())] == [payload]


def test_sse_survives_a_cut_inside_a_multibyte_character() -> None:
    raw = "data: é\n\ndata: é".encode()[:-1]
    assert [e.data for e in iter_sse(raw, include_incomplete=True)] == ["é", "\ufffd"]


def test_gemini_array_yields_complete_objects_of_a_cut_array() -> None:
    objects = [{"a": "x]}", "n": [1, {"b": "\\"}]}, {"c": '{["}'}]
    raw = ("[" + ",\r\n".join(json.dumps(o) for o in objects) + "]").encode()
    assert list(iter_gemini_array(raw)) == objects
    for cut in range(len(raw)):
        got = list(iter_gemini_array(raw[:cut]))
        assert got == objects[: len(got)]
    assert list(iter_gemini_array(raw[: raw.index(b"},\r\n{") + 1])) == objects[:1]
    assert list(iter_gemini_array(b'{"error": {"code": 500}}')) == [{"error": {"code": 500}}]
    assert list(iter_gemini_array(b"")) == []


# Reassembly: the streamed answer equals the unstreamed one -------------------------------------

PAIRS = [case for case in CASES if case.same_as is not None]


def _texts(operation: Operation, response: dict[str, Any]) -> list[str]:
    if operation is Operation.CHAT_COMPLETIONS:
        return [c["message"]["content"] or "" for c in response["choices"]]
    if operation is Operation.RESPONSES:
        return [
            part.get("text", "")
            for item in response["output"]
            if item["type"] == "message"
            for part in item["content"]
        ]
    if operation is Operation.MESSAGES:
        return [block.get("text") or block.get("thinking") or "" for block in response["content"]]
    return [p.get("text", "") for c in response["candidates"] for p in c["content"]["parts"]]


@pytest.mark.parametrize("case", PAIRS, ids=lambda case: case.name)
def test_reassembled_stream_equals_unstreamed_answer(case: GoldenCase) -> None:
    assert case.same_as is not None
    unstreamed = BY_NAME[case.same_as].body()
    result = reassemble(case.operation, case.raw, sse=case.form == "sse")
    assert result.complete and result.error is None and result.response is not None
    operation = case.operation
    assert _texts(operation, result.response) == _texts(operation, unstreamed)
    assert tool_calls(operation, result.response) == tool_calls(operation, unstreamed)
    assert usage_from_response(operation, result.response) == usage_from_response(operation, unstreamed)


def test_reassembled_anthropic_message_is_the_unstreamed_message() -> None:
    streamed = reassemble(Operation.MESSAGES, BY_NAME["msg_sonnet45_cache_read_tool_stream"].raw).response
    unstreamed = BY_NAME["msg_sonnet45_cache_read_tool"].body()
    assert streamed is not None
    assert streamed["content"] == unstreamed["content"]  # thinking + signature, text, tool input
    assert streamed["stop_reason"] == "tool_use"
    streamed_usage, final_usage = streamed["usage"], unstreamed["usage"]
    assert {k: streamed_usage[k] for k in final_usage if k != "cache_creation"} == {
        k: v for k, v in final_usage.items() if k != "cache_creation"
    }


def test_reassembled_responses_stream_is_the_terminal_response() -> None:
    result = reassemble(Operation.RESPONSES, BY_NAME["resp_gpt5_function_call_stream"].raw)
    assert result.response == BY_NAME["resp_gpt5_function_call"].body()


def test_reassembled_gemini_parts_are_merged() -> None:
    streamed = reassemble(
        Operation.STREAM_GENERATE_CONTENT, BY_NAME["gem_flash_thought_summary_text_stream"].raw
    )
    assert streamed.response is not None
    unstreamed = BY_NAME["gem_flash_thought_summary_text"].body()
    assert streamed.response["candidates"][0]["content"] == unstreamed["candidates"][0]["content"]
    assert streamed.response["candidates"][0]["finishReason"] == "STOP"
    assert streamed.response["usageMetadata"] == unstreamed["usageMetadata"]


# Reassembly details ----------------------------------------------------------------------------


def _sse(*events: Any, named: bool = False) -> bytes:
    out = []
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        name = f"event: {event['type']}\n" if named and isinstance(event, dict) else ""
        out.append(f"{name}data: {data}\n\n")
    return "".join(out).encode()


def test_chat_choices_tool_arguments_and_logprobs() -> None:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m"}
    raw = _sse(
        base | {"choices": [{"index": 1, "delta": {"role": "assistant", "content": "B"}}]},
        base | {"choices": [{"index": 0, "delta": {"content": "A", "reasoning_content": "th"}}]},
        base
        | {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "reasoning_content": "ink",
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "t1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"x"'},
                            }
                        ],
                    },
                    "logprobs": {"content": [{"token": "A"}]},
                }
            ]
        },
        base
        | {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ": 1}"}}]},
                    "logprobs": {"content": [{"token": "B"}]},
                    "finish_reason": "tool_calls",
                }
            ]
        },
        base | {"choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]},
        base | {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
        "[DONE]",
    )
    result = reassemble(Operation.CHAT_COMPLETIONS, raw)
    assert result.complete and result.response is not None
    first, second = result.response["choices"]
    assert first["message"]["content"] == "A" and first["message"]["reasoning_content"] == "think"
    assert first["message"]["tool_calls"] == [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    ]
    assert first["logprobs"] == {"content": [{"token": "A"}, {"token": "B"}]}
    assert (first["finish_reason"], second["finish_reason"]) == ("tool_calls", "stop")
    assert second["message"] == {"role": "assistant", "content": "B"}
    assert result.response["object"] == "chat.completion"
    assert result.response["usage"] == {"prompt_tokens": 3, "completion_tokens": 4}
    assert tool_calls(Operation.CHAT_COMPLETIONS, result.response) == [{"name": "f", "params": {"x": 1}}]


def test_chat_cut_stream_keeps_what_arrived() -> None:
    result = reassemble(Operation.CHAT_COMPLETIONS, BY_NAME["chat_stream_cut"].raw)
    assert not result.complete and result.response is not None
    assert result.response["choices"][0]["message"]["content"] == "A long answer that ne"
    assert result.response["usage"] is None
    error = reassemble(Operation.CHAT_COMPLETIONS, BY_NAME["chat_stream_error"].raw)
    assert error.error is not None and error.error["error"]["type"] == "server_error"


def test_responses_cut_stream_is_built_from_items_and_deltas() -> None:
    result = reassemble(Operation.RESPONSES, BY_NAME["resp_stream_cut"].raw)
    assert not result.complete and result.response is not None
    assert result.response["status"] == "in_progress"
    assert (
        result.response["output"][0]["content"][0]["text"] == "This answer is cut off i"
    )  # the cut event is dropped
    events = [
        {"type": "response.created", "response": {"id": "r", "output": [], "usage": None}},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"type": "function_call", "name": "f"},
        },
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": '{"a":'},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": "2}"},
        {"type": "response.output_text.delta", "output_index": 3, "delta": "orphan"},
        {"type": "response.refusal.delta", "output_index": 0, "content_index": 9, "delta": "no"},
    ]
    partial = reassemble(Operation.RESPONSES, _sse(*events, named=True)).response
    assert partial is not None
    assert tool_calls(Operation.RESPONSES, partial) == [{"name": "f", "params": {"a": 2}}]
    assert partial["output"][0]["content"] == [{"type": "refusal", "refusal": "no"}]


def test_responses_failed_and_error_events() -> None:
    failed = {"type": "response.failed", "response": {"id": "r", "status": "failed", "error": {"code": "x"}}}
    result = reassemble(Operation.RESPONSES, _sse(failed, named=True))
    assert result.complete and result.error == {"code": "x"}
    error = reassemble(Operation.RESPONSES, BY_NAME["resp_stream_error"].raw)
    assert not error.complete and error.error is not None and error.error["code"] == "server_error"


def test_anthropic_usage_is_overwritten_never_summed() -> None:
    start = {
        "type": "message_start",
        "message": {"id": "m", "content": [], "usage": {"input_tokens": 5, "output_tokens": 1}},
    }
    deltas = [
        {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 10}},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 25, "input_tokens": None},
        },
    ]
    result = reassemble(Operation.MESSAGES, _sse(start, *deltas, {"type": "message_stop"}, named=True))
    assert result.complete and result.response is not None
    assert result.response["usage"] == {"input_tokens": 5, "output_tokens": 25}
    assert result.response["stop_reason"] == "end_turn"


def test_anthropic_tool_input_on_cut_or_broken_json() -> None:
    events = [
        {"type": "message_start", "message": {"id": "m", "content": [], "usage": {}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "name": "a", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": '{"q": 1}'},
        },
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "name": "b", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"q": '},
        },
        {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "citations_delta", "citation": {"n": 1}},
        },
        {"type": "content_block_delta", "index": 7, "delta": {"type": "text_delta", "text": "lost"}},
    ]
    result = reassemble(Operation.MESSAGES, _sse(*events, named=True))
    assert not result.complete and result.response is not None
    assert tool_calls(Operation.MESSAGES, result.response) == [
        {"name": "a", "params": {"q": 1}},
        {"name": "b", "params": {}},
    ]
    assert result.response["content"][2] == {"type": "text", "text": "", "citations": [{"n": 1}]}


def test_anthropic_error_and_nothing_received() -> None:
    result = reassemble(Operation.MESSAGES, BY_NAME["msg_stream_error"].raw)
    assert result.error is not None and result.error["error"]["type"] == "overloaded_error"
    assert reassemble(Operation.MESSAGES, b"").response is None
    assert reassemble(Operation.MESSAGES, b'event: ping\ndata: {"type": "ping"}\n\n').response is None


def test_gemini_finish_usage_and_errors() -> None:
    chunks = [
        {
            "candidates": [{"content": {"role": "model", "parts": [{"text": "a"}]}}],
            "usageMetadata": {"promptTokenCount": 3},
        },
        {
            "candidates": [
                {"content": {"parts": [{"text": "b"}, {"functionCall": {"name": "f", "args": {"x": 1}}}]}}
            ]
        },
        {
            "candidates": [{"content": {"parts": [{"text": "c"}]}, "finishReason": "STOP"}],
            "modelVersion": "g",
        },
    ]
    result = reassemble(Operation.STREAM_GENERATE_CONTENT, _sse(*chunks))
    assert result.complete and result.response is not None
    candidate = result.response["candidates"][0]
    assert candidate["content"]["parts"] == [
        {"text": "ab"},
        {"functionCall": {"name": "f", "args": {"x": 1}}},
        {"text": "c"},
    ]
    assert result.response["usageMetadata"] == {"promptTokenCount": 3}
    assert result.response["modelVersion"] == "g"
    cut = reassemble(Operation.STREAM_GENERATE_CONTENT, _sse(*chunks[:2]))
    assert not cut.complete
    blocked = reassemble(
        Operation.STREAM_GENERATE_CONTENT, _sse({"promptFeedback": {"blockReason": "SAFETY"}})
    )
    assert blocked.complete
    error = reassemble(Operation.STREAM_GENERATE_CONTENT, b'[{"error": {"code": 429}}]', sse=False)
    assert error.response is None and error.error == {"error": {"code": 429}}


def test_malformed_events_are_ignored() -> None:
    raw = _sse("not json", "[1, 2]", {"choices": "x", "id": "i"}, {"choices": [{"index": "0", "delta": [1]}]})
    result = reassemble(Operation.CHAT_COMPLETIONS, raw)
    assert result.response is not None and not result.complete
    for operation in Operation:
        reassemble(operation, b'data: {"candidates": 1, "message": 2, "type": "message_start"}\n\n')
    assert reassemble(Operation.COUNT_TOKENS, b"data: {}\n\n").response is None


# Tool calls ------------------------------------------------------------------------------------


def test_tool_calls_per_dialect_and_lenient_arguments() -> None:
    chat = {
        "choices": [
            {
                "message": {
                    "tool_calls": [
                        {"function": {"name": "ok", "arguments": '{"a": 1}'}},
                        {"function": {"name": "broken", "arguments": '{"a": '}},
                        {"function": {"name": "scalar", "arguments": "3"}},
                        {"function": {"name": "empty", "arguments": ""}},
                        "junk",
                    ],
                    "function_call": {"name": "legacy", "arguments": "{}"},
                }
            }
        ]
    }
    assert tool_calls(Operation.CHAT_COMPLETIONS, chat) == [
        {"name": "ok", "params": {"a": 1}},
        {"name": "broken", "params": {"_raw": '{"a": '}},
        {"name": "scalar", "params": {"value": 3}},
        {"name": "empty", "params": {}},
        {"name": "", "params": {}},
        {"name": "legacy", "params": {}},
    ]
    responses = {
        "output": [
            {"type": "function_call", "name": "f", "arguments": '{"b": 2}'},
            {"type": "custom_tool_call", "name": "sh", "input": "ls"},
            {"type": "message"},
        ]
    }
    assert tool_calls(Operation.RESPONSES, responses) == [
        {"name": "f", "params": {"b": 2}},
        {"name": "sh", "params": {"input": "ls"}},
    ]
    messages = {"content": [{"type": "text"}, {"type": "tool_use", "name": "t", "input": {"c": 3}}]}
    assert tool_calls(Operation.MESSAGES, messages) == [{"name": "t", "params": {"c": 3}}]
    gemini = {
        "candidates": [
            {"content": {"parts": [{"text": "x"}, {"functionCall": {"name": "g", "args": {"d": 4}}}]}}
        ]
    }
    assert tool_calls(Operation.GENERATE_CONTENT, gemini) == [{"name": "g", "params": {"d": 4}}]
    assert tool_calls(Operation.COUNT_TOKENS, {"input_tokens": 1}) == []


# The fast path against the reference -----------------------------------------------------------
#
# ``tests/streams_reference.py`` reassembles the slow, obvious way. The fast code must give the
# same answer, byte for byte once serialised, on the corpus, on the demo provider's streams and
# on random variants of both: re-chunked, re-framed, cut and corrupted.


def _dump(value: object) -> str:
    # json keeps key order, integers past 64 bits and NaN, and tells 1 from 1.0 and true.
    return json.dumps(value)


def _assert_unshared(value: object) -> None:
    """No dict or list appears twice in the answer (the fast path stores parsed objects uncopied)."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict | list):
            assert id(item) not in seen
            seen.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)


def _assert_same(operation: Operation, raw: bytes, sse: bool) -> None:
    fast = reassemble(operation, raw, sse=sse)
    slow = reference.reassemble(operation, raw, sse_form=sse)
    assert _dump(fast.response) == _dump(slow.response)
    assert (fast.complete, _dump(fast.error)) == (slow.complete, _dump(slow.error))
    _assert_unshared(fast.response)
    usage, _ = usage_from_stream(operation, raw, sse=sse)
    expected = usage_from_response(operation, slow.response) if slow.response is not None else None
    if expected is not None and not slow.complete:
        expected.partial = True
    assert usage == expected
    if sse:
        for incomplete in (False, True):
            events = list(iter_sse(raw, include_incomplete=incomplete))
            assert events == list(reference.sse(raw, include_incomplete=incomplete))
    else:
        assert _dump(list(iter_gemini_array(raw))) == _dump(list(reference.gemini_array(raw)))


def _demo_streams() -> list[tuple[str, Operation, bool, bytes]]:
    request = {
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "stream_options": {"include_usage": True},
        "input": "Weather in Paris?",
        "contents": [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}],
        "tools": [{"type": "function", "name": "get_weather", "function": {"name": "get_weather"}}],
    }
    shapes = {
        "text": DemoOptions(chunks=20),
        "tools": DemoOptions(chunks=3, tool_call=True),
        "reasoning": DemoOptions(chunks=5, reasoning=True, cache=True),
    }
    streams = []
    for operation, query in [
        (Operation.CHAT_COMPLETIONS, ""),
        (Operation.RESPONSES, ""),
        (Operation.MESSAGES, ""),
        (Operation.STREAM_GENERATE_CONTENT, "alt=sse"),
        (Operation.STREAM_GENERATE_CONTENT, ""),
    ]:
        for shape, options in shapes.items():
            answer = demo_answer(operation, "m", request, stream=True, query=query, options=options)
            streams.append(
                (f"demo_{operation}{'_sse' if query else ''}_{shape}", operation, bool(query), answer.body)
            )
    return [
        (name, op, sse or op is not Operation.STREAM_GENERATE_CONTENT, raw) for name, op, sse, raw in streams
    ]


def _odd_streams() -> list[tuple[str, Operation, bool, bytes]]:
    """Endings the corpus lacks: a failed response, a blocked prompt, tool input after its stop."""
    failed = [
        {"type": "response.created", "response": {"id": "r", "status": "in_progress", "output": []}},
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "message", "content": []}},
        {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": "Hel"},
        {"type": "error", "code": "server_error", "message": "retry"},
        {"type": "response.failed", "response": {"id": "r", "status": "failed", "error": {"code": "x"}}},
    ]
    blocked = [
        {"candidates": [{"content": {"parts": [{"text": "a"}], "role": "model"}, "index": 0}]},
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}},
    ]
    late_input = [
        {"type": "message_start", "message": {"id": "m", "content": [], "usage": {"input_tokens": 3}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": '{"a": 1}'},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": " "},
        },
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
    ]
    return [
        ("odd_responses_failed", Operation.RESPONSES, True, _sse(*failed, named=True)),
        ("odd_gemini_blocked", Operation.STREAM_GENERATE_CONTENT, True, _sse(*blocked)),
        ("odd_messages_late_input", Operation.MESSAGES, True, _sse(*late_input, named=True)),
    ]


STREAMS = (
    [(c.name, c.operation, c.form == "sse", c.raw) for c in CASES if c.streamed]
    + _odd_streams()
    + _demo_streams()
)


@pytest.mark.parametrize(("name", "operation", "sse", "raw"), STREAMS, ids=[s[0] for s in STREAMS])
def test_fast_equals_reference(name: str, operation: Operation, sse: bool, raw: bytes) -> None:
    _assert_same(operation, raw, sse)
    rng = random.Random(name)
    for _ in range(40):
        _assert_same(operation, _variant(operation, raw, sse, rng), sse)


@pytest.mark.parametrize(
    ("name", "operation", "sse", "raw"), STREAMS[-14::3], ids=[s[0] for s in STREAMS[-14::3]]
)
def test_fast_equals_reference_cut_anywhere(name: str, operation: Operation, sse: bool, raw: bytes) -> None:
    rng = random.Random(name)
    raw = _variant(operation, raw, sse, rng, framing=False)
    ends = {
        *range(100),
        *range(len(raw) - 100, len(raw) + 1),
        *rng.sample(range(len(raw)), min(len(raw), 200)),
    }
    for cut in sorted(end for end in ends if 0 <= end <= len(raw)):
        _assert_same(operation, raw[:cut], sse)


@pytest.mark.parametrize(
    ("name", "operation", "sse", "raw"), STREAMS[-14::3], ids=[s[0] for s in STREAMS[-14::3]]
)
def test_fast_equals_reference_with_any_field_odd(
    name: str, operation: Operation, sse: bool, raw: bytes
) -> None:
    """Every field of every event, in turn, null or negative (a last non-null value wins)."""
    events = (
        [(e.event, e.data) for e in reference.sse(raw)]
        if sse
        else [(None, json.dumps(o)) for o in reference.gemini_array(raw)]
    )
    for position, (event, data) in enumerate(events):
        if not data.startswith("{"):
            continue
        for path in _field_paths(json.loads(data)):
            for odd in (None, -1):
                value = json.loads(data)
                target = value
                for step in path[:-1]:
                    target = target[step]
                target[path[-1]] = odd
                changed = [*events[:position], (event, json.dumps(value)), *events[position + 1 :]]
                body = (
                    _sse_body(changed, random.Random(0), False)
                    if sse
                    else _array_body(changed, random.Random(0), False)
                )
                _assert_same(operation, body, sse)


def _field_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in [(*path, key), *_field_paths(item, (*path, key))]]
    if isinstance(value, list):
        return [p for index, item in enumerate(value) for p in _field_paths(item, (*path, index))]
    return []


def test_fast_framing_edge_cases() -> None:
    for raw in [
        b"",
        b"\n",
        b"\r\n\r\n",
        b"data",
        b"data\n\n",
        b"event: x\n",
        b"event: x\ndata: 1",
        b"event: x\n\ndata: 1\n\n",
        b"event:\ndata: 1\n\n",
        b"data: 1\r\rdata: 2\r\n\r\n",
        b"data: 1\n\n\n\ndata: 2\n\n",
        b"\xef\xbb\xbfdata: 1\n\n",
        b"data: a\ndata: b\n\ndata:c\n\n",
        b"data: [DONE]\n\n",
        b"data:  [DONE] \n\n",
        b"data: \xff\xfe\n\n",
        b'data: {"choices": [{"delta": {"content": "\xff"}}]}\n\n',
    ]:
        for operation in (Operation.CHAT_COMPLETIONS, Operation.RESPONSES, Operation.MESSAGES):
            _assert_same(operation, raw, True)
        _assert_same(Operation.STREAM_GENERATE_CONTENT, raw, True)
    for raw in [
        b'[[{"a": 1}], {"b": 2}]',
        b'[{"n": 123456789012345678901234567890}]',
        b'[{"n": -9223372036854775809}]',
        b'[{"n": NaN}]',
        b'[{"n": 1e400}]',
        b'\xef\xbb\xbf[{"a": 1}]',
        b'{"a": 1}{"b": 2}',
        b'[{"a": "\xff"}]',
        b'[1, "x", {"a": 1}, null]',
        b'"text"',
        b"]",
    ]:
        _assert_same(Operation.STREAM_GENERATE_CONTENT, raw, False)


def _variant(
    operation: Operation, raw: bytes, sse: bool, rng: random.Random, *, framing: bool = True
) -> bytes:
    """``raw`` re-chunked and reordered a little, then re-framed, cut or corrupted at random."""
    if sse:
        events: list[tuple[str | None, str]] = [
            (e.event, e.data) for e in reference.sse(raw, include_incomplete=True)
        ]
    else:
        events = [(None, json.dumps(item)) for item in reference.gemini_array(raw)]
    chunked: list[tuple[str | None, str]] = []
    for name, data in events:
        try:
            value = json.loads(data)
        except ValueError:
            value = None
        if isinstance(value, dict) and rng.random() < 0.3:
            chunked += [(name, json.dumps(piece)) for piece in _rechunk(operation, value, rng)]
        elif isinstance(value, dict) and framing and rng.random() < 0.1:
            chunked.append((name, json.dumps(_perturb(value, rng))))
        else:
            chunked.append((name, data))
    if chunked and framing and rng.random() < 0.5:
        # Nulls and odd types where streams end matter most (a last non-null value wins).
        end = len(chunked) - 1
        position = rng.choice([0, end, end, max(end - 1, 0), rng.randrange(len(chunked))])
        name, data = chunked[position]
        with contextlib.suppress(ValueError):  # not JSON: left as it is
            chunked[position] = (name, json.dumps(_perturb(json.loads(data), rng)))
    if chunked and rng.random() < 0.3:
        position = rng.randrange(len(chunked))
        edit = rng.choice(["drop", "repeat", "swap"])
        if edit == "drop":
            del chunked[position]
        elif edit == "repeat":
            chunked.insert(position, chunked[position])
        elif position + 1 < len(chunked):
            chunked[position], chunked[position + 1] = chunked[position + 1], chunked[position]
    body = _sse_body(chunked, rng, framing) if sse else _array_body(chunked, rng, framing)
    if framing and rng.random() < 0.3:
        body = body[: rng.randrange(len(body) + 1)]
    if framing and body and rng.random() < 0.1:
        at = rng.randrange(len(body))
        body = body[:at] + rng.choice([b"\xff", b"\xc3", b"\r", b"\n", b"}", b"\\"]) + body[at:]
    return body


def _rechunk(operation: Operation, event: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """``event`` as two events, one of its streamed strings split between them (when it has one)."""
    first, second = copy.deepcopy(event), copy.deepcopy(event)
    places: list[tuple[dict[str, Any], dict[str, Any], str]] = []

    def add(a: Any, b: Any, key: str) -> None:
        if isinstance(a, dict) and isinstance(a.get(key), str) and len(a[key]) > 1:
            places.append((a, b, key))

    if operation is Operation.CHAT_COMPLETIONS:
        for a, b in zip(first.get("choices") or [], second.get("choices") or [], strict=True):
            for key in ("content", "reasoning_content"):
                add(a.get("delta"), b.get("delta"), key)
            for call_a, call_b in zip(
                a.get("delta", {}).get("tool_calls") or [],
                b.get("delta", {}).get("tool_calls") or [],
                strict=True,
            ):
                add(call_a.get("function"), call_b.get("function"), "arguments")
    elif operation is Operation.RESPONSES:
        add(first, second, "delta")
    elif operation is Operation.MESSAGES:
        for key in ("text", "thinking", "partial_json"):
            add(first.get("delta"), second.get("delta"), key)
    else:
        for a, b in zip(first.get("candidates") or [], second.get("candidates") or [], strict=True):
            for part_a, part_b in zip(
                a.get("content", {}).get("parts") or [], b.get("content", {}).get("parts") or [], strict=True
            ):
                add(part_a, part_b, "text")
    if not places:
        return [event]
    a, b, key = rng.choice(places)
    cut = rng.randrange(1, len(a[key]))
    a[key], b[key] = a[key][:cut], b[key][cut:]
    return [first, second]


def _perturb(value: Any, rng: random.Random) -> Any:
    """``value`` with one field somewhere inside it nulled or given a value of another type."""
    mappings = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            mappings += [item] if item else []
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    if not mappings:
        return value
    target = value if value in mappings and rng.random() < 0.4 else rng.choice(mappings)
    odd = [None, None, None, "", "x", 0, -1, 2, True, [], {}, [1], {"a": None}]
    target[rng.choice(sorted(target))] = rng.choice(odd)
    return value


def _sse_body(events: list[tuple[str | None, str]], rng: random.Random, framing: bool) -> bytes:
    lines: list[str] = []
    for name, payload in events:
        data = payload
        if framing and rng.random() < 0.3:
            with contextlib.suppress(ValueError):
                data = json.dumps(json.loads(payload), indent=rng.choice([1, 2]))
        block = [
            rng.choice(["data: ", "data:"]) + line if framing else "data: " + line
            for line in data.split("\n")
        ]
        if name is not None:
            block.insert(rng.choice([0, len(block)]) if framing else 0, "event: " + name)
        if framing and rng.random() < 0.2:
            block.insert(
                rng.randrange(len(block) + 1), rng.choice([": keep-alive", "id: 7", "retry: 100", ":"])
            )
        lines += block + [""] * (2 if framing and rng.random() < 0.1 else 1)
    ending = rng.choice(["\n", "\r\n", "\r", "mixed"]) if framing else "\n"
    pieces = [line + (rng.choice(["\n", "\r\n", "\r"]) if ending == "mixed" else ending) for line in lines]
    bom = "\ufeff" if framing and rng.random() < 0.1 else ""
    return (bom + "".join(pieces)).encode()


def _array_body(events: list[tuple[str | None, str]], rng: random.Random, framing: bool) -> bytes:
    items = [data for _, data in events]
    if framing and rng.random() < 0.2:
        items.insert(rng.randrange(len(items) + 1), rng.choice(['[{"nested": 1}]', "7", '"s"', "null"]))
    if framing and items and rng.random() < 0.2:
        at = rng.randrange(len(items))
        extra = rng.choice(['"big": 123456789012345678901234', '"nan": NaN', '"neg": -9223372036854775809'])
        if items[at].startswith("{") and items[at] != "{}":
            items[at] = "{" + extra + ", " + items[at][1:]
    separator = rng.choice([",", ",\r\n", "\n,\n", " , "]) if framing else ",\r\n"
    if framing and rng.random() < 0.1:
        return "".join(items).encode()
    return ("[" + separator.join(items) + "]").encode()
