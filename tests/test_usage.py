from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from google.genai.types import GenerateContentResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tailgate import usage as usage_module
from tailgate.dialects import Operation
from tailgate.framing import iter_gemini_array, iter_sse
from tailgate.streams import count_tool_calls, reassemble, tool_calls
from tailgate.usage import Usage, usage_from_response, usage_from_stream
from tests.golden_corpus import CASES, GoldenCase

# The golden corpus -----------------------------------------------------------------------------


def test_corpus_is_broad() -> None:
    operations = {case.operation for case in CASES}
    assert len(CASES) >= 40
    assert operations >= {
        Operation.CHAT_COMPLETIONS,
        Operation.RESPONSES,
        Operation.MESSAGES,
        Operation.GENERATE_CONTENT,
        Operation.STREAM_GENERATE_CONTENT,
    }
    usages = [case.usage for case in CASES if case.usage is not None]
    assert any(u.cache_read_tokens for u in usages)
    assert any(u.cache_write_5m_tokens for u in usages)
    assert any(u.cache_write_1h_tokens for u in usages)
    assert any(u.cache_write_tokens and not u.cache_write_5m_tokens for u in usages)
    assert any(u.reasoning_tokens for u in usages)
    assert any(u.tool_calls > 1 for u in usages)
    assert any(u.partial for u in usages)
    assert any(u.web_search_requests for u in usages)
    assert any(not case.complete for case in CASES)
    assert any(case.error for case in CASES)
    assert any(case.nanodollars is None and case.usage is not None for case in CASES)
    assert sum(case.streamed for case in CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_corpus_usage(case: GoldenCase) -> None:
    usage, reassembled = case.extract()
    assert usage == case.usage
    if reassembled is not None:
        assert reassembled.complete is case.complete
        assert (reassembled.error is not None) is case.error


_SDK_MODELS: dict[Operation, Any] = {
    Operation.CHAT_COMPLETIONS: ChatCompletion,
    Operation.RESPONSES: Response,
    Operation.MESSAGES: Message,
    Operation.GENERATE_CONTENT: GenerateContentResponse,
    Operation.STREAM_GENERATE_CONTENT: GenerateContentResponse,
}
_STREAM_EVENTS: dict[Operation, Any] = {
    Operation.CHAT_COMPLETIONS: TypeAdapter(ChatCompletionChunk),
    Operation.RESPONSES: TypeAdapter(ResponseStreamEvent),
    Operation.MESSAGES: TypeAdapter(RawMessageStreamEvent),
    Operation.STREAM_GENERATE_CONTENT: TypeAdapter(GenerateContentResponse),
}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_corpus_is_wire_shaped(case: GoldenCase) -> None:
    """Every body and every complete stream event validates against the official SDK's models."""
    if not case.streamed:
        _SDK_MODELS[case.operation].model_validate(case.body())
        return
    adapter = _STREAM_EVENTS[case.operation]
    if case.form == "array":
        events = [orjson.dumps(chunk).decode() for chunk in iter_gemini_array(case.raw)]
    else:
        events = [
            e.data for e in iter_sse(case.raw) if e.data != "[DONE]" and e.event not in ("ping", "error")
        ]
    assert events
    for event in events:
        if event.startswith('{"error"'):
            continue  # OpenAI and Gemini mid-stream errors are not members of the SDK's chunk types
        adapter.validate_json(event)


# Usage semantics, field by field ---------------------------------------------------------------


def test_anthropic_input_excludes_cache_so_both_are_added() -> None:
    usage = usage_from_response(
        Operation.MESSAGES,
        {
            "model": "claude-sonnet-4-5-20250929",
            "usage": {
                "input_tokens": 10,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 1000,
                "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 600},
                "output_tokens": 7,
                "output_tokens_details": {"thinking_tokens": 5},
                "server_tool_use": {"web_search_requests": 3},
                "service_tier": "priority",
                "speed": "fast",
            },
        },
    )
    assert usage == Usage(
        input_tokens=1110,
        cache_read_tokens=100,
        cache_write_tokens=1000,
        cache_write_5m_tokens=400,
        cache_write_1h_tokens=600,
        output_tokens=7,
        reasoning_tokens=5,
        web_search_requests=3,
        service_tier="priority",
        speed="fast",
        response_model="claude-sonnet-4-5-20250929",
    )
    assert usage.uncached_input_tokens == 10


def test_anthropic_unsplit_creation_counts_as_five_minutes() -> None:
    usage = usage_from_response(
        Operation.MESSAGES,
        {"usage": {"input_tokens": 1, "cache_creation_input_tokens": 50, "output_tokens": 2}},
    )
    assert usage is not None
    assert (usage.cache_write_tokens, usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (50, 50, 0)
    partly = usage_from_response(
        Operation.MESSAGES,
        {
            "usage": {
                "input_tokens": 1,
                "cache_creation_input_tokens": 50,
                "cache_creation": {"ephemeral_1h_input_tokens": 20},
                "output_tokens": 2,
            }
        },
    )
    assert partly is not None
    assert (partly.cache_write_5m_tokens, partly.cache_write_1h_tokens) == (30, 20)


def test_openai_cache_is_inside_prompt_tokens() -> None:
    usage = usage_from_response(
        Operation.CHAT_COMPLETIONS,
        {
            "model": "gpt-5.6-sol",
            "service_tier": "flex",
            "choices": [],
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 50, "audio_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 15, "audio_tokens": 2},
            },
        },
    )
    assert usage == Usage(
        input_tokens=100,
        cache_read_tokens=30,
        cache_write_tokens=50,
        output_tokens=20,
        reasoning_tokens=15,
        service_tier="flex",
        response_model="gpt-5.6-sol",
        input_audio_tokens=4,
        output_audio_tokens=2,
    )
    assert usage.uncached_input_tokens == 20
    assert usage.total_tokens == 120


def test_responses_web_searches_reported_or_counted() -> None:
    base: dict[str, Any] = {"usage": {"input_tokens": 5, "output_tokens": 1}}
    counted = dict(
        base, output=[{"type": "web_search_call"}, {"type": "web_search_call"}, {"type": "message"}]
    )
    reported = dict(counted, tool_usage={"web_search": {"num_requests": 5}})
    assert usage_from_response(Operation.RESPONSES, counted).web_search_requests == 2  # type: ignore[union-attr]
    assert usage_from_response(Operation.RESPONSES, reported).web_search_requests == 5  # type: ignore[union-attr]


def test_gemini_thoughts_outside_candidates_unless_the_total_says_otherwise() -> None:
    def output(meta: dict[str, Any]) -> tuple[int, int]:
        usage = usage_from_response(Operation.GENERATE_CONTENT, {"usageMetadata": meta})
        assert usage is not None
        return usage.output_tokens, usage.reasoning_tokens

    outside = {
        "promptTokenCount": 10,
        "candidatesTokenCount": 5,
        "thoughtsTokenCount": 20,
        "totalTokenCount": 35,
    }
    inside = dict(outside, totalTokenCount=15)
    no_total = {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 20}
    assert output(outside) == (25, 20)
    assert output(inside) == (5, 20)
    assert output(no_total) == (25, 20)


def test_gemini_tool_prompt_is_input_and_tiers_are_read() -> None:
    usage = usage_from_response(
        Operation.GENERATE_CONTENT,
        {
            "modelVersion": "gemini-2.5-pro",
            "usageMetadata": {
                "promptTokenCount": 100,
                "toolUsePromptTokenCount": 40,
                "cachedContentTokenCount": 60,
                "candidatesTokenCount": 9,
                "trafficType": "ON_DEMAND_FLEX",
                "promptTokensDetails": [
                    {"modality": "TEXT", "tokenCount": 70},
                    {"modality": "AUDIO", "tokenCount": 30},
                ],
                "cacheTokensDetails": [
                    {"modality": "AUDIO", "tokenCount": 10},
                    {"modality": "IMAGE", "tokenCount": 5},
                ],
                "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 9}],
            },
        },
    )
    assert usage == Usage(
        input_tokens=140,
        cache_read_tokens=60,
        output_tokens=9,
        service_tier="flex",
        response_model="gemini-2.5-pro",
        input_audio_tokens=30,
        cache_audio_read_tokens=10,
        cache_image_read_tokens=5,
        output_image_tokens=9,
    )
    api_tier = usage_from_response(Operation.GENERATE_CONTENT, {"usageMetadata": {"serviceTier": "priority"}})
    assert api_tier is not None and api_tier.service_tier == "priority"


@pytest.mark.parametrize(
    "operation",
    [Operation.CHAT_COMPLETIONS, Operation.RESPONSES, Operation.MESSAGES, Operation.GENERATE_CONTENT],
)
def test_null_missing_and_malformed_fields_are_zero(operation: Operation) -> None:
    key = "usageMetadata" if operation is Operation.GENERATE_CONTENT else "usage"
    garbage = {
        "prompt_tokens": None,
        "input_tokens": "12",
        "output_tokens": -4,
        "completion_tokens": True,
        "promptTokenCount": [1],
        "candidatesTokenCount": None,
        "prompt_tokens_details": None,
        "input_tokens_details": "x",
        "cache_creation": 7,
        "cachedContentTokenCount": 3.0,
    }
    usage = usage_from_response(operation, {key: garbage, "choices": None, "content": "x", "candidates": 1})
    assert usage is not None
    assert usage.input_tokens == usage.output_tokens == usage.tool_calls == 0
    assert usage.cache_read_tokens == (3 if operation is Operation.GENERATE_CONTENT else 0)


@pytest.mark.parametrize(
    "operation",
    [Operation.CHAT_COMPLETIONS, Operation.RESPONSES, Operation.MESSAGES, Operation.GENERATE_CONTENT],
)
def test_answers_without_usage_give_none(operation: Operation) -> None:
    assert usage_from_response(operation, {"id": "x", "usage": None, "usageMetadata": None}) is None


def test_count_tokens_is_not_metered() -> None:
    assert usage_from_response(Operation.COUNT_TOKENS, {"input_tokens": 2090}) is None
    assert usage_from_response(Operation.GEMINI_COUNT_TOKENS, {"totalTokens": 31}) is None
    assert usage_from_stream(Operation.COUNT_TOKENS, b'data: {"input_tokens": 3}\n\n')[0] is None


def test_tool_calls_are_counted() -> None:
    usage = usage_from_response(
        Operation.GENERATE_CONTENT,
        {
            "candidates": [
                {"content": {"parts": [{"functionCall": {"name": "a", "args": {}}}, {"text": "x"}]}},
                {"content": {"parts": [{"functionCall": {"name": "b"}}]}},
            ],
            "usageMetadata": {"promptTokenCount": 1},
        },
    )
    assert usage is not None and usage.tool_calls == 2


def test_stream_usage_is_partial_only_when_cut() -> None:
    start = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message","role":'
        b'"assistant","model":"claude-haiku-4-5","content":[],"usage":{"input_tokens":9,"output_tokens":1}}}\n\n'
    )
    cut, _ = usage_from_stream(Operation.MESSAGES, start)
    assert cut == Usage(input_tokens=9, output_tokens=1, partial=True, response_model="claude-haiku-4-5")
    stop = (
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":30}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    whole, reassembled = usage_from_stream(Operation.MESSAGES, start + stop)
    assert reassembled.complete
    assert whole == Usage(input_tokens=9, output_tokens=30, response_model="claude-haiku-4-5")
    assert usage_from_stream(Operation.CHAT_COMPLETIONS, b"")[0] is None


_ODD_COUNTS: list[Any] = [
    None,
    0,
    7,
    -3,
    True,
    False,
    2.9,
    -1.5,
    float("nan"),
    float("inf"),
    "12",
    [],
    {},
    2**70,
]


def test_counts_read_each_value_as_a_count() -> None:
    assert [usage_module._count(value) for value in _ODD_COUNTS] == [
        0,
        0,
        7,
        0,
        0,
        0,
        2,
        0,
        0,
        0,
        0,
        0,
        0,
        2**70,
    ]
    source = {str(position): value for position, value in enumerate(_ODD_COUNTS)}
    keys = [*source, "missing"]
    assert usage_module._counts(source, *keys) == [usage_module._count(source.get(key)) for key in keys]
    for not_a_mapping in (None, 3, "x", [1], ["0"]):
        assert usage_module._counts(not_a_mapping, "0", "1") == [0, 0]


def test_tool_calls_are_counted_as_listed() -> None:
    """The count never parses arguments, yet equals the length of the parsed list, junk included."""
    answers: list[tuple[Operation, Any]] = [
        (
            case.operation,
            case.body()
            if not case.streamed
            else reassemble(case.operation, case.raw, sse=case.form == "sse").response,
        )
        for case in CASES
    ]
    odd: list[Any] = [
        {"choices": [{"message": {"tool_calls": ["junk", {}], "function_call": {"name": "f"}}}, "x", None]},
        {"choices": [{"message": {"tool_calls": None, "function_call": {}}}], "output": "x"},
        {"choices": [{"message": {"function_call": "f"}}, {"message": {"function_call": ["f"]}}]},
        {"output": [{"type": "function_call"}, {"type": "custom_tool_call"}, {"type": ["x"]}, None]},
        {"content": [{"type": "tool_use"}, "x", {"type": "text"}], "candidates": {"x": 1}},
        {"candidates": [{"content": {"parts": [{"functionCall": {}}, {"functionCall": {"n": 1}}, 3]}}, None]},
        {"choices": "x", "output": None, "content": 5, "candidates": [{"content": None}]},
    ]
    for operation in Operation:
        answers += [(operation, answer) for answer in odd]
    for operation, answer in answers:
        if answer is None:
            continue  # a stream that carried nothing
        assert count_tool_calls(operation, answer) == len(tool_calls(operation, answer))
