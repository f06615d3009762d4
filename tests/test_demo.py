"""The demo provider speaks each provider's wire format exactly: checked against the SDKs' own
models (no unknown fields) and through the official SDKs over loopback HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pydantic
import pytest
from aiohttp import web
from anthropic.types import Message, RawMessageStreamEvent
from google import genai
from google.genai import types as gtypes
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from tailgate.demo import (
    CACHE_READ_TOKENS,
    CACHE_WRITE_TOKENS,
    ECHO_CHARS,
    REASONING_TOKENS,
    DemoAnswer,
    DemoOptions,
    demo_answer,
)
from tailgate.dialects import Operation
from tests.mock_upstream import route, serve

GREETING = "Hello from tailgate's demo provider."
MESSAGES = [{"role": "user", "content": "What is a gateway?"}]
RESPONSES_EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)
REAL_BUT_UNDECLARED = {"store"}
"""Fields the real APIs send that the SDK models leave out (OpenAI responses echo ``store``)."""
ANTHROPIC_EVENTS = pydantic.TypeAdapter(RawMessageStreamEvent)


# -- helpers ---------------------------------------------------------------------------------------


def strict(value: Any) -> Any:
    """Fail on any field the SDK model does not declare (a misspelt key would land in extras)."""
    if isinstance(value, pydantic.BaseModel):
        extra = set(value.model_extra or ()) - REAL_BUT_UNDECLARED
        assert not extra, f"{type(value).__name__} has unknown fields {extra}"
        for name in type(value).model_fields:
            strict(getattr(value, name))
    elif isinstance(value, list | tuple):
        for item in value:
            strict(item)
    return value


def sse_events(answer: DemoAnswer) -> list[tuple[str | None, str]]:
    """Each chunk as one (event, data) pair; asserts every chunk is exactly one SSE event."""
    assert answer.content_type == "text/event-stream"
    assert answer.body == b"".join(answer.chunks)
    events = []
    for chunk in answer.chunks:
        text = chunk.decode()
        terminator = "\r\n\r\n" if text.endswith("\r\n\r\n") else "\n\n"
        assert text.endswith(terminator) and text.count(terminator) == 1, chunk
        fields = dict(line.split(": ", 1) for line in text[: -len(terminator)].splitlines())
        events.append((fields.get("event"), fields["data"]))
    return events


def answer(operation: Operation, body: dict[str, Any], *, stream: bool = False, **kwargs: Any) -> DemoAnswer:
    return demo_answer(operation, "demo-model", body, stream=stream, **kwargs)


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "demo-model", "messages": [{"role": "user", "content": content}], **extra}


def gemini(content: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": content}]}]}


def estimate(text_chars: int) -> int:
    return -(-text_chars // 4)


# -- a minimal server around demo_answer -----------------------------------------------------------


async def _handle(request: web.Request) -> web.StreamResponse:
    found = route(request.method, request.path, request.headers, request.query_string)
    if found is None or found.operation is None:
        return web.Response(status=404)
    body = await request.json()
    result = demo_answer(
        found.operation,
        found.model or body.get("model", ""),
        body,
        stream=body.get("stream") is True,
        query=request.query_string,
    )
    response = web.StreamResponse(status=result.status, headers={"content-type": result.content_type})
    await response.prepare(request)
    for chunk in result.chunks or (result.body,):
        await response.write(chunk)
    await response.write_eof()
    return response


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _handle)
    with serve(app) as url:
        yield url


@pytest.fixture(scope="module")
def openai_client(demo_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=demo_url + "/v1", api_key="-", max_retries=0)


@pytest.fixture(scope="module")
def anthropic_client(demo_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=demo_url, api_key="-", max_retries=0)


@pytest.fixture(scope="module")
def genai_client(demo_url: str) -> genai.Client:
    return genai.Client(api_key="-", http_options=gtypes.HttpOptions(base_url=demo_url))


# -- the answer text -------------------------------------------------------------------------------


def test_answer_greets_and_echoes_the_trimmed_last_user_message() -> None:
    body = {
        "messages": [{"role": "user", "content": "first"}, {"role": "user", "content": "  hi \n  there  "}]
    }
    completion = json.loads(answer(Operation.CHAT_COMPLETIONS, body).body)
    assert completion["choices"][0]["message"]["content"] == f"{GREETING} You said: hi there"


def test_long_messages_are_echoed_trimmed_with_an_ellipsis() -> None:
    completion = json.loads(answer(Operation.CHAT_COMPLETIONS, chat("word " * 200)).body)
    text = completion["choices"][0]["message"]["content"]
    echoed = text.removeprefix(f"{GREETING} You said: ")
    assert echoed.endswith("…") and len(echoed) <= ECHO_CHARS + 1


def test_text_and_usage_are_deterministic_and_ids_unique() -> None:
    first, second = (json.loads(answer(Operation.MESSAGES, {"messages": MESSAGES}).body) for _ in range(2))
    assert first["content"] == second["content"] and first["usage"] == second["usage"]
    assert first["id"] != second["id"] and first["id"].startswith("msg_01") and len(first["id"]) == 28


def test_a_large_output_budget_keeps_the_answer_short() -> None:
    completion = json.loads(
        answer(Operation.CHAT_COMPLETIONS, chat("hi", max_completion_tokens=100_000)).body
    )
    assert completion["usage"]["completion_tokens"] == 8
    assert completion["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": "not a list"},
        {"messages": [None, 3, {"role": "user", "content": None}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}], "max_tokens": "many"},
        {"input": 42, "contents": "x", "tools": [None, {"function": "x"}, {"functionDeclarations": []}]},
    ],
    ids=["empty", "messages-not-list", "junk-turns", "no-text", "bad-types", "junk-fields"],
)
@pytest.mark.parametrize("operation", list(Operation))
def test_odd_bodies_still_get_a_greeting(operation: Operation, body: dict[str, Any]) -> None:
    result = demo_answer(operation, "demo-model", body, stream=True, query="alt=sse")
    assert result.status == 200 and result.body
    if operation not in (Operation.COUNT_TOKENS, Operation.GEMINI_COUNT_TOKENS):
        assert b"Hello" in result.body


def test_input_tokens_are_a_quarter_of_the_request_text() -> None:
    text = "x" * 37
    body = {"system": "abc", "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
    assert json.loads(answer(Operation.COUNT_TOKENS, body).body) == {"input_tokens": estimate(40)}
    gemini_count = json.loads(
        answer(Operation.GEMINI_COUNT_TOKENS, {"generateContentRequest": gemini(text)}).body
    )
    assert gemini_count["totalTokens"] == estimate(37)


@pytest.mark.parametrize(
    ("operation", "body", "query", "count"),
    [
        (
            Operation.CHAT_COMPLETIONS,
            chat("demo:chunks=20"),
            "",
            lambda ev: sum('"content":"' in d for _, d in ev[1:]),
        ),
        (
            Operation.RESPONSES,
            {"input": "demo:chunks=20"},
            "",
            lambda ev: sum(e == "response.output_text.delta" for e, _ in ev),
        ),
        (
            Operation.MESSAGES,
            {"messages": [{"role": "user", "content": "demo:chunks=20"}]},
            "",
            lambda ev: sum("text_delta" in d for _, d in ev),
        ),
        (Operation.STREAM_GENERATE_CONTENT, gemini("demo:chunks=20"), "alt=sse", len),
    ],
    ids=["chat", "responses", "messages", "gemini"],
)
def test_demo_chunks_directive_gives_exactly_that_many_content_chunks(
    operation: Operation, body: dict[str, Any], query: str, count: Any
) -> None:
    events = sse_events(answer(operation, body, stream=True, query=query))
    assert count(events) == 20


def test_options_override_directives_for_the_chunk_count() -> None:
    result = answer(Operation.CHAT_COMPLETIONS, chat("demo:chunks=20"), options=DemoOptions(chunks=3))
    assert json.loads(result.body)["usage"]["completion_tokens"] == 3


@pytest.mark.slow
def test_an_answer_costs_tens_of_microseconds() -> None:
    """A benchmark (run with `-m slow`): prints what each kind of answer costs."""
    cases = [
        (Operation.CHAT_COMPLETIONS, chat("Tell me a joke about gateways", stream=True), True, ""),
        (Operation.RESPONSES, {"input": "Tell me a joke about gateways"}, True, ""),
        (Operation.MESSAGES, {"messages": [{"role": "user", "content": "Tell me a joke"}]}, True, ""),
        (Operation.STREAM_GENERATE_CONTENT, gemini("Tell me a joke about gateways"), True, "alt=sse"),
        (Operation.CHAT_COMPLETIONS, chat("Tell me a joke about gateways"), False, ""),
    ]
    for operation, body, stream, query in cases:
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            for _ in range(200):
                demo_answer(operation, "m", body, stream=stream, query=query)
            best = min(best, (time.process_time() - started) / 200)
        print(f"demo {operation.value} stream={stream}: {best * 1e6:.0f} µs per answer")
        # Typically 10-120 µs; a millisecond means something regressed badly.
        assert best < 1e-3, (operation, best)


# -- OpenAI Chat Completions -----------------------------------------------------------------------


def test_chat_completion_matches_the_sdk_model() -> None:
    completion = strict(
        ChatCompletion.model_validate_json(answer(Operation.CHAT_COMPLETIONS, chat("hi")).body)
    )
    assert completion.id.startswith("chatcmpl-") and completion.model == "demo-model"
    assert completion.choices[0].message.content == f"{GREETING} You said: hi"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (1, 8)
    assert completion.usage.total_tokens == 9


def test_chat_stream_has_no_usage_unless_asked() -> None:
    result = answer(Operation.CHAT_COMPLETIONS, chat("hi", stream=True), stream=True)
    events = sse_events(result)
    assert b'"usage"' not in result.body
    assert events[-1] == (None, "[DONE]")
    chunks = [strict(ChatCompletionChunk.model_validate_json(data)) for _, data in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == f"{GREETING} You said: hi"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_stream_with_include_usage_ends_with_a_usage_chunk() -> None:
    body = chat("hi", stream=True, stream_options={"include_usage": True})
    events = sse_events(answer(Operation.CHAT_COMPLETIONS, body, stream=True))
    chunks = [strict(ChatCompletionChunk.model_validate_json(data)) for _, data in events[:-1]]
    assert all(c.usage is None for c in chunks[:-1]) and all(c.choices for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    assert events[-1] == (None, "[DONE]")


def test_chat_through_the_openai_sdk(openai_client: openai.OpenAI) -> None:
    completion = openai_client.chat.completions.create(model="gpt-demo", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == f"{GREETING} You said: What is a gateway?"
    assert completion.model == "gpt-demo"
    stream = openai_client.chat.completions.create(
        model="gpt-demo",
        messages=[{"role": "user", "content": "demo:chunks=20"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) == 20
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20


def test_chat_tool_call_through_the_openai_sdk(openai_client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "demo:tools"}]
    completion = openai_client.chat.completions.create(model="m", messages=messages, tools=tools)  # type: ignore[arg-type]
    strict(completion)
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert completion.choices[0].finish_reason == "tool_calls"
    with openai_client.chat.completions.stream(model="m", messages=messages, tools=tools) as stream:  # type: ignore[arg-type]
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert streamed.function.name == "lookup" and streamed.function.arguments == '{"city":"Paris"}'


def test_chat_usage_with_cache_and_reasoning() -> None:
    completion = strict(
        ChatCompletion.model_validate_json(
            answer(Operation.CHAT_COMPLETIONS, chat("demo:cache demo:reasoning")).body
        )
    )
    usage = completion.usage
    assert (
        usage is not None
        and usage.prompt_tokens_details is not None
        and usage.completion_tokens_details is not None
    )
    assert (
        usage.prompt_tokens
        == estimate(len("demo:cache demo:reasoning")) + CACHE_READ_TOKENS + CACHE_WRITE_TOKENS
    )
    assert usage.prompt_tokens_details.cached_tokens == CACHE_READ_TOKENS
    assert usage.prompt_tokens_details.cache_write_tokens == CACHE_WRITE_TOKENS
    assert usage.completion_tokens == 5 + REASONING_TOKENS
    assert usage.completion_tokens_details.reasoning_tokens == REASONING_TOKENS


def test_chat_truncates_at_a_small_output_budget() -> None:
    completion = json.loads(answer(Operation.CHAT_COMPLETIONS, chat("hi", max_tokens=3)).body)
    assert completion["choices"][0]["message"]["content"] == "Hello from tailgate's"
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 3


def test_no_usage_leaves_usage_out() -> None:
    body = chat("demo:no_usage", stream=True, stream_options={"include_usage": True})
    assert b'"usage"' not in answer(Operation.CHAT_COMPLETIONS, body).body
    assert b'"usage":{' not in answer(Operation.CHAT_COMPLETIONS, body, stream=True).body
    assert (
        b"usageMetadata"
        not in answer(Operation.STREAM_GENERATE_CONTENT, gemini("demo:no_usage"), query="alt=sse").body
    )
    assert (
        b'"usage"'
        not in answer(
            Operation.MESSAGES, {"messages": [{"role": "user", "content": "demo:no_usage"}]}, stream=True
        ).body
    )


# -- OpenAI Responses ------------------------------------------------------------------------------

RESPONSES_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 8,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_responses_stream_event_order_and_sequence_numbers() -> None:
    events = sse_events(answer(Operation.RESPONSES, {"input": "hi", "stream": True}, stream=True))
    parsed = [strict(RESPONSES_EVENTS.validate_json(data)) for _, data in events]
    assert [name for name, _ in events] == [event.type for event in parsed] == RESPONSES_ORDER
    assert [event.sequence_number for event in parsed] == list(range(len(parsed)))
    completed = parsed[-1].response
    assert completed.output_text == f"{GREETING} You said: hi"
    assert completed.usage is not None and completed.usage.output_tokens == 8
    assert completed.id == parsed[0].response.id and completed.id.startswith("resp_")


def test_responses_through_the_openai_sdk(openai_client: openai.OpenAI) -> None:
    response = openai_client.responses.create(model="gpt-demo", input="hello", instructions="Be brief.")
    strict(response)
    assert response.output_text == f"{GREETING} You said: hello"
    assert response.instructions == "Be brief." and response.model == "gpt-demo"
    with openai_client.responses.stream(model="gpt-demo", input="demo:chunks=20 demo:reasoning") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) == 20 and final.output_text == "".join(deltas)
    assert final.usage is not None and final.usage.output_tokens == 20 + REASONING_TOKENS
    assert final.usage.output_tokens_details.reasoning_tokens == REASONING_TOKENS
    assert [item.type for item in final.output] == ["reasoning", "message"]


def test_responses_tool_call_through_the_openai_sdk(openai_client: openai.OpenAI) -> None:
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}, "strict": False}]
    response = openai_client.responses.create(model="m", input="demo:tools", tools=tools)  # type: ignore[arg-type]
    strict(response)
    call = response.output[0]
    assert call.type == "function_call" and call.name == "lookup" and call.arguments == '{"city":"Paris"}'
    with openai_client.responses.stream(model="m", input="demo:tools", tools=tools) as stream:  # type: ignore[arg-type]
        events = [event.type for event in stream]
        final = stream.get_final_response()
    assert events.count("response.function_call_arguments.delta") == 2
    assert final.output[0].type == "function_call" and final.output[0].arguments == '{"city":"Paris"}'


def test_responses_truncation_is_incomplete() -> None:
    body = {"input": "hi", "max_output_tokens": 2}
    response = strict(Response.model_validate_json(answer(Operation.RESPONSES, body).body))
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    events = sse_events(answer(Operation.RESPONSES, body, stream=True))
    assert events[-1][0] == "response.incomplete"


# -- Anthropic Messages ----------------------------------------------------------------------------


def test_messages_stream_event_order() -> None:
    events = sse_events(answer(Operation.MESSAGES, {"messages": MESSAGES, "stream": True}, stream=True))
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 11,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    parsed = [strict(ANTHROPIC_EVENTS.validate_json(data)) for name, data in events if name != "ping"]
    start, delta = parsed[0], parsed[-2]
    assert start.message.usage.output_tokens == 1
    assert start.message.usage.input_tokens == estimate(len("What is a gateway?"))
    assert delta.usage.output_tokens == 11


def test_message_matches_the_sdk_model() -> None:
    message = strict(Message.model_validate_json(answer(Operation.MESSAGES, {"messages": MESSAGES}).body))
    assert message.content[0].type == "text" and message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 11


def test_messages_through_the_anthropic_sdk(anthropic_client: anthropic.Anthropic) -> None:
    message = anthropic_client.messages.create(model="claude-demo", max_tokens=1024, messages=MESSAGES)  # type: ignore[arg-type]
    strict(message)
    assert message.content[0].text == f"{GREETING} You said: What is a gateway?"  # type: ignore[union-attr]
    assert message.model == "claude-demo"
    prompt = [{"role": "user", "content": "demo:chunks=20 demo:cache demo:reasoning"}]
    with anthropic_client.messages.stream(model="claude-demo", max_tokens=1024, messages=prompt) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == 20
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.usage.output_tokens == 20 + REASONING_TOKENS
    assert final.usage.cache_read_input_tokens == CACHE_READ_TOKENS
    assert final.usage.cache_creation_input_tokens == CACHE_WRITE_TOKENS
    assert final.usage.input_tokens == estimate(len(prompt[0]["content"]))
    counted = anthropic_client.messages.count_tokens(model="claude-demo", messages=MESSAGES)  # type: ignore[arg-type]
    assert counted.input_tokens == estimate(len("What is a gateway?"))


def test_messages_tool_use_through_the_anthropic_sdk(anthropic_client: anthropic.Anthropic) -> None:
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    prompt = [{"role": "user", "content": "demo:tools"}]
    message = anthropic_client.messages.create(model="c", max_tokens=64, messages=prompt, tools=tools)  # type: ignore[arg-type]
    block = message.content[0]
    assert block.type == "tool_use" and block.name == "lookup" and block.input == {"city": "Paris"}
    assert message.stop_reason == "tool_use"
    with anthropic_client.messages.stream(model="c", max_tokens=64, messages=prompt, tools=tools) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Paris"}


def test_messages_truncation_stops_at_max_tokens(anthropic_client: anthropic.Anthropic) -> None:
    message = anthropic_client.messages.create(model="c", max_tokens=2, messages=MESSAGES)  # type: ignore[arg-type]
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 2


# -- Gemini ----------------------------------------------------------------------------------------


def test_gemini_sse_chunks_carry_running_usage() -> None:
    events = sse_events(answer(Operation.STREAM_GENERATE_CONTENT, gemini("hi"), query="alt=sse"))
    chunks = [strict(gtypes.GenerateContentResponse.model_validate(json.loads(data))) for _, data in events]
    assert [c.usage_metadata.candidates_token_count for c in chunks] == list(range(1, 9))
    assert {c.response_id for c in chunks} == {chunks[0].response_id}
    assert chunks[-1].candidates[0].finish_reason == "STOP"
    assert all(c.candidates[0].finish_reason is None for c in chunks[:-1])
    assert "".join(c.text or "" for c in chunks) == f"{GREETING} You said: hi"


def test_gemini_stream_without_alt_sse_is_one_json_array_sent_in_pieces() -> None:
    result = answer(Operation.STREAM_GENERATE_CONTENT, gemini("hi"))
    assert result.content_type == "application/json" and len(result.chunks) == 8
    assert result.chunks[0].startswith(b"[") and result.chunks[-1].endswith(b"]")
    elements = json.loads(result.body)
    assert len(elements) == 8
    for element in elements:
        strict(gtypes.GenerateContentResponse.model_validate(element))


def test_gemini_through_the_genai_sdk(genai_client: genai.Client) -> None:
    response = genai_client.models.generate_content(model="gemini-demo", contents="hello")
    assert response.text == f"{GREETING} You said: hello"
    assert response.model_version == "gemini-demo"
    assert response.usage_metadata is not None and response.usage_metadata.candidates_token_count == 8
    chunks = list(
        genai_client.models.generate_content_stream(
            model="gemini-demo", contents="demo:chunks=20 demo:reasoning"
        )
    )
    assert len(chunks) == 20
    last = chunks[-1].usage_metadata
    assert (
        last is not None
        and last.candidates_token_count == 20
        and last.thoughts_token_count == REASONING_TOKENS
    )
    assert last.total_token_count == last.prompt_token_count + 20 + REASONING_TOKENS  # type: ignore[operator]
    counted = genai_client.models.count_tokens(model="gemini-demo", contents="12345678")
    assert counted.total_tokens == 2


def test_gemini_function_call_and_cache_through_the_genai_sdk(genai_client: genai.Client) -> None:
    tool = gtypes.Tool(function_declarations=[gtypes.FunctionDeclaration(name="lookup")])
    config = gtypes.GenerateContentConfig(tools=[tool])
    response = genai_client.models.generate_content(
        model="g", contents="demo:tools demo:cache", config=config
    )
    assert response.function_calls is not None
    assert response.function_calls[0].name == "lookup" and response.function_calls[0].args == {
        "city": "Paris"
    }
    assert response.usage_metadata is not None
    assert response.usage_metadata.cached_content_token_count == CACHE_READ_TOKENS
    chunks = list(
        genai_client.models.generate_content_stream(model="g", contents="demo:tools", config=config)
    )
    assert len(chunks) == 1 and chunks[0].function_calls is not None


def test_gemini_truncation_reports_max_tokens(genai_client: genai.Client) -> None:
    config = gtypes.GenerateContentConfig(max_output_tokens=4)
    response = genai_client.models.generate_content(model="g", contents="hello", config=config)
    assert (
        response.candidates is not None
        and response.candidates[0].finish_reason == gtypes.FinishReason.MAX_TOKENS
    )
    assert response.text == "Hello from tailgate's demo"
