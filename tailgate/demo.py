"""The built-in demo provider: answers locally, in each provider's exact wire format.

A provider of ``"type": "demo"`` needs no upstream and no key. Its answer greets the caller and
echoes a trimmed copy of the last user message, streamed word by word. Directives in that message
shape the answer (callers can set the same switches through :class:`DemoOptions`):

    demo:chunks=N   exactly N content chunks (N output tokens)
    demo:tools      a tool call instead of text
    demo:cache      usage with cache reads and writes
    demo:reasoning  usage with reasoning tokens (and a reasoning item / thinking block)
    demo:no_usage   no usage anywhere in the answer

Usage follows each dialect's own semantics: input tokens are ``ceil(chars / 4)`` of the request's
text, output tokens the number of content chunks.
"""

from __future__ import annotations

import base64
import itertools
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import orjson

from tailgate.dialects import Operation

CACHE_READ_TOKENS = 1024
CACHE_WRITE_TOKENS = 512
"""Cache tokens reported with ``demo:cache``; Gemini has no cache writes, so it reports reads only."""
REASONING_TOKENS = 64
MAX_CHUNKS = 10_000
ECHO_CHARS = 60

JSON = "application/json"
SSE = "text/event-stream"

_GREETING = ("Hello", "from", "tailgate's", "demo", "provider.")
_DIRECTIVE = re.compile(r"demo:(chunks=(\d+)|tools|cache|reasoning|no_usage)")
_FOLD = str.maketrans("+/", "xQ")
# Streams serialise each repeated event once with slots in it, then splice every chunk's values
# into the bytes: several times cheaper than serialising a fresh dict per word.
_SLOT = "\x00"
_SLOT_JSON = b'"\\u0000"'
_FINGERPRINT = "fp_7d1e0c5a3b"
_THINKING = "The caller wants a friendly demo answer."
_SIGNATURE = "RGVtb1NpZ25hdHVyZUZyb21UYWlsZ2F0ZQ=="
_TOOL_ARGS = {"city": "Paris"}
_TOOL_FRAGMENTS: tuple[str, ...] = ('{"city":', '"Paris"}')
_SKIPPED_KEYS = frozenset({"role", "type"})


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Switches for the answer's shape; directives in the last user message switch them on too."""

    chunks: int | None = None
    tool_call: bool = False
    cache: bool = False
    reasoning: bool = False
    usage: bool = True


@dataclass(frozen=True, slots=True)
class DemoAnswer:
    status: int
    content_type: str
    """``application/json`` or ``text/event-stream``."""
    body: bytes
    """The whole answer; for streams the concatenated ``chunks``."""
    chunks: tuple[bytes, ...] = field(default=())
    """For streams: each SSE event (or JSON-array piece) as sent, in order; empty otherwise."""


@dataclass(slots=True)
class _Plan:
    model: str
    pieces: tuple[str, ...]
    """Content chunks: answer words (each after the first with its leading space), or the tool
    call's argument fragments."""
    truncated: bool
    input_tokens: int
    tool: str | None
    """The called tool's name, when the answer is a tool call."""
    cache: bool
    reasoning: bool
    usage: bool
    created: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def output_tokens(self) -> int:
        return len(self.pieces) + (REASONING_TOKENS if self.reasoning else 0)


def demo_answer(
    operation: Operation,
    model: str,
    body: Mapping[str, Any],
    *,
    stream: bool,
    query: str = "",
    options: DemoOptions | None = None,
) -> DemoAnswer:
    """Answer one request the way the real provider would; never raises on odd request bodies.

    ``stream`` is ignored for the Gemini operations, whose path decides it; ``query`` only matters
    for ``STREAM_GENERATE_CONTENT`` (``alt=sse`` selects SSE over the streamed JSON array).
    """
    model = model.removeprefix("models/").replace(_SLOT, "")
    if operation is Operation.COUNT_TOKENS:
        return _json({"input_tokens": _estimate(body, operation)})
    if operation is Operation.GEMINI_COUNT_TOKENS:
        request = body.get("generateContentRequest") or body.get("generate_content_request")
        tokens = _estimate(request if isinstance(request, Mapping) else body, operation)
        return _json({"totalTokens": tokens, "promptTokensDetails": [_modality(tokens)]}, indent=True)
    plan = _plan(operation, model, body, options or DemoOptions())
    if operation is Operation.CHAT_COMPLETIONS:
        if not stream:
            return _json(_chat_completion(plan))
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, Mapping) and stream_options.get("include_usage") is True
        return _sse(_chat_stream(plan, include_usage and plan.usage))
    if operation is Operation.RESPONSES:
        return _sse(_responses_stream(plan, body)) if stream else _json(_response(plan, body, _ids("resp")))
    if operation is Operation.MESSAGES:
        return _sse(_messages_stream(plan)) if stream else _json(_message(plan))
    if operation is Operation.GENERATE_CONTENT:
        usage = _gemini_usage(plan, len(plan.pieces))
        return _json(_gemini_response(plan, _rand(22), plan.text, usage, final=True), indent=True)
    if operation is Operation.STREAM_GENERATE_CONTENT:
        if "alt=sse" in query.split("&"):
            return _sse(tuple(_gemini_stream(plan, b"data: ", b"\r\n\r\n")))
        # Without alt=sse the answer is one JSON array, sent an element at a time.
        separator = b",\r\n"
        pieces = _gemini_stream(plan, separator, b"")
        pieces[0] = b"[" + pieces[0][len(separator) :]
        pieces[-1] += b"]"
        return _stream(JSON, tuple(pieces))
    raise ValueError(f"the demo provider does not answer {operation}")


def _json(value: Any, *, indent: bool = False) -> DemoAnswer:
    body = orjson.dumps(value, option=orjson.OPT_INDENT_2) if indent else orjson.dumps(value)
    return DemoAnswer(200, JSON, body)


def _sse(chunks: tuple[bytes, ...]) -> DemoAnswer:
    return _stream(SSE, chunks)


def _stream(content_type: str, chunks: tuple[bytes, ...]) -> DemoAnswer:
    return DemoAnswer(200, content_type, b"".join(chunks), chunks)


def _event(name: str, **fields: Any) -> bytes:
    """One SSE event named ``name`` whose data repeats the name as its ``type``."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **fields}) + b"\n\n"


def _template(value: Any, head: bytes = b"", tail: bytes = b"") -> tuple[bytes, ...]:
    """``head``, ``value`` serialised and ``tail``, cut at each ``_SLOT`` string, for :func:`_fill`."""
    return tuple((head + orjson.dumps(value) + tail).split(_SLOT_JSON))


def _fill(template: tuple[bytes, ...], *values: bytes) -> bytes:
    """The template with its slots replaced, in order, by ``values`` (JSON tokens)."""
    if len(values) == 1:
        return template[0] + values[0] + template[1]
    if len(values) == 2:
        return template[0] + values[0] + template[1] + values[1] + template[2]
    if len(values) == 3:
        return template[0] + values[0] + template[1] + values[1] + template[2] + values[2] + template[3]
    return b"".join(piece for pair in zip(template, values, strict=False) for piece in pair) + template[-1]


def _rand(length: int) -> str:
    """Random letters and digits (base64 with its two symbols folded into letters)."""
    return base64.b64encode(os.urandom(length))[:length].decode().translate(_FOLD)


def _ids(prefix: str) -> str:
    return f"{prefix}_{os.urandom(24).hex()}"


# -- reading the request ---------------------------------------------------------------------------

_TEXT_FIELDS: dict[Operation, tuple[str, ...]] = {
    Operation.CHAT_COMPLETIONS: ("messages", "tools"),
    Operation.RESPONSES: ("input", "instructions", "tools"),
    Operation.MESSAGES: ("system", "messages", "tools"),
    Operation.COUNT_TOKENS: ("system", "messages", "tools"),
}
_GEMINI_TEXT_FIELDS = ("contents", "systemInstruction", "system_instruction", "tools")


def _estimate(body: Mapping[str, Any], operation: Operation) -> int:
    """Input tokens: ceil(chars / 4) over the request's text, at least 1."""
    fields = _TEXT_FIELDS.get(operation, _GEMINI_TEXT_FIELDS)
    return max(1, math.ceil(sum(_chars(body.get(name)) for name in fields) / 4))


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_chars(item) for key, item in value.items() if key not in _SKIPPED_KEYS)
    if isinstance(value, list):
        return sum(_chars(item) for item in value)
    return 0


def _last_user_text(operation: Operation, body: Mapping[str, Any]) -> str:
    if operation is Operation.RESPONSES:
        turns: Any = body.get("input")
        if isinstance(turns, str):
            return turns
    elif operation in (Operation.GENERATE_CONTENT, Operation.STREAM_GENERATE_CONTENT):
        turns = body.get("contents")
    else:
        turns = body.get("messages")
    if not isinstance(turns, list):
        return ""
    for turn in reversed(turns):
        if isinstance(turn, Mapping) and turn.get("role", "user") == "user":
            content = turn.get("parts") if "parts" in turn else turn.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(_part_texts(content))
            return ""
    return ""


def _part_texts(parts: Iterable[Any]) -> Iterable[str]:
    for part in parts:
        if isinstance(part, Mapping) and isinstance(part.get("text"), str):
            yield part["text"]


_LIMIT_FIELDS = {
    Operation.CHAT_COMPLETIONS: ("max_completion_tokens", "max_tokens"),
    Operation.RESPONSES: ("max_output_tokens",),
    Operation.MESSAGES: ("max_tokens",),
}


def _max_tokens(operation: Operation, body: Mapping[str, Any]) -> int | None:
    fields = _LIMIT_FIELDS.get(operation)
    if fields is None:  # Gemini keeps it in generationConfig
        config = body.get("generationConfig") or body.get("generation_config")
        body, fields = (
            (config if isinstance(config, Mapping) else {}),
            ("maxOutputTokens", "max_output_tokens"),
        )
    limit = next((body[name] for name in fields if body.get(name)), None)
    return limit if type(limit) is int else None


def _tool_name(body: Mapping[str, Any]) -> str:
    """The first tool the request declares, in any dialect's shape."""
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, Mapping):
            declared = tool.get("functionDeclarations") or tool.get("function_declarations")
            first = declared[0] if isinstance(declared, list) and declared else None
            for holder in (tool, tool.get("function"), first):
                if isinstance(holder, Mapping) and isinstance(holder.get("name"), str) and holder["name"]:
                    return str(holder["name"])
    return "get_weather"


def _directed(options: DemoOptions, said: str) -> DemoOptions:
    """``options`` with the directives in ``said`` switched on; an explicit chunk count wins."""
    found = {match.group(1).partition("=")[0]: match.group(2) for match in _DIRECTIVE.finditer(said)}
    chunks = found.get("chunks")
    return replace(
        options,
        chunks=int(chunks) if chunks is not None and options.chunks is None else options.chunks,
        tool_call=options.tool_call or "tools" in found,
        cache=options.cache or "cache" in found,
        reasoning=options.reasoning or "reasoning" in found,
        usage=options.usage and "no_usage" not in found,
    )


def _plan(operation: Operation, model: str, body: Mapping[str, Any], options: DemoOptions) -> _Plan:
    said = _last_user_text(operation, body)
    if "demo:" in said:
        options, said = _directed(options, said), _DIRECTIVE.sub("", said)
    truncated, tool = False, None
    if options.tool_call:
        tool, pieces = _tool_name(body), _TOOL_FRAGMENTS
    else:
        chunks = options.chunks
        pieces = _greeting(said) if chunks is None else _filler(min(max(chunks, 1), MAX_CHUNKS))
        limit = _max_tokens(operation, body)
        if limit is not None and 0 < limit < len(pieces):
            pieces, truncated = pieces[:limit], True
    return _Plan(
        model=model,
        pieces=pieces,
        truncated=truncated,
        input_tokens=_estimate(body, operation),
        tool=tool,
        cache=options.cache,
        reasoning=options.reasoning,
        usage=options.usage,
        created=int(time.time()),
    )


def _greeting(said: str) -> tuple[str, ...]:
    echo = " ".join(said.split())
    if len(echo) > ECHO_CHARS:
        echo = echo[:ECHO_CHARS].rstrip() + "…"
    words = _GREETING + (("You", "said:", *echo.split()) if echo else ())
    return _spaced(words)


@lru_cache(maxsize=64)
def _filler(count: int) -> tuple[str, ...]:
    return _spaced(tuple(itertools.islice(itertools.cycle(_GREETING), count)))


def _spaced(words: tuple[str, ...]) -> tuple[str, ...]:
    return (words[0], *(" " + word for word in words[1:]))


# -- OpenAI Chat Completions -----------------------------------------------------------------------


_CHAT_OUTPUT_DETAILS = dict.fromkeys(
    ("reasoning_tokens", "audio_tokens", "accepted_prediction_tokens", "rejected_prediction_tokens"), 0
)


def _chat_usage(plan: _Plan) -> dict[str, Any]:
    reasoning = REASONING_TOKENS if plan.reasoning else 0
    prompt_details: dict[str, int] = {"cached_tokens": 0, "audio_tokens": 0}
    prompt = plan.input_tokens
    if plan.cache:
        prompt_details |= {"cached_tokens": CACHE_READ_TOKENS, "cache_write_tokens": CACHE_WRITE_TOKENS}
        prompt += CACHE_READ_TOKENS + CACHE_WRITE_TOKENS
    return {
        "prompt_tokens": prompt,
        "completion_tokens": plan.output_tokens,
        "total_tokens": prompt + plan.output_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": _CHAT_OUTPUT_DETAILS | {"reasoning_tokens": reasoning},
    }


def _finish_reason(plan: _Plan) -> str:
    return "tool_calls" if plan.tool else "length" if plan.truncated else "stop"


def _chat_tool_call(plan: _Plan, arguments: str) -> dict[str, Any]:
    return {
        "id": "call_" + _rand(24),
        "type": "function",
        "function": {"name": plan.tool, "arguments": arguments},
    }


def _chat_completion(plan: _Plan) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": plan.text, "refusal": None, "annotations": []}
    if plan.tool:
        message |= {"content": None, "tool_calls": [_chat_tool_call(plan, plan.text)]}
    answer = {
        "id": "chatcmpl-" + _rand(29),
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish_reason(plan)}
        ],
        "usage": _chat_usage(plan),
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }
    if not plan.usage:
        del answer["usage"]
    return answer


def _chat_stream(plan: _Plan, include_usage: bool) -> tuple[bytes, ...]:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-" + _rand(29),
        "object": "chat.completion.chunk",
        "created": plan.created,
        "model": plan.model,
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
        "choices": [{"index": 0, "delta": _SLOT, "logprobs": None, "finish_reason": _SLOT}],
    }
    if include_usage:
        # OpenAI puts "usage": null on every chunk only when the caller asked for usage.
        chunk["usage"] = None
    template = _template(chunk, b"data: ", b"\n\n")
    if plan.tool:
        opening = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"index": 0, **_chat_tool_call(plan, "")}],
        }
        deltas = [orjson.dumps(opening)]
        deltas += [
            b'{"tool_calls":[{"index":0,"function":{"arguments":' + orjson.dumps(p) + b"}}]}"
            for p in plan.pieces
        ]
    else:
        deltas = [b'{"role":"assistant","content":"","refusal":null}']
        deltas += [b'{"content":' + orjson.dumps(piece) + b"}" for piece in plan.pieces]
    chunks = [_fill(template, delta, b"null") for delta in deltas]
    chunks.append(_fill(template, b"{}", orjson.dumps(_finish_reason(plan))))
    if include_usage:
        chunk |= {"choices": [], "usage": _chat_usage(plan)}
        chunks.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")
    return tuple(chunks)


# -- OpenAI Responses ------------------------------------------------------------------------------

_RESPONSE_DEFAULTS: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "store": True,
    "temperature": 1.0,
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
}
"""Request fields a response echoes, with the values it reports when the request left them out."""


_OPENING_CALL = {"status": "in_progress", "arguments": ""}
_OPENING_MESSAGE = {"status": "in_progress", "content": []}


def _responses_usage(plan: _Plan) -> dict[str, Any] | None:
    if not plan.usage:
        return None
    cached, written = (CACHE_READ_TOKENS, CACHE_WRITE_TOKENS) if plan.cache else (0, 0)
    input_tokens = plan.input_tokens + cached + written
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": plan.output_tokens,
        "output_tokens_details": {"reasoning_tokens": REASONING_TOKENS if plan.reasoning else 0},
        "total_tokens": input_tokens + plan.output_tokens,
    }


def _response(plan: _Plan, body: Mapping[str, Any], response_id: str, *, done: bool = True) -> dict[str, Any]:
    response = {
        "id": response_id,
        "object": "response",
        "created_at": plan.created,
        "status": ("incomplete" if plan.truncated else "completed") if done else "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if done and plan.truncated else None,
        "model": plan.model,
        "output": _response_output(plan, response_id) if done else [],
        "reasoning": {"effort": "medium" if plan.reasoning else None, "summary": None},
        "service_tier": "default",
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "truncation": "disabled",
        "usage": _responses_usage(plan) if done else None,
        "metadata": body.get("metadata") or {},
    }
    response |= {key: body.get(key, default) for key, default in _RESPONSE_DEFAULTS.items()}
    return response


def _response_output(plan: _Plan, response_id: str) -> list[dict[str, Any]]:
    # Item ids derive from the response id so the streamed and final items agree.
    suffix = response_id.removeprefix("resp_")
    items: list[dict[str, Any]] = []
    if plan.reasoning:
        items.append({"id": "rs_" + suffix, "type": "reasoning", "summary": []})
    if plan.tool:
        call = {"id": "fc_" + suffix, "type": "function_call", "status": "completed", "arguments": plan.text}
        items.append(call | {"call_id": "call_" + suffix[:24], "name": plan.tool})
    else:
        message = {"id": "msg_" + suffix, "type": "message", "status": "completed", "role": "assistant"}
        if plan.truncated:
            message["status"] = "incomplete"
        items.append(message | {"content": [_output_text(plan.text)]})
    return items


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _responses_stream(plan: _Plan, body: Mapping[str, Any]) -> tuple[bytes, ...]:
    response_id = _ids("resp")
    final = _response(plan, body, response_id)
    started = _response(plan, body, response_id, done=False)
    events: list[bytes] = []

    def emit(name: str, **data: Any) -> None:
        events.append(_event(name, sequence_number=len(events), **data))

    def emit_deltas(name: str, located: dict[str, Any], **tail: Any) -> None:
        data = {"type": name, "sequence_number": _SLOT, **located, "delta": _SLOT, **tail}
        template = _template(data, b"event: " + name.encode() + b"\ndata: ", b"\n\n")
        for piece in plan.pieces:
            events.append(_fill(template, b"%d" % len(events), orjson.dumps(piece)))

    emit("response.created", response=started)
    emit("response.in_progress", response=started)
    for index, item in enumerate(final["output"]):
        if item["type"] == "reasoning":
            emit("response.output_item.added", output_index=index, item=item)
        elif item["type"] == "function_call":
            located = {"item_id": item["id"], "output_index": index}
            emit("response.output_item.added", output_index=index, item=item | _OPENING_CALL)
            emit_deltas("response.function_call_arguments.delta", located)
            emit("response.function_call_arguments.done", **located, arguments=plan.text)
        else:
            emit("response.output_item.added", output_index=index, item=item | _OPENING_MESSAGE)
            located = {"item_id": item["id"], "output_index": index, "content_index": 0}
            emit("response.content_part.added", **located, part=_output_text(""))
            emit_deltas("response.output_text.delta", located, logprobs=[])
            emit("response.output_text.done", **located, text=plan.text, logprobs=[])
            emit("response.content_part.done", **located, part=_output_text(plan.text))
        emit("response.output_item.done", output_index=index, item=item)
    emit("response.incomplete" if plan.truncated else "response.completed", response=final)
    return tuple(events)


# -- Anthropic Messages ----------------------------------------------------------------------------


def _anthropic_usage(plan: _Plan, *, done: bool) -> dict[str, Any]:
    cached, written = (CACHE_READ_TOKENS, CACHE_WRITE_TOKENS) if plan.cache else (0, 0)
    usage: dict[str, Any] = {
        "input_tokens": plan.input_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "cache_creation": {"ephemeral_5m_input_tokens": written, "ephemeral_1h_input_tokens": 0},
        # message_start carries a placeholder output count; the real one comes with message_delta.
        "output_tokens": plan.output_tokens if done else 1,
        "service_tier": "standard",
    }
    if done and plan.reasoning:
        usage["output_tokens_details"] = {"thinking_tokens": REASONING_TOKENS}
    return usage


def _message(plan: _Plan, *, done: bool = True) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if done and plan.reasoning:
        content.append({"type": "thinking", "thinking": _THINKING, "signature": _SIGNATURE})
    if done and plan.tool:
        tool_id = "toolu_01" + _rand(22)
        content.append({"type": "tool_use", "id": tool_id, "name": plan.tool, "input": _TOOL_ARGS})
    elif done:
        content.append({"type": "text", "text": plan.text})
    message = {
        "id": "msg_01" + _rand(22),
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": content,
        "stop_reason": _stop_reason(plan) if done else None,
        "stop_sequence": None,
        "usage": _anthropic_usage(plan, done=done),
    }
    if not plan.usage:
        del message["usage"]
    return message


def _stop_reason(plan: _Plan) -> str:
    return "tool_use" if plan.tool else "max_tokens" if plan.truncated else "end_turn"


_START_ONLY_USAGE = ("cache_creation", "service_tier")


def _messages_stream(plan: _Plan) -> tuple[bytes, ...]:
    events = [_event("message_start", message=_message(plan, done=False))]
    blocks: list[tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]] = []
    if plan.reasoning:
        thinking = {"type": "thinking", "thinking": "", "signature": ""}
        blocks.append((thinking, {"type": "thinking_delta", "thinking": _SLOT}, (_THINKING,)))
        blocks.append(({}, {"type": "signature_delta", "signature": _SLOT}, (_SIGNATURE,)))
    if plan.tool:
        tool_use = {"type": "tool_use", "id": "toolu_01" + _rand(22), "name": plan.tool, "input": {}}
        blocks.append((tool_use, {"type": "input_json_delta", "partial_json": _SLOT}, plan.pieces))
    else:
        blocks.append(({"type": "text", "text": ""}, {"type": "text_delta", "text": _SLOT}, plan.pieces))
    index = -1
    for opening, delta, pieces in blocks:
        if opening:  # an empty opening continues the block before it (the thinking block's signature)
            if index >= 0:
                events.append(_event("content_block_stop", index=index))
            index += 1
            events.append(_event("content_block_start", index=index, content_block=opening))
            if index == 0:
                events.append(b'event: ping\ndata: {"type": "ping"}\n\n')
        data = {"type": "content_block_delta", "index": index, "delta": delta}
        template = _template(data, b"event: content_block_delta\ndata: ", b"\n\n")
        events += [_fill(template, orjson.dumps(piece)) for piece in pieces]
    events.append(_event("content_block_stop", index=index))
    ending: dict[str, Any] = {"delta": {"stop_reason": _stop_reason(plan), "stop_sequence": None}}
    if plan.usage:
        # message_delta repeats the counts cumulatively, without the per-TTL split or the tier.
        usage = _anthropic_usage(plan, done=True)
        ending["usage"] = {key: value for key, value in usage.items() if key not in _START_ONLY_USAGE}
    events.append(_event("message_delta", **ending))
    events.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    return tuple(events)


# -- Gemini generateContent ------------------------------------------------------------------------


def _modality(tokens: int) -> dict[str, Any]:
    return {"modality": "TEXT", "tokenCount": tokens}


def _gemini_usage(plan: _Plan, candidates: int) -> dict[str, Any]:
    prompt = plan.input_tokens + (CACHE_READ_TOKENS if plan.cache else 0)
    thoughts = REASONING_TOKENS if plan.reasoning else 0
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
        "promptTokensDetails": [_modality(prompt)],
    }
    if plan.cache:
        usage |= {
            "cachedContentTokenCount": CACHE_READ_TOKENS,
            "cacheTokensDetails": [_modality(CACHE_READ_TOKENS)],
        }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def _gemini_response(
    plan: _Plan, response_id: str, text: str, usage: dict[str, Any], *, final: bool
) -> dict[str, Any]:
    """One GenerateContentResponse holding ``text`` (or the tool call)."""
    part = {"functionCall": {"name": plan.tool, "args": _TOOL_ARGS}} if plan.tool else {"text": text}
    candidate: dict[str, Any] = {"content": {"parts": [part], "role": "model"}}
    if final:
        candidate["finishReason"] = "MAX_TOKENS" if plan.truncated else "STOP"
    candidate["index"] = 0
    answer: dict[str, Any] = {"candidates": [candidate]}
    if plan.usage:
        answer["usageMetadata"] = usage
    return answer | {"modelVersion": plan.model, "responseId": response_id}


def _gemini_stream(plan: _Plan, head: bytes, tail: bytes) -> list[bytes]:
    """Each chunk of a streamed answer as compact JSON between ``head`` and ``tail``; usage in each
    is a running total."""
    response_id, count = _rand(22), len(plan.pieces)
    last = _gemini_response(plan, response_id, plan.pieces[-1], _gemini_usage(plan, count), final=True)
    if plan.tool:
        return [head + orjson.dumps(last) + tail]  # a function call arrives whole, in one chunk
    usage = _gemini_usage(plan, 0)
    base = usage["totalTokenCount"]
    usage |= {"candidatesTokenCount": _SLOT, "totalTokenCount": _SLOT}
    template = _template(_gemini_response(plan, response_id, _SLOT, usage, final=False), head, tail)
    chunks = []
    for done, piece in enumerate(plan.pieces[:-1], start=1):
        counts = (b"%d" % done, b"%d" % (base + done)) if plan.usage else ()
        chunks.append(_fill(template, orjson.dumps(piece), *counts))
    return [*chunks, head + orjson.dumps(last) + tail]
