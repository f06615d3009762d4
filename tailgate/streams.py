"""Streamed answers: SSE parsing, and reassembly into the answer the call would have given unstreamed.

Pure functions over the raw bytes a client received (no HTTP objects), so the same code serves
live metering, cut streams and re-reading a stored capture.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tailgate.dialects import Operation

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str | None
    data: str


@dataclass(slots=True)
class Reassembled:
    response: dict[str, Any] | None
    """The final answer object as an unstreamed call returns it; ``None`` when nothing arrived."""
    complete: bool
    """The stream reached its end marker (``[DONE]``, terminal event, ``message_stop``, finish)."""
    error: dict[str, Any] | None
    """The payload of an error event sent mid-stream, as sent."""


def iter_sse(raw: bytes, *, include_incomplete: bool = False) -> Iterator[SseEvent]:
    """Events of an SSE body: ``\\n``, ``\\r\\n`` or ``\\r`` line ends, ``data:`` lines joined by ``\\n``.

    An event is yielded at its terminating blank line; a trailing event without one (a cut
    stream) only when ``include_incomplete``. Comment lines and events without data are skipped.
    """
    text = raw.decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = _LINE_BREAK.split(text)
    # The piece after the last line break is a line only if the stream was cut inside it.
    last = len(lines) - 1
    event: str | None = None
    data: list[str] = []
    for number, line in enumerate(lines):
        if not line:
            if number == last:
                break
            if data:
                yield SseEvent(event, "\n".join(data))
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value or None
    if include_incomplete and data:
        yield SseEvent(event, "\n".join(data))


def iter_gemini_array(raw: bytes) -> Iterator[dict[str, Any]]:
    """The complete top-level objects of a (possibly cut) JSON array, or of bare concatenated objects."""
    text = raw.decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    position = 0
    size = len(text)
    while position < size:
        char = text[position]
        if char in " \t\r\n,[\ufeff":
            position += 1
            continue
        if char == "]":
            return
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return
        if isinstance(value, dict):
            yield value


def reassemble(operation: Operation, raw: bytes, *, sse: bool = True) -> Reassembled:
    """Rebuild the unstreamed answer of ``operation`` from its streamed body.

    ``sse=False`` is Gemini's array form (``streamGenerateContent`` without ``alt=sse``).
    Count-tokens operations do not stream and give an empty result.
    """
    if operation is Operation.CHAT_COMPLETIONS:
        return _reassemble_chat(iter_sse(raw, include_incomplete=True))
    if operation is Operation.RESPONSES:
        return _reassemble_responses(_json_events(raw))
    if operation is Operation.MESSAGES:
        return _reassemble_messages(_json_events(raw))
    if operation in (Operation.GENERATE_CONTENT, Operation.STREAM_GENERATE_CONTENT):
        chunks = (data for _, data in _json_events(raw)) if sse else iter_gemini_array(raw)
        return _reassemble_gemini(chunks)
    return Reassembled(None, False, None)


def _json_events(raw: bytes) -> Iterator[tuple[str | None, dict[str, Any]]]:
    for event in iter_sse(raw, include_incomplete=True):
        data = _loads(event.data)
        if data is not None:
            yield event.event, data


def _loads(text: str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class _Text(list[str]):
    """The pieces of a streamed string, joined once at the end (repeated ``+=`` is quadratic)."""


def _append_text(target: dict[str, Any], key: str, piece: object) -> None:
    if not isinstance(piece, str):
        return
    current = target.get(key)
    if isinstance(current, _Text):
        current.append(piece)
    elif isinstance(current, str):
        target[key] = _Text((current, piece))
    else:
        target[key] = _Text((piece,))


def _joined(value: Any) -> Any:
    """``value`` with every :class:`_Text` inside it replaced by its joined string."""
    if isinstance(value, _Text):
        return "".join(value)
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = _joined(item)
    elif isinstance(value, list):
        for position, item in enumerate(value):
            value[position] = _joined(item)
    return value


def _merge_delta(target: dict[str, Any], delta: Mapping[str, Any], skip: tuple[str, ...]) -> None:
    """Fold a streamed delta into ``target``: strings concatenate, lists extend, the rest replaces."""
    for key, value in delta.items():
        if key in skip:
            continue
        current = target.get(key)
        if isinstance(value, str) and isinstance(current, str | _Text):
            _append_text(target, key, value)
        elif isinstance(value, list) and isinstance(current, list) and not isinstance(current, _Text):
            current.extend(copy.deepcopy(value))
        elif value is not None or key not in target:
            target[key] = copy.deepcopy(value)


# OpenAI Chat Completions ---------------------------------------------------------------------


def _reassemble_chat(events: Iterable[SseEvent]) -> Reassembled:
    head: dict[str, Any] | None = None
    choices: dict[int, dict[str, Any]] = {}
    calls: dict[int, dict[int, dict[str, Any]]] = {}
    usage: Any = None
    complete = False
    error: dict[str, Any] | None = None
    for event in events:
        if event.data.strip() == "[DONE]":
            complete = True
            continue
        chunk = _loads(event.data)
        if chunk is None:
            continue
        if "error" in chunk and "choices" not in chunk:
            error = chunk
            continue
        if head is None:
            head = {"id": chunk.get("id"), "object": "chat.completion", "created": chunk.get("created")}
        for key in ("model", "service_tier", "system_fingerprint"):
            if chunk.get(key) is not None or key not in head:
                head[key] = chunk.get(key)
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        for delta_choice in _as_list(chunk.get("choices")):
            if isinstance(delta_choice, Mapping):
                _fold_chat_choice(delta_choice, choices, calls)
    if head is None:
        return Reassembled(None, complete, error)
    for index, choice in choices.items():
        if index in calls:
            choice["message"]["tool_calls"] = [calls[index][k] for k in sorted(calls[index])]
    head["choices"] = [choices[index] for index in sorted(choices)]
    head["usage"] = usage
    return Reassembled(_joined(head), complete, error)


def _fold_chat_choice(
    delta_choice: Mapping[str, Any],
    choices: dict[int, dict[str, Any]],
    calls: dict[int, dict[int, dict[str, Any]]],
) -> None:
    index = _index(delta_choice.get("index"), 0)
    choice = choices.get(index)
    if choice is None:
        message = {"role": "assistant", "content": None}
        choice = choices[index] = {
            "index": index,
            "message": message,
            "logprobs": None,
            "finish_reason": None,
        }
    delta = delta_choice.get("delta")
    if isinstance(delta, Mapping):
        _merge_delta(choice["message"], delta, skip=("tool_calls", "role"))
        for fragment in _as_list(delta.get("tool_calls")):
            if isinstance(fragment, Mapping):
                _fold_tool_call(fragment, calls.setdefault(index, {}))
    if delta_choice.get("finish_reason") is not None:
        choice["finish_reason"] = delta_choice["finish_reason"]
    logprobs = delta_choice.get("logprobs")
    if isinstance(logprobs, Mapping):
        if choice["logprobs"] is None:
            choice["logprobs"] = {}
        _merge_delta(choice["logprobs"], logprobs, skip=())


def _fold_tool_call(fragment: Mapping[str, Any], calls: dict[int, dict[str, Any]]) -> None:
    position = _index(fragment.get("index"), len(calls))
    call = calls.get(position)
    if call is None:
        call = calls[position] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    if fragment.get("id"):
        call["id"] = fragment["id"]
    if fragment.get("type"):
        call["type"] = fragment["type"]
    function = fragment.get("function")
    if isinstance(function, Mapping):
        # The name comes whole in the first fragment; some servers repeat it, so never concatenate.
        if function.get("name") and not call["function"]["name"]:
            call["function"]["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            _append_text(call["function"], "arguments", function["arguments"])


# OpenAI Responses ----------------------------------------------------------------------------

_RESPONSES_TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def _reassemble_responses(events: Iterable[tuple[str | None, dict[str, Any]]]) -> Reassembled:
    response: dict[str, Any] | None = None
    items: dict[int, dict[str, Any]] = {}
    error: dict[str, Any] | None = None
    for name, data in events:
        kind = data.get("type") or name
        if kind == "error":
            error = data
        elif kind in _RESPONSES_TERMINAL and isinstance(data.get("response"), dict):
            final = data["response"]
            if kind == "response.failed" and isinstance(final.get("error"), dict):
                error = final["error"]
            return Reassembled(final, True, error)
        elif isinstance(data.get("response"), dict):
            response = copy.deepcopy(data["response"])
        elif isinstance(kind, str):
            _fold_response_event(kind, data, items)
    if response is not None and items:
        response["output"] = [items[index] for index in sorted(items)]
    return Reassembled(_joined(response), False, error)


_TEXT_EVENTS = (
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.refusal.delta",
)


def _fold_response_event(kind: str, data: Mapping[str, Any], items: dict[int, dict[str, Any]]) -> None:
    index = data.get("output_index")
    if not isinstance(index, int):
        return
    if kind in ("response.output_item.added", "response.output_item.done"):
        if isinstance(data.get("item"), Mapping):
            items[index] = copy.deepcopy(dict(data["item"]))
        return
    item = items.get(index)
    if item is None:
        return
    if kind == "response.function_call_arguments.delta":
        _append_text(item, "arguments", data.get("delta"))
    elif kind == "response.function_call_arguments.done" and isinstance(data.get("arguments"), str):
        item["arguments"] = data["arguments"]
    elif kind in _TEXT_EVENTS:
        if not isinstance(item.get("content"), list):
            item["content"] = []
        parts: list[Any] = item["content"]
        position = _index(data.get("content_index"), len(parts))
        if kind == "response.content_part.added":
            if isinstance(data.get("part"), Mapping):
                _put(parts, position, copy.deepcopy(dict(data["part"])))
            return
        key = "refusal" if kind == "response.refusal.delta" else "text"
        if position >= len(parts) or not isinstance(parts[position], dict):
            part_type = "refusal" if key == "refusal" else "output_text"
            position = _put(parts, position, {"type": part_type, key: ""})
        part = parts[position]
        if kind == "response.output_text.done":
            if isinstance(data.get("text"), str):
                part["text"] = data["text"]
        else:
            _append_text(part, key, data.get("delta"))


def _put(items: list[Any], position: int, value: Any) -> int:
    """Set ``items[position]``, or append when the position is past the end; returns where it went."""
    if position < len(items):
        items[position] = value
        return position
    items.append(value)
    return len(items) - 1


# Anthropic Messages --------------------------------------------------------------------------


def _reassemble_messages(events: Iterable[tuple[str | None, dict[str, Any]]]) -> Reassembled:
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    partial_json: dict[int, list[str]] = {}
    complete = False
    error: dict[str, Any] | None = None
    for name, data in events:
        kind = data.get("type") or name
        if kind == "message_start" and isinstance(data.get("message"), Mapping):
            message = copy.deepcopy(dict(data["message"]))
            message["usage"] = dict(_as_mapping(message.get("usage")))
        elif kind == "content_block_start" and isinstance(data.get("content_block"), Mapping):
            index = _index(data.get("index"), len(blocks))
            blocks[index] = copy.deepcopy(dict(data["content_block"]))
        elif kind == "content_block_delta":
            _fold_block_delta(data, blocks, partial_json)
        elif kind == "content_block_stop":
            stopped = _index(data.get("index"), -1)
            if stopped in partial_json and stopped in blocks:
                blocks[stopped]["input"] = _parse_input(partial_json.pop(stopped))
        elif kind == "message_delta" and message is not None:
            for key, value in _as_mapping(data.get("delta")).items():
                message[key] = copy.deepcopy(value)
            # Counts are cumulative: the latest value replaces, never adds.
            for key, value in _as_mapping(data.get("usage")).items():
                if value is not None:
                    message["usage"][key] = copy.deepcopy(value)
        elif kind == "message_stop":
            complete = True
        elif kind == "error":
            error = data
    if message is None:
        return Reassembled(None, complete, error)
    for index, buffer in partial_json.items():
        if index in blocks:
            blocks[index]["input"] = _parse_input(buffer)
    message["content"] = [blocks[index] for index in sorted(blocks)]
    return Reassembled(_joined(message), complete, error)


def _fold_block_delta(
    data: Mapping[str, Any], blocks: dict[int, dict[str, Any]], partial_json: dict[int, list[str]]
) -> None:
    index = data.get("index")
    delta = data.get("delta")
    if not isinstance(index, int) or index not in blocks or not isinstance(delta, Mapping):
        return
    block = blocks[index]
    kind = delta.get("type")
    if kind == "text_delta":
        _append_text(block, "text", delta.get("text"))
    elif kind == "thinking_delta":
        _append_text(block, "thinking", delta.get("thinking"))
    elif kind == "signature_delta":
        block["signature"] = delta.get("signature")
    elif kind == "input_json_delta":
        if isinstance(delta.get("partial_json"), str):
            partial_json.setdefault(index, []).append(delta["partial_json"])
    elif kind == "citations_delta" and delta.get("citation") is not None:
        citations = block.get("citations")
        if not isinstance(citations, list):
            citations = block["citations"] = []
        citations.append(copy.deepcopy(delta["citation"]))


def _parse_input(pieces: list[str]) -> Any:
    buffer = "".join(pieces)
    if not buffer.strip():
        return {}
    try:
        return orjson.loads(buffer)
    except orjson.JSONDecodeError:
        return {}


def _as_mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _index(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


# Gemini --------------------------------------------------------------------------------------


def _reassemble_gemini(chunks: Iterable[dict[str, Any]]) -> Reassembled:
    response: dict[str, Any] | None = None
    candidates: dict[int, dict[str, Any]] = {}
    error: dict[str, Any] | None = None
    for chunk in chunks:
        if "error" in chunk and "candidates" not in chunk:
            error = chunk
            continue
        if response is None:
            response = {}
        for key, value in chunk.items():
            if key != "candidates" and value is not None:
                response[key] = copy.deepcopy(value)
        for candidate in _as_list(chunk.get("candidates")):
            if isinstance(candidate, Mapping):
                _fold_candidate(candidate, candidates)
    if response is None:
        return Reassembled(None, False, error)
    if candidates:
        response["candidates"] = [candidates[index] for index in sorted(candidates)]
    blocked = bool(_as_mapping(response.get("promptFeedback")).get("blockReason"))
    finished = bool(candidates) and all(c.get("finishReason") for c in candidates.values())
    return Reassembled(_joined(response), finished or blocked, error)


def _fold_candidate(candidate: Mapping[str, Any], candidates: dict[int, dict[str, Any]]) -> None:
    index = _index(candidate.get("index"), 0)
    merged = candidates.get(index)
    if merged is None:
        merged = candidates[index] = {"content": {"role": "model", "parts": []}, "index": index}
    for key, value in candidate.items():
        if key != "content" and value is not None:
            merged[key] = copy.deepcopy(value)
    content = _as_mapping(candidate.get("content"))
    if content.get("role"):
        merged["content"]["role"] = content["role"]
    parts: list[dict[str, Any]] = merged["content"]["parts"]
    for part in _as_list(content.get("parts")):
        if not isinstance(part, Mapping):
            continue
        last = parts[-1] if parts else None
        if last is not None and _joins(last, part):
            _append_text(last, "text", part["text"])
            for key, value in part.items():
                if key != "text":
                    last[key] = copy.deepcopy(value)
        else:
            parts.append(copy.deepcopy(dict(part)))


def _joins(last: Mapping[str, Any], part: Mapping[str, Any]) -> bool:
    """Adjacent text parts of one kind (thought or answer) are one part in the unstreamed answer."""
    return (
        isinstance(last.get("text"), str | _Text)
        and isinstance(part.get("text"), str)
        and bool(last.get("thought")) == bool(part.get("thought"))
        and not ("thoughtSignature" in last and "thoughtSignature" in part)
    )


# Tool calls ----------------------------------------------------------------------------------


def tool_calls(operation: Operation, response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"name": str, "params": dict}]`` for every tool call in a final or reassembled answer.

    Arguments sent as a JSON string are parsed leniently: a non-object becomes ``{"value": …}``
    and unparseable text ``{"_raw": text}``.
    """
    found: list[dict[str, Any]] = []
    if operation is Operation.CHAT_COMPLETIONS:
        for choice in _as_list(response.get("choices")):
            message = _as_mapping(_as_mapping(choice).get("message"))
            for call in _as_list(message.get("tool_calls")):
                function = _as_mapping(_as_mapping(call).get("function"))
                found.append(_call(function.get("name"), function.get("arguments")))
            legacy = _as_mapping(message.get("function_call"))
            if legacy:
                found.append(_call(legacy.get("name"), legacy.get("arguments")))
    elif operation is Operation.RESPONSES:
        for raw_item in _as_list(response.get("output")):
            item = _as_mapping(raw_item)
            if item.get("type") == "function_call":
                found.append(_call(item.get("name"), item.get("arguments")))
            elif item.get("type") == "custom_tool_call":
                found.append(_call(item.get("name"), {"input": item.get("input")}))
    elif operation is Operation.MESSAGES:
        for raw_block in _as_list(response.get("content")):
            block = _as_mapping(raw_block)
            if block.get("type") == "tool_use":
                found.append(_call(block.get("name"), block.get("input")))
    elif operation in (Operation.GENERATE_CONTENT, Operation.STREAM_GENERATE_CONTENT):
        for candidate in _as_list(response.get("candidates")):
            content = _as_mapping(_as_mapping(candidate).get("content"))
            for part in _as_list(content.get("parts")):
                call = _as_mapping(_as_mapping(part).get("functionCall"))
                if call:
                    found.append(_call(call.get("name"), call.get("args")))
    return found


def _call(name: object, arguments: object) -> dict[str, Any]:
    return {"name": name if isinstance(name, str) else "", "params": _params(arguments)}


def _params(arguments: object) -> dict[str, Any]:
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        if not arguments.strip():
            return {}
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return {"_raw": arguments}
    if isinstance(arguments, Mapping):
        return dict(arguments)
    return {"value": arguments}
