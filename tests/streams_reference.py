"""A slow, obviously correct reassembly: the specification the fast one in ``tailgate.streams`` is checked against.

Written for reading, not speed: the body is decoded and split into lines as the SSE spec says,
every event is parsed on its own, everything taken from an event is deep-copied, and streamed
strings are concatenated with ``+``. Only :func:`tailgate.streams.tool_calls` is shared.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from tailgate.dialects import Operation
from tailgate.framing import SseEvent
from tailgate.streams import Reassembled

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse(raw: bytes, *, include_incomplete: bool = False) -> Iterator[SseEvent]:
    """The SSE spec, line by line; a trailing event without its blank line only when asked."""
    text = raw.decode("utf-8", errors="replace").removeprefix("\ufeff")
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


def gemini_array(raw: bytes) -> Iterator[dict[str, Any]]:
    """The complete top-level objects of a (possibly cut) JSON array, read one at a time."""
    text = raw.decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    position = 0
    while position < len(text):
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


def reassemble(operation: Operation, raw: bytes, *, sse_form: bool = True) -> Reassembled:
    if operation is Operation.CHAT_COMPLETIONS:
        return _chat(sse(raw, include_incomplete=True))
    if operation is Operation.RESPONSES:
        return _responses(_json_events(raw))
    if operation is Operation.MESSAGES:
        return _messages(_json_events(raw))
    if operation in (Operation.GENERATE_CONTENT, Operation.STREAM_GENERATE_CONTENT):
        return _gemini((data for _, data in _json_events(raw)) if sse_form else gemini_array(raw))
    return Reassembled(None, False, None)


def _json_events(raw: bytes) -> Iterator[tuple[str | None, dict[str, Any]]]:
    for event in sse(raw, include_incomplete=True):
        data = _object(event.data)
        if data is not None:
            yield event.event, data


def _object(text: str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _index(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _concat(target: dict[str, Any], key: str, piece: object) -> None:
    if isinstance(piece, str):
        current = target.get(key)
        target[key] = current + piece if isinstance(current, str) else piece


def _merge(target: dict[str, Any], delta: Mapping[str, Any], skip: tuple[str, ...] = ()) -> None:
    """Strings concatenate, lists extend, anything else replaces (a null only fills a gap)."""
    for key, value in delta.items():
        if key in skip:
            continue
        current = target.get(key)
        if isinstance(value, str) and isinstance(current, str):
            target[key] = current + value
        elif isinstance(value, list) and isinstance(current, list):
            current.extend(copy.deepcopy(value))
        elif value is not None or key not in target:
            target[key] = copy.deepcopy(value)


def _chat(events: Iterable[SseEvent]) -> Reassembled:
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
        chunk = _object(event.data)
        if chunk is None:
            continue
        if "error" in chunk and "choices" not in chunk:
            error = chunk
            continue
        if head is None:
            head = {"id": chunk.get("id"), "object": "chat.completion", "created": chunk.get("created")}
        for key in ("model", "service_tier", "system_fingerprint"):
            if chunk.get(key) is not None or key not in head:
                head[key] = copy.deepcopy(chunk.get(key))
        if chunk.get("usage") is not None:
            usage = copy.deepcopy(chunk["usage"])
        for delta_choice in _list(chunk.get("choices")):
            if not isinstance(delta_choice, Mapping):
                continue
            index = _index(delta_choice.get("index"), 0)
            if index not in choices:
                message = {"role": "assistant", "content": None}
                choices[index] = {"index": index, "message": message, "logprobs": None, "finish_reason": None}
            choice = choices[index]
            delta = delta_choice.get("delta")
            if isinstance(delta, Mapping):
                _merge(choice["message"], delta, skip=("tool_calls", "role"))
                for fragment in _list(delta.get("tool_calls")):
                    if isinstance(fragment, Mapping):
                        _chat_tool_call(fragment, calls.setdefault(index, {}))
            if delta_choice.get("finish_reason") is not None:
                choice["finish_reason"] = copy.deepcopy(delta_choice["finish_reason"])
            logprobs = delta_choice.get("logprobs")
            if isinstance(logprobs, Mapping):
                if choice["logprobs"] is None:
                    choice["logprobs"] = {}
                _merge(choice["logprobs"], logprobs)
    if head is None:
        return Reassembled(None, complete, error)
    for index, choice in choices.items():
        if index in calls:
            choice["message"]["tool_calls"] = [calls[index][k] for k in sorted(calls[index])]
    head["choices"] = [choices[index] for index in sorted(choices)]
    head["usage"] = usage
    return Reassembled(head, complete, error)


def _chat_tool_call(fragment: Mapping[str, Any], calls: dict[int, dict[str, Any]]) -> None:
    position = _index(fragment.get("index"), len(calls))
    if position not in calls:
        calls[position] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    call = calls[position]
    if fragment.get("id"):
        call["id"] = copy.deepcopy(fragment["id"])
    if fragment.get("type"):
        call["type"] = copy.deepcopy(fragment["type"])
    function = fragment.get("function")
    if isinstance(function, Mapping):
        if function.get("name") and not call["function"]["name"]:
            call["function"]["name"] = copy.deepcopy(function["name"])
        _concat(call["function"], "arguments", function.get("arguments"))


_TERMINAL = ("response.completed", "response.incomplete", "response.failed")
_PART_EVENTS = (
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.refusal.delta",
)


def _responses(events: Iterable[tuple[str | None, dict[str, Any]]]) -> Reassembled:
    response: dict[str, Any] | None = None
    items: dict[int, dict[str, Any]] = {}
    error: dict[str, Any] | None = None
    for name, data in events:
        kind = data.get("type") or name
        if kind == "error":
            error = data
        elif kind in _TERMINAL and isinstance(data.get("response"), dict):
            final = data["response"]
            if kind == "response.failed" and isinstance(final.get("error"), dict):
                error = final["error"]
            return Reassembled(final, True, error)
        elif isinstance(data.get("response"), dict):
            response = copy.deepcopy(data["response"])
        elif isinstance(kind, str):
            _response_event(kind, data, items)
    if response is not None and items:
        response["output"] = [items[index] for index in sorted(items)]
    return Reassembled(response, False, error)


def _response_event(kind: str, data: Mapping[str, Any], items: dict[int, dict[str, Any]]) -> None:
    index = data.get("output_index")
    if not isinstance(index, int):
        return
    if kind in ("response.output_item.added", "response.output_item.done"):
        if isinstance(data.get("item"), Mapping):
            items[index] = copy.deepcopy(dict(data["item"]))
        return
    if index not in items:
        return
    item = items[index]
    if kind == "response.function_call_arguments.delta":
        _concat(item, "arguments", data.get("delta"))
    elif kind == "response.function_call_arguments.done" and isinstance(data.get("arguments"), str):
        item["arguments"] = data["arguments"]
    elif kind in _PART_EVENTS:
        if not isinstance(item.get("content"), list):
            item["content"] = []
        parts: list[Any] = item["content"]
        position = _index(data.get("content_index"), len(parts))
        if kind == "response.content_part.added":
            if isinstance(data.get("part"), Mapping):
                position = _set_or_append(parts, position, copy.deepcopy(dict(data["part"])))
            return
        key = "refusal" if kind == "response.refusal.delta" else "text"
        if position >= len(parts) or not isinstance(parts[position], dict):
            part_type = "refusal" if key == "refusal" else "output_text"
            position = _set_or_append(parts, position, {"type": part_type, key: ""})
        if kind == "response.output_text.done":
            if isinstance(data.get("text"), str):
                parts[position]["text"] = data["text"]
        else:
            _concat(parts[position], key, data.get("delta"))


def _set_or_append(items: list[Any], position: int, value: Any) -> int:
    if position < len(items):
        items[position] = value
        return position
    items.append(value)
    return len(items) - 1


def _messages(events: Iterable[tuple[str | None, dict[str, Any]]]) -> Reassembled:
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    partial_json: dict[int, list[str]] = {}
    complete = False
    error: dict[str, Any] | None = None
    for name, data in events:
        kind = data.get("type") or name
        if kind == "message_start" and isinstance(data.get("message"), Mapping):
            message = copy.deepcopy(dict(data["message"]))
            message["usage"] = dict(_mapping(message.get("usage")))
        elif kind == "content_block_start" and isinstance(data.get("content_block"), Mapping):
            blocks[_index(data.get("index"), len(blocks))] = copy.deepcopy(dict(data["content_block"]))
        elif kind == "content_block_delta":
            _block_delta(data, blocks, partial_json)
        elif kind == "content_block_stop":
            stopped = _index(data.get("index"), -1)
            if stopped in partial_json and stopped in blocks:
                blocks[stopped]["input"] = _tool_input(partial_json.pop(stopped))
        elif kind == "message_delta" and message is not None:
            for key, value in _mapping(data.get("delta")).items():
                message[key] = copy.deepcopy(value)
            for key, value in _mapping(data.get("usage")).items():
                if value is not None:
                    message["usage"][key] = copy.deepcopy(value)
        elif kind == "message_stop":
            complete = True
        elif kind == "error":
            error = data
    if message is None:
        return Reassembled(None, complete, error)
    for index, pieces in partial_json.items():
        if index in blocks:
            blocks[index]["input"] = _tool_input(pieces)
    message["content"] = [blocks[index] for index in sorted(blocks)]
    return Reassembled(message, complete, error)


def _block_delta(
    data: Mapping[str, Any], blocks: dict[int, dict[str, Any]], partial_json: dict[int, list[str]]
) -> None:
    index = data.get("index")
    delta = data.get("delta")
    if not isinstance(index, int) or index not in blocks or not isinstance(delta, Mapping):
        return
    block = blocks[index]
    kind = delta.get("type")
    if kind == "text_delta":
        _concat(block, "text", delta.get("text"))
    elif kind == "thinking_delta":
        _concat(block, "thinking", delta.get("thinking"))
    elif kind == "signature_delta":
        block["signature"] = copy.deepcopy(delta.get("signature"))
    elif kind == "input_json_delta":
        if isinstance(delta.get("partial_json"), str):
            partial_json.setdefault(index, []).append(delta["partial_json"])
    elif kind == "citations_delta" and delta.get("citation") is not None:
        if not isinstance(block.get("citations"), list):
            block["citations"] = []
        block["citations"].append(copy.deepcopy(delta["citation"]))


def _tool_input(pieces: list[str]) -> Any:
    text = "".join(pieces)
    if not text.strip():
        return {}
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}


def _gemini(chunks: Iterable[dict[str, Any]]) -> Reassembled:
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
        for candidate in _list(chunk.get("candidates")):
            if isinstance(candidate, Mapping):
                _candidate(candidate, candidates)
    if response is None:
        return Reassembled(None, False, error)
    if candidates:
        response["candidates"] = [candidates[index] for index in sorted(candidates)]
    blocked = bool(_mapping(response.get("promptFeedback")).get("blockReason"))
    finished = bool(candidates) and all(c.get("finishReason") for c in candidates.values())
    return Reassembled(response, finished or blocked, error)


def _candidate(candidate: Mapping[str, Any], candidates: dict[int, dict[str, Any]]) -> None:
    index = _index(candidate.get("index"), 0)
    if index not in candidates:
        candidates[index] = {"content": {"role": "model", "parts": []}, "index": index}
    merged = candidates[index]
    for key, value in candidate.items():
        if key != "content" and value is not None:
            merged[key] = copy.deepcopy(value)
    content = _mapping(candidate.get("content"))
    if content.get("role"):
        merged["content"]["role"] = content["role"]
    parts: list[dict[str, Any]] = merged["content"]["parts"]
    for part in _list(content.get("parts")):
        if not isinstance(part, Mapping):
            continue
        last = parts[-1] if parts else None
        # Adjacent text parts of one kind (thought or answer) are one part, unless both are signed.
        if (
            last is not None
            and isinstance(last.get("text"), str)
            and isinstance(part.get("text"), str)
            and bool(last.get("thought")) == bool(part.get("thought"))
            and not ("thoughtSignature" in last and "thoughtSignature" in part)
        ):
            last["text"] += part["text"]
            for key, value in part.items():
                if key != "text":
                    last[key] = copy.deepcopy(value)
        else:
            parts.append(copy.deepcopy(dict(part)))
