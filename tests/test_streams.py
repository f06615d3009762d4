from __future__ import annotations

import json
from typing import Any

import pytest

from tailgate.dialects import Operation
from tailgate.framing import SseEvent, iter_gemini_array, iter_sse
from tailgate.streams import reassemble, tool_calls
from tailgate.usage import usage_from_response
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
