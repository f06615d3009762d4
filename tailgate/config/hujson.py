"""HuJSON: JSON with ``//`` and ``/* */`` comments and trailing commas.

A small recursive-descent parser for the structure; strings and numbers are decoded by the
stdlib ``json`` scanner, so plain JSON parses exactly as :func:`json.loads` parses it (except
that the non-standard ``NaN`` and ``Infinity`` literals are refused). Errors carry a 1-based
line and column; duplicate keys are reported with their path (the last value wins, as in
``json.loads``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_DEPTH = 400
_WHITESPACE = " \t\n\r"
_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_\-]+")
_LITERALS: dict[str, object] = {"true": True, "false": False, "null": None}


def key_path(parent: str, key: str) -> str:
    """The path of ``key`` inside the object at ``parent``: ``a.b``, or ``a[odd.key]``."""
    if _SIMPLE_KEY.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{key}]"


def line_column(text: str, pos: int) -> tuple[int, int]:
    """The 1-based line and column of character offset ``pos`` in ``text``."""
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    return line, column


class HujsonError(ValueError):
    """The text is not valid HuJSON; ``line`` and ``column`` are 1-based."""

    def __init__(self, message: str, text: str, pos: int) -> None:
        self.message = message
        self.pos = pos
        self.line, self.column = line_column(text, pos)
        super().__init__(f"line {self.line}, column {self.column}: {message}")


@dataclass(frozen=True, slots=True)
class DuplicateKey:
    path: str
    line: int
    column: int


@dataclass(slots=True)
class Parsed:
    value: Any
    duplicates: list[DuplicateKey] = field(default_factory=list)


def parse(text: str, *, parse_float: Callable[[str], Any] = float) -> Parsed:
    """Parse HuJSON ``text``; raises :class:`HujsonError` with the position of the first fault."""
    parser = _Parser(text, parse_float)
    pos = parser.skip(0)
    if pos == len(text):
        raise HujsonError("expected a value, found the end of the text", text, pos)
    value, pos = parser.value(pos, "", 0)
    pos = parser.skip(pos)
    if pos != len(text):
        raise HujsonError("unexpected text after the top-level value", text, pos)
    return Parsed(value, parser.duplicates)


def loads(text: str) -> Any:
    """Parse HuJSON ``text`` into plain Python values (duplicate keys: the last one wins)."""
    return parse(text).value


def is_blank(text: str) -> bool:
    """Whether ``text`` holds nothing but whitespace and comments."""
    try:
        return _Parser(text, float).skip(0) == len(text)
    except HujsonError:
        return False


class _Parser:
    def __init__(self, text: str, parse_float: Callable[[str], Any]) -> None:
        self.text = text
        self.decoder = json.JSONDecoder(parse_float=parse_float, strict=True)
        self.duplicates: list[DuplicateKey] = []

    def fail(self, message: str, pos: int) -> HujsonError:
        return HujsonError(message, self.text, pos)

    def skip(self, pos: int) -> int:
        """Skip whitespace and comments from ``pos``; return the next significant offset."""
        text, end = self.text, len(self.text)
        while pos < end:
            char = text[pos]
            if char in _WHITESPACE:
                pos += 1
            elif char == "/" and text.startswith("//", pos):
                newline = text.find("\n", pos)
                pos = end if newline < 0 else newline + 1
            elif char == "/" and text.startswith("/*", pos):
                close = text.find("*/", pos + 2)
                if close < 0:
                    raise self.fail("unterminated /* comment", pos)
                pos = close + 2
            else:
                break
        return pos

    def value(self, pos: int, path: str, depth: int) -> tuple[Any, int]:
        text = self.text
        if pos >= len(text):
            raise self.fail("expected a value, found the end of the text", pos)
        char = text[pos]
        if char == "{":
            return self.object(pos, path, depth + 1)
        if char == "[":
            return self.array(pos, path, depth + 1)
        if char == '"' or char.isdigit() or (char == "-" and text[pos + 1 : pos + 2].isdigit()):
            return self.scalar(pos)
        for word, literal in _LITERALS.items():
            if text.startswith(word, pos):
                return literal, pos + len(word)
        if char == "/":
            raise self.fail("a lone '/' is not a comment (use // or /* */)", pos)
        raise self.fail(f"expected a value, found {_describe(char)}", pos)

    def scalar(self, pos: int) -> tuple[Any, int]:
        try:
            return self.decoder.raw_decode(self.text, pos)
        except json.JSONDecodeError as exc:
            raise self.fail(exc.msg.lower(), exc.pos) from None

    def object(self, pos: int, path: str, depth: int) -> tuple[dict[str, Any], int]:
        if depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH} levels", pos)
        text = self.text
        result: dict[str, Any] = {}
        pos = self.skip(pos + 1)
        while True:
            if pos < len(text) and text[pos] == "}":
                return result, pos + 1
            if pos >= len(text) or text[pos] != '"':
                raise self.fail(f"expected a \"quoted\" key or '}}', found {_describe_at(text, pos)}", pos)
            key_at = pos
            key, pos = self.scalar(pos)
            member_path = key_path(path, key)
            pos = self.skip(pos)
            if pos >= len(text) or text[pos] != ":":
                raise self.fail(f"expected ':' after key \"{key}\", found {_describe_at(text, pos)}", pos)
            value, pos = self.value(self.skip(pos + 1), member_path, depth)
            if key in result:
                self.duplicates.append(DuplicateKey(member_path, *line_column(text, key_at)))
            result[key] = value
            pos = self.skip(pos)
            if pos < len(text) and text[pos] == ",":
                pos = self.skip(pos + 1)
            elif pos >= len(text) or text[pos] != "}":
                raise self.fail(f"expected ',' or '}}' after a member, found {_describe_at(text, pos)}", pos)

    def array(self, pos: int, path: str, depth: int) -> tuple[list[Any], int]:
        if depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH} levels", pos)
        text = self.text
        result: list[Any] = []
        pos = self.skip(pos + 1)
        while True:
            if pos < len(text) and text[pos] == "]":
                return result, pos + 1
            value, pos = self.value(pos, f"{path}[{len(result)}]", depth)
            result.append(value)
            pos = self.skip(pos)
            if pos < len(text) and text[pos] == ",":
                pos = self.skip(pos + 1)
            elif pos >= len(text) or text[pos] != "]":
                raise self.fail(f"expected ',' or ']' after an element, found {_describe_at(text, pos)}", pos)


def _describe_at(text: str, pos: int) -> str:
    return "the end of the text" if pos >= len(text) else _describe(text[pos])


def _describe(char: str) -> str:
    return repr(char) if char.isprintable() else f"character U+{ord(char):04X}"
