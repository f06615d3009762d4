"""How streamed bodies are cut into events: Server-Sent Events, and Gemini's JSON-array stream.

Works on the bytes a client received, without decoding the body: an event is cut out at its
line breaks and parsed by one ``orjson.loads``. The common framings (every event one ``data:``
line, or one ``event:`` line then one ``data:`` line) are read a whole body at a time; anything
else (comments, ``id:`` fields, multi-line data, lone CRs, a cut) goes line by line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import orjson

_BOM = b"\xef\xbb\xbf"

Frame = tuple[bytes | None, bytes]
"""One SSE event as cut from the body: its ``event:`` name (``None`` when unnamed) and its data."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str | None
    data: str


def iter_sse(raw: bytes, *, include_incomplete: bool = False) -> Iterator[SseEvent]:
    """Events of an SSE body: ``\\n``, ``\\r\\n`` or ``\\r`` line ends, ``data:`` lines joined by ``\\n``.

    An event is yielded at its terminating blank line; a trailing event without one (a cut
    stream) only when ``include_incomplete``. Comment lines and events without data are skipped.
    Invalid UTF-8 reads as U+FFFD.
    """
    frames, cut = sse_frames(raw)
    if cut and not include_incomplete:
        frames.pop()
    for name, data in frames:
        yield SseEvent(event_name(name), data.decode("utf-8", "replace"))


def sse_frames(raw: bytes) -> tuple[list[Frame], bool]:
    """Every event of an SSE body as bytes, and whether the last one was cut before its blank line.

    The same events as :func:`iter_sse` (which decodes these), without decoding the body.
    """
    if raw[:3] == _BOM:
        raw = raw[3:]
    if raw.find(b"\r") < 0:
        lines = raw.split(b"\n")
        if not lines[-1]:
            lines.pop()  # what follows a final line break, when empty, is not a blank line
    else:
        # LF, CR LF and lone CR are line ends, as in the spec; slower than split, and it leaves
        # out the piece after a final line break itself.
        lines = raw.splitlines()
    frames = _uniform_frames(lines)
    if frames is not None:
        return frames
    return _general_frames(lines)


def _uniform_frames(lines: list[bytes]) -> tuple[list[Frame], bool] | None:
    """The common framings, ``data:`` lines or ``event:`` and ``data:`` pairs, read whole; else ``None``."""
    if not any(lines[1::2]):
        datas = lines[::2]
        if all(map(bytes.startswith, datas, repeat(b"data: "))):
            return list(zip(repeat(None), [line[6:] for line in datas])), len(lines) % 2 == 1
    elif not any(lines[2::3]):
        heads = lines[::3]
        datas = lines[1::3]
        # A name left after the last data line is an event cut before its data: not an event.
        if all(map(bytes.startswith, datas, repeat(b"data: "))):
            # Streams repeat a few event names: look each one up once.
            distinct = set(heads)
            names = {head: head[7:] or None for head in distinct if head.startswith(b"event: ")}
            if len(names) == len(distinct):
                frames = zip(map(names.__getitem__, heads), [line[6:] for line in datas], strict=False)
                return list(frames), len(lines) % 3 == 2
    return None


def _general_frames(lines: list[bytes]) -> tuple[list[Frame], bool]:
    frames: list[Frame] = []
    name: bytes | None = None
    data: bytes | None = None
    more: list[bytes] | None = None
    for line in lines:
        if not line:
            if data is not None:
                frames.append((name, data if more is None else b"\n".join(more)))
                data = more = None
            name = None
            continue
        if line.startswith(b"data: "):
            value = line[6:]
        else:
            field, colon, value = line.partition(b":")
            if colon and value.startswith(b" "):
                value = value[1:]
            if field != b"data":
                if field == b"event":
                    name = value or None
                continue
        if data is None:
            data = value
        elif more is None:
            more = [data, value]
        else:
            more.append(value)
    if data is not None:
        frames.append((name, data if more is None else b"\n".join(more)))
        return frames, True
    return frames, False


def sse_objects(raw: bytes) -> list[tuple[bytes | None, dict[str, Any]]]:
    """The events whose data is a JSON object, parsed, with their names (a cut last event too)."""
    objects = []
    for name, data in sse_frames(raw)[0]:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            value = loads_lenient(data)
        if isinstance(value, dict):
            objects.append((name, value))
    return objects


def loads_lenient(data: bytes) -> Any:
    """``data`` parsed with invalid UTF-8 read as U+FFFD, as in a decoded body; ``None`` if not JSON."""
    try:
        return orjson.loads(data.decode("utf-8", "replace"))
    except orjson.JSONDecodeError:
        return None


def event_name(name: bytes | None) -> str | None:
    """An event's name as text."""
    return name.decode("utf-8", "replace") if name is not None else None


def iter_gemini_array(raw: bytes) -> Iterator[dict[str, Any]]:
    """The complete top-level objects of a (possibly cut) JSON array, or of bare concatenated objects."""
    return iter(gemini_objects(raw))


def gemini_objects(raw: bytes) -> list[dict[str, Any]]:
    """The complete top-level objects of a Gemini JSON-array stream (see :func:`iter_gemini_array`)."""
    # A whole array parses in one call. orjson reads integers past 64 bits as floats where the
    # text decoder keeps them exact, and an array nested in the array ends the scan below, so
    # those (and every cut or odd body) take the scan.
    if raw.translate(_DIGIT_RUNS).find(_LONG_NUMBER) < 0:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return [value]
        if isinstance(value, list) and not any(isinstance(item, list) for item in value):
            return [item for item in value if isinstance(item, dict)]
    return list(_scan_gemini_array(raw))


_DIGIT_RUNS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_LONG_NUMBER = b"0" * 19


def _scan_gemini_array(raw: bytes) -> Iterator[dict[str, Any]]:
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
