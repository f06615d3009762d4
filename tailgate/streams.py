"""Streamed answers reassembled into the answer the call would have given unstreamed; tool calls.

Pure functions over the raw bytes a client received (no HTTP objects), so the same code serves
live metering, cut streams and re-reading a stored capture. The recorder runs this once per
streamed request, so it is written for CPU: events come parsed from :mod:`tailgate.framing`,
are folded in place (parsed objects are never shared, so nothing is copied) and streamed
strings are joined once at the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tailgate.dialects import Operation
from tailgate.framing import Frame, event_name, gemini_objects, loads_lenient, sse_frames, sse_objects


@dataclass(slots=True)
class Reassembled:
    response: dict[str, Any] | None
    """The final answer object as an unstreamed call returns it; ``None`` when nothing arrived."""
    complete: bool
    """The stream reached its end marker (``[DONE]``, terminal event, ``message_stop``, finish)."""
    error: dict[str, Any] | None
    """The payload of an error event sent mid-stream, as sent."""


def reassemble(operation: Operation, raw: bytes, *, sse: bool = True) -> Reassembled:
    """Rebuild the unstreamed answer of ``operation`` from its streamed body.

    ``sse=False`` is Gemini's array form (``streamGenerateContent`` without ``alt=sse``).
    Count-tokens operations do not stream and give an empty result.
    """
    if operation is Operation.CHAT_COMPLETIONS:
        return _reassemble_chat(sse_frames(raw)[0])
    if operation is Operation.RESPONSES:
        return _reassemble_responses(sse_objects(raw))
    if operation is Operation.MESSAGES:
        return _reassemble_messages(sse_objects(raw))
    if operation in (Operation.GENERATE_CONTENT, Operation.STREAM_GENERATE_CONTENT):
        chunks = [data for _, data in sse_objects(raw)] if sse else gemini_objects(raw)
        return _reassemble_gemini(chunks)
    return Reassembled(None, False, None)


class _Text(list[str]):
    """The pieces of a streamed string, joined once at the end (repeated ``+=`` is quadratic)."""


_Pending = list[tuple[dict[str, Any], str]]
"""Where a :class:`_Text` was put, to be joined at the end."""


def _append_text(target: dict[str, Any], key: str, piece: object, pending: _Pending) -> None:
    if not isinstance(piece, str):
        return
    current = target.get(key)
    if type(current) is _Text:
        current.append(piece)
    elif isinstance(current, str):
        target[key] = _Text((current, piece))
        pending.append((target, key))
    else:
        target[key] = piece


def _join_texts(pending: _Pending) -> None:
    for target, key in pending:
        value = target.get(key)
        if type(value) is _Text:
            target[key] = "".join(value)


def _merge_delta(target: dict[str, Any], delta: dict[str, Any], pending: _Pending) -> None:
    """Fold a streamed delta into ``target``: strings concatenate, lists extend, the rest replaces."""
    for key, value in delta.items():
        current = target.get(key)
        if isinstance(value, str) and isinstance(current, str | _Text):
            _append_text(target, key, value, pending)
        elif isinstance(value, list) and isinstance(current, list) and type(current) is not _Text:
            current.extend(value)
        elif value is not None or key not in target:
            target[key] = value


def _index(value: object, default: int) -> int:
    return value if type(value) is int and value >= 0 else default


# OpenAI Chat Completions ---------------------------------------------------------------------


def _reassemble_chat(frames: list[Frame]) -> Reassembled:
    chunks: list[dict[str, Any]] = []
    choices: dict[int, dict[str, Any]] = {}
    calls: dict[int, dict[int, dict[str, Any]]] = {}
    pending: _Pending = []
    complete = False
    error: dict[str, Any] | None = None
    for _, data in frames:
        if data == b"[DONE]":
            complete = True
            continue
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            # Not JSON, so possibly the end marker with spaces around it.
            if data.decode("utf-8", "replace").strip() == "[DONE]":
                complete = True
                continue
            chunk = loads_lenient(data)
        if not isinstance(chunk, dict):
            continue
        streamed = chunk.get("choices")
        if streamed is None and "error" in chunk and "choices" not in chunk:
            error = chunk
            continue
        chunks.append(chunk)
        if not isinstance(streamed, list):
            continue
        for delta_choice in streamed:
            if not isinstance(delta_choice, dict):
                continue
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
            if isinstance(delta, dict):
                message = choice["message"]
                content = delta.get("content")
                if len(delta) == 1 and isinstance(content, str):
                    # The common delta, one piece of text: what the general merge does with it.
                    current = message["content"]
                    if type(current) is _Text:
                        current.append(content)
                    elif isinstance(current, str):
                        message["content"] = _Text((current, content))
                        pending.append((message, "content"))
                    else:
                        message["content"] = content
                else:
                    _fold_chat_delta(delta, message, calls.setdefault(index, {}), pending)
            value = delta_choice.get("finish_reason")
            if value is not None:
                choice["finish_reason"] = value
            value = delta_choice.get("logprobs")
            if isinstance(value, dict):
                if choice["logprobs"] is None:
                    choice["logprobs"] = {}
                _merge_delta(choice["logprobs"], value, pending)
    if not chunks:
        return Reassembled(None, complete, error)
    for index, choice in choices.items():
        if calls.get(index):
            choice["message"]["tool_calls"] = [calls[index][k] for k in sorted(calls[index])]
    first = chunks[0]
    # Each of these is its last non-null value: usually in the last chunk, so read backwards.
    head = {
        "id": first.get("id"),
        "object": "chat.completion",
        "created": first.get("created"),
        "model": _last(chunks, "model"),
        "service_tier": _last(chunks, "service_tier"),
        "system_fingerprint": _last(chunks, "system_fingerprint"),
        "choices": [choices[index] for index in sorted(choices)],
        "usage": _last(chunks, "usage"),
    }
    _join_texts(pending)
    return Reassembled(head, complete, error)


def _last(chunks: list[dict[str, Any]], key: str) -> Any:
    """The last non-null value of ``key`` in ``chunks``; ``None`` when there is none."""
    for chunk in reversed(chunks):
        value = chunk.get(key)
        if value is not None:
            return value
    return None


def _fold_chat_delta(
    delta: dict[str, Any], message: dict[str, Any], calls: dict[int, dict[str, Any]], pending: _Pending
) -> None:
    fragments = delta.get("tool_calls")
    if "role" in delta or "tool_calls" in delta:
        delta = {key: value for key, value in delta.items() if key not in ("role", "tool_calls")}
    _merge_delta(message, delta, pending)
    if isinstance(fragments, list):
        for fragment in fragments:
            if isinstance(fragment, dict):
                _fold_tool_call(fragment, calls, pending)


def _fold_tool_call(fragment: dict[str, Any], calls: dict[int, dict[str, Any]], pending: _Pending) -> None:
    position = _index(fragment.get("index"), len(calls))
    call = calls.get(position)
    if call is None:
        call = calls[position] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    if fragment.get("id"):
        call["id"] = fragment["id"]
    if fragment.get("type"):
        call["type"] = fragment["type"]
    function = fragment.get("function")
    if isinstance(function, dict):
        # The name comes whole in the first fragment; some servers repeat it, so never concatenate.
        if function.get("name") and not call["function"]["name"]:
            call["function"]["name"] = function["name"]
        _append_text(call["function"], "arguments", function.get("arguments"), pending)


# OpenAI Responses ----------------------------------------------------------------------------

_RESPONSES_TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def _reassemble_responses(events: list[tuple[bytes | None, dict[str, Any]]]) -> Reassembled:
    error: dict[str, Any] | None = None
    # The terminal event carries the whole answer: with one, only the errors before it matter.
    # An event's type is its data's ``type``, else its SSE ``event:`` name.
    for name, data in events:
        kind = data.get("type") or event_name(name)
        if kind == "error":
            error = data
        elif kind in _RESPONSES_TERMINAL and isinstance(data.get("response"), dict):
            final = data["response"]
            if kind == "response.failed" and isinstance(final.get("error"), dict):
                error = final["error"]
            return Reassembled(final, True, error)
    # Cut before its end: the last snapshot of the response, with the items streamed since.
    response: dict[str, Any] | None = None
    items: dict[int, dict[str, Any]] = {}
    pending: _Pending = []
    for name, data in events:
        kind = data.get("type") or event_name(name)
        if kind == "error":
            continue
        if isinstance(data.get("response"), dict):
            response = data["response"]
        elif isinstance(kind, str):
            _fold_response_event(kind, data, items, pending)
    if response is not None and items:
        response["output"] = [items[index] for index in sorted(items)]
    _join_texts(pending)
    return Reassembled(response, False, error)


_TEXT_EVENTS = frozenset(
    {
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.refusal.delta",
    }
)


def _fold_response_event(
    kind: str, data: dict[str, Any], items: dict[int, dict[str, Any]], pending: _Pending
) -> None:
    index = data.get("output_index")
    if not isinstance(index, int):
        return
    if kind in ("response.output_item.added", "response.output_item.done"):
        if isinstance(data.get("item"), dict):
            items[index] = data["item"]
        return
    item = items.get(index)
    if item is None:
        return
    if kind == "response.function_call_arguments.delta":
        _append_text(item, "arguments", data.get("delta"), pending)
    elif kind == "response.function_call_arguments.done" and isinstance(data.get("arguments"), str):
        item["arguments"] = data["arguments"]
    elif kind in _TEXT_EVENTS:
        if not isinstance(item.get("content"), list):
            item["content"] = []
        parts: list[Any] = item["content"]
        position = _index(data.get("content_index"), len(parts))
        if kind == "response.content_part.added":
            if isinstance(data.get("part"), dict):
                _put(parts, position, data["part"])
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
            _append_text(part, key, data.get("delta"), pending)


def _put(items: list[Any], position: int, value: Any) -> int:
    """Set ``items[position]``, or append when the position is past the end; returns where it went."""
    if position < len(items):
        items[position] = value
        return position
    items.append(value)
    return len(items) - 1


# Anthropic Messages --------------------------------------------------------------------------


def _reassemble_messages(events: list[tuple[bytes | None, dict[str, Any]]]) -> Reassembled:
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    partial_json: dict[int, list[str]] = {}
    pending: _Pending = []
    complete = False
    error: dict[str, Any] | None = None
    for name, data in events:
        kind = data.get("type") or event_name(name)
        if kind == "content_block_delta":
            index = data.get("index")
            delta = data.get("delta")
            if isinstance(index, int) and index in blocks and isinstance(delta, dict):
                _fold_block_delta(delta, index, blocks[index], partial_json, pending)
        elif kind == "message_start" and isinstance(data.get("message"), dict):
            message = data["message"]
            usage = message.get("usage")
            message["usage"] = usage if isinstance(usage, dict) else {}
        elif kind == "content_block_start" and isinstance(data.get("content_block"), dict):
            blocks[_index(data.get("index"), len(blocks))] = data["content_block"]
        elif kind == "content_block_stop":
            stopped = _index(data.get("index"), -1)
            if stopped in partial_json and stopped in blocks:
                blocks[stopped]["input"] = _parse_input(partial_json.pop(stopped))
        elif kind == "message_delta" and message is not None:
            delta = data.get("delta")
            if isinstance(delta, dict):
                message.update(delta)
            usage = data.get("usage")
            if isinstance(usage, dict):
                # Counts are cumulative: the latest value replaces, never adds.
                totals = message["usage"]
                for key, value in usage.items():
                    if value is not None:
                        totals[key] = value
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
    _join_texts(pending)
    return Reassembled(message, complete, error)


def _fold_block_delta(
    delta: dict[str, Any],
    index: int,
    block: dict[str, Any],
    partial_json: dict[int, list[str]],
    pending: _Pending,
) -> None:
    kind = delta.get("type")
    if kind == "text_delta":
        _append_text(block, "text", delta.get("text"), pending)
    elif kind == "input_json_delta":
        if isinstance(delta.get("partial_json"), str):
            partial_json.setdefault(index, []).append(delta["partial_json"])
    elif kind == "thinking_delta":
        _append_text(block, "thinking", delta.get("thinking"), pending)
    elif kind == "signature_delta":
        block["signature"] = delta.get("signature")
    elif kind == "citations_delta" and delta.get("citation") is not None:
        citations = block.get("citations")
        if not isinstance(citations, list):
            citations = block["citations"] = []
        citations.append(delta["citation"])


def _parse_input(pieces: list[str]) -> Any:
    buffer = "".join(pieces)
    if not buffer.strip():
        return {}
    try:
        return orjson.loads(buffer)
    except orjson.JSONDecodeError:
        return {}


# Gemini --------------------------------------------------------------------------------------


def _reassemble_gemini(chunks: list[dict[str, Any]]) -> Reassembled:
    response: dict[str, Any] | None = None
    candidates: dict[int, dict[str, Any]] = {}
    pending: _Pending = []
    error: dict[str, Any] | None = None
    for chunk in chunks:
        streamed = chunk.get("candidates")
        if streamed is None and "error" in chunk and "candidates" not in chunk:
            error = chunk
            continue
        if response is None:
            response = {}
        # Every field replaces unless null; the candidates are replaced by their merge at the end.
        for key, value in chunk.items():
            if value is not None:
                response[key] = value
        if not isinstance(streamed, list):
            continue
        for candidate in streamed:
            if not isinstance(candidate, dict):
                continue
            index = _index(candidate.get("index"), 0)
            merged = candidates.get(index)
            if merged is None:
                merged = candidates[index] = {"content": {"role": "model", "parts": []}, "index": index}
            for key, value in candidate.items():
                if value is not None and key != "content":
                    merged[key] = value
            content = candidate.get("content")
            if not isinstance(content, dict):
                continue
            merged_content = merged["content"]
            role = content.get("role")
            if role:
                merged_content["role"] = role
            added = content.get("parts")
            if not isinstance(added, list):
                continue
            parts: list[dict[str, Any]] = merged_content["parts"]
            for part in added:
                if not isinstance(part, dict):
                    continue
                if parts:
                    last = parts[-1]
                    if len(part) == 1 and len(last) == 1:
                        # The common part, more text after text: what _joined_text does with it.
                        text = part.get("text")
                        current = last.get("text")
                        if type(current) is _Text and type(text) is str:
                            current.append(text)
                            continue
                    if _joined_text(last, part, pending):
                        continue
                parts.append(part)
    if response is None:
        return Reassembled(None, False, error)
    response.pop("candidates", None)
    if candidates:
        response["candidates"] = [candidates[index] for index in sorted(candidates)]
    feedback = response.get("promptFeedback")
    blocked = isinstance(feedback, dict) and bool(feedback.get("blockReason"))
    finished = bool(candidates) and all(c.get("finishReason") for c in candidates.values())
    _join_texts(pending)
    return Reassembled(response, finished or blocked, error)


def _joined_text(last: dict[str, Any], part: dict[str, Any], pending: _Pending) -> bool:
    """Fold ``part`` into ``last`` when both are text of one kind (thought or answer), as unstreamed."""
    text = part.get("text")
    current = last.get("text")
    if (
        not isinstance(text, str)
        or not isinstance(current, str | _Text)
        or bool(last.get("thought")) != bool(part.get("thought"))
        or ("thoughtSignature" in last and "thoughtSignature" in part)
    ):
        return False
    if isinstance(current, _Text):
        current.append(text)
    else:
        last["text"] = _Text((current, text))
        pending.append((last, "text"))
    if len(part) > 1:
        for key, value in part.items():
            if key != "text":
                last[key] = value
    return True


# Tool calls ----------------------------------------------------------------------------------


def tool_calls(operation: Operation, response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"name": str, "params": dict}]`` for every tool call in a final or reassembled answer.

    Arguments sent as a JSON string are parsed leniently: a non-object becomes ``{"value": …}``
    and unparseable text ``{"_raw": text}``.
    """
    return [_call(name, arguments) for name, arguments in _tool_call_sources(operation, response)]


def count_tool_calls(operation: Operation, response: Mapping[str, Any]) -> int:
    """``len(tool_calls(operation, response))``, without parsing any arguments."""
    count = 0
    if operation is Operation.CHAT_COMPLETIONS:
        for choice in _as_list(response.get("choices")):
            message = _as_mapping(_as_mapping(choice).get("message"))
            count += len(_as_list(message.get("tool_calls")))
            if _as_mapping(message.get("function_call")):
                count += 1
    elif operation is Operation.RESPONSES:
        for item in _as_list(response.get("output")):
            count += _as_mapping(item).get("type") in ("function_call", "custom_tool_call")
    elif operation is Operation.MESSAGES:
        for block in _as_list(response.get("content")):
            count += _as_mapping(block).get("type") == "tool_use"
    elif operation in (Operation.GENERATE_CONTENT, Operation.STREAM_GENERATE_CONTENT):
        for candidate in _as_list(response.get("candidates")):
            content = _as_mapping(_as_mapping(candidate).get("content"))
            for part in _as_list(content.get("parts")):
                count += bool(_as_mapping(_as_mapping(part).get("functionCall")))
    return count


def _tool_call_sources(operation: Operation, response: Mapping[str, Any]) -> Iterator[tuple[object, object]]:
    """The name and raw arguments of every tool call, in order."""
    if operation is Operation.CHAT_COMPLETIONS:
        for choice in _as_list(response.get("choices")):
            message = _as_mapping(_as_mapping(choice).get("message"))
            for call in _as_list(message.get("tool_calls")):
                function = _as_mapping(_as_mapping(call).get("function"))
                yield function.get("name"), function.get("arguments")
            legacy = _as_mapping(message.get("function_call"))
            if legacy:
                yield legacy.get("name"), legacy.get("arguments")
    elif operation is Operation.RESPONSES:
        for raw_item in _as_list(response.get("output")):
            item = _as_mapping(raw_item)
            if item.get("type") == "function_call":
                yield item.get("name"), item.get("arguments")
            elif item.get("type") == "custom_tool_call":
                yield item.get("name"), {"input": item.get("input")}
    elif operation is Operation.MESSAGES:
        for raw_block in _as_list(response.get("content")):
            block = _as_mapping(raw_block)
            if block.get("type") == "tool_use":
                yield block.get("name"), block.get("input")
    elif operation in (Operation.GENERATE_CONTENT, Operation.STREAM_GENERATE_CONTENT):
        for candidate in _as_list(response.get("candidates")):
            content = _as_mapping(_as_mapping(candidate).get("content"))
            for part in _as_list(content.get("parts")):
                call = _as_mapping(_as_mapping(part).get("functionCall"))
                if call:
                    yield call.get("name"), call.get("args")


def _as_mapping(value: object) -> Mapping[str, Any]:
    # The ABC check is several times slower than the checks that answer for JSON.
    if type(value) is dict:
        return value
    return value if value is not None and isinstance(value, Mapping) else {}


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


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
