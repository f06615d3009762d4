"""Reading typed fields out of the parsed config tree, and the problems found while doing so.

Every reader takes the path of what it reads (``providers.openai.preference``) so that each
message names its place. A value of the wrong type is a warning and the field keeps its
default; JSON ``null`` means "not set". ``${VAR}`` macros are expanded when a string is read,
so messages can quote what the author wrote without revealing an environment secret.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tailgate.config.hujson import key_path
from tailgate.config.units import type_name

_MACRO = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(slots=True)
class Problems:
    """What a load found, by consequence."""

    errors: list[str] = field(default_factory=list)
    """The config cannot be used at all."""
    fail_closed: list[str] = field(default_factory=list)
    """A part of the config is unusable and is refused at request time (bad quota definitions)."""
    warnings: list[str] = field(default_factory=list)
    """The config loads; a save through the API is refused."""
    notes: list[str] = field(default_factory=list)
    """Informational: accepted legacy or ignored fields. Never refuse a save."""


def macro_names(value: object) -> Iterator[str]:
    """Every ``${VAR}`` name used in the string values of a parsed tree (``$${…}`` is literal)."""
    if isinstance(value, str):
        for match in _MACRO.finditer(value):
            if not match.group(1):
                yield match.group(2)
    elif isinstance(value, dict):
        for item in value.values():
            yield from macro_names(item)
    elif isinstance(value, list):
        for item in value:
            yield from macro_names(item)


def expand_macros(text: str, environ: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` with its value and ``$${VAR}`` with a literal ``${VAR}``."""
    if "${" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return "${" + match.group(2) + "}"
        return environ.get(match.group(2), match.group(0))

    return _MACRO.sub(replace, text)


def parse_header_line(entry: str) -> tuple[str, str] | None:
    """``"Header-Name: value"`` → (name, value), or None when the entry is not in that format."""
    name, colon, value = entry.partition(":")
    if not colon or not _HEADER_NAME.fullmatch(name.strip()) or name != name.lstrip():
        return None
    if any(char in value for char in "\r\n\0"):
        return None
    return name.strip(), value.strip()


def did_you_mean(key: str, known: Collection[str]) -> str:
    """`` (did you mean "x"?)`` for a near miss of a known key, else ``""``."""
    lowered = {name.lower(): name for name in known}
    if key.lower() in lowered:
        return f' (did you mean "{lowered[key.lower()]}"?)'
    close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.7)
    return f' (did you mean "{lowered[close[0]]}"?)' if close else ""


class Reader:
    """Typed access to the parsed tree; records problems instead of raising."""

    def __init__(self, environ: Mapping[str, str] | None, problems: Problems) -> None:
        self.environ = environ
        """None: no macro expansion (values from the tailnet policy, not from a config file)."""
        self.problems = problems

    def warn(self, message: str) -> None:
        self.problems.warnings.append(message)

    def note(self, message: str) -> None:
        self.problems.notes.append(message)

    def mismatch(self, path: str, expected: str, value: object) -> None:
        self.warn(f"{path}: expected {expected}, got {type_name(value)}; ignored")

    def expand(self, text: str) -> str:
        return text if self.environ is None else expand_macros(text, self.environ)

    def expand_tree(self, value: Any) -> Any:
        """A copy of a parsed subtree with every string's macros expanded."""
        if isinstance(value, str):
            return self.expand(value)
        if isinstance(value, dict):
            return {key: self.expand_tree(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.expand_tree(item) for item in value]
        return value

    def obj(self, value: object, path: str, known: Collection[str] | None = None) -> dict[str, Any] | None:
        """``value`` as an object (None, with a warning unless it is null, when it is not one)."""
        if value is None:
            return None
        if not isinstance(value, dict):
            self.mismatch(path, "an object", value)
            return None
        if known is not None:
            self.check_keys(value, path, known)
        return value

    def check_keys(self, obj: Mapping[str, Any], path: str, known: Collection[str]) -> None:
        for key in obj:
            if key not in known:
                self.warn(f'unknown config key "{key_path(path, key)}"{did_you_mean(key, known)}')

    def array(self, obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
        value = obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.mismatch(key_path(path, key), "an array", value)
            return []
        return value

    def raw_string(self, obj: Mapping[str, Any], key: str, path: str) -> str | None:
        """The string as written (macros unexpanded), or None when absent or mistyped."""
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.mismatch(key_path(path, key), "a string", value)
            return None
        return value

    def string(self, obj: Mapping[str, Any], key: str, path: str, default: str = "") -> str:
        value = self.raw_string(obj, key, path)
        return default if value is None else self.expand(value)

    def choice(
        self, obj: Mapping[str, Any], key: str, path: str, choices: Collection[str], default: str, what: str
    ) -> str:
        """A string from ``choices``; otherwise a warning ``{what}: {value}`` and the default."""
        written = self.raw_string(obj, key, path)
        if written is None:
            return default
        value = self.expand(written)
        if value in choices:
            return value
        self.warn(f"{what}: {written}{did_you_mean(value, choices)}")
        return default

    def boolean(self, obj: Mapping[str, Any], key: str, path: str, default: bool = False) -> bool:
        value = obj.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.mismatch(key_path(path, key), "a boolean (true or false)", value)
            return default
        return value

    def integer(self, obj: Mapping[str, Any], key: str, path: str, default: int = 0) -> int:
        value = obj.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.mismatch(key_path(path, key), "an integer", value)
            return default
        return value

    def decimal(self, obj: Mapping[str, Any], key: str, path: str) -> Decimal | None:
        value = obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            self.mismatch(key_path(path, key), "a number", value)
            return None
        return Decimal(value)

    def strings(
        self, obj: Mapping[str, Any], key: str, path: str, *, lenient: bool = False
    ) -> tuple[str, ...]:
        """An array of strings (entries of another type are dropped with a warning).

        With ``lenient``, a single string is accepted as a one-element array.
        """
        value = obj.get(key)
        if lenient and isinstance(value, str):
            return (self.expand(value),)
        result = []
        for index, item in enumerate(self.array(obj, key, path)):
            if isinstance(item, str):
                result.append(self.expand(item))
            else:
                self.mismatch(f"{key_path(path, key)}[{index}]", "a string", item)
        return tuple(result)

    def headers(self, obj: Mapping[str, Any], path: str, prefix: str) -> tuple[tuple[str, str], ...]:
        """``add_headers``: ``"Header-Name: value"`` strings; bad entries are warned about, dropped."""
        result = []
        for index, item in enumerate(self.array(obj, "add_headers", path)):
            if not isinstance(item, str):
                self.mismatch(f"{key_path(path, 'add_headers')}[{index}]", "a string", item)
                continue
            parsed = parse_header_line(self.expand(item))
            if parsed is None:
                self.warn(f'{prefix}add_headers entry "{item}" must be in "Header-Name: value" format')
            else:
                result.append(parsed)
        return tuple(result)
