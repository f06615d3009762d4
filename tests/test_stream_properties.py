"""The fast reassembly against the slow reference in ``tests/streams_reference.py``.

Both must give the same answer, byte for byte once serialised, on the corpus, on the demo
provider's streams and on random variants of both: re-chunked, re-framed, cut, perturbed and
corrupted. Random variants come from generators seeded by each stream's name, so runs repeat.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
from typing import Any

import pytest

from tailgate.demo import DemoOptions, demo_answer
from tailgate.dialects import Operation
from tailgate.framing import iter_gemini_array, iter_sse
from tailgate.streams import reassemble
from tailgate.usage import usage_from_response, usage_from_stream
from tests import streams_reference as reference
from tests.golden_corpus import CASES


def _named_sse(events: list[dict[str, Any]]) -> bytes:
    """``event: <type>`` (when it has one) and ``data: <json>`` per event, as providers send them."""
    return _sse_body([(event.get("type"), json.dumps(event)) for event in events], random.Random(0), False)


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
    failed: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"id": "r", "status": "in_progress", "output": []}},
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "message", "content": []}},
        {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": "Hel"},
        {"type": "error", "code": "server_error", "message": "retry"},
        {"type": "response.failed", "response": {"id": "r", "status": "failed", "error": {"code": "x"}}},
    ]
    blocked: list[dict[str, Any]] = [
        {"candidates": [{"content": {"parts": [{"text": "a"}], "role": "model"}, "index": 0}]},
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}},
    ]
    late_input: list[dict[str, Any]] = [
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
        ("odd_responses_failed", Operation.RESPONSES, True, _named_sse(failed)),
        ("odd_gemini_blocked", Operation.STREAM_GENERATE_CONTENT, True, _named_sse(blocked)),
        ("odd_messages_late_input", Operation.MESSAGES, True, _named_sse(late_input)),
    ]


STREAMS = (
    [(c.name, c.operation, c.form == "sse", c.raw) for c in CASES if c.streamed]
    + _odd_streams()
    + _demo_streams()
)


TOOL_STREAMS = [stream for stream in STREAMS if stream[0].endswith("_tools")]


@pytest.mark.parametrize(("name", "operation", "sse", "raw"), STREAMS, ids=[s[0] for s in STREAMS])
def test_fast_equals_reference(name: str, operation: Operation, sse: bool, raw: bytes) -> None:
    _assert_same(operation, raw, sse)
    rng = random.Random(name)
    for _ in range(40):
        _assert_same(operation, _variant(operation, raw, sse, rng), sse)


@pytest.mark.parametrize(("name", "operation", "sse", "raw"), TOOL_STREAMS, ids=[s[0] for s in TOOL_STREAMS])
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


@pytest.mark.parametrize(("name", "operation", "sse", "raw"), TOOL_STREAMS, ids=[s[0] for s in TOOL_STREAMS])
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
