"""Pure parsers for the config's unit-bearing strings: dollars, refill rates, durations, sizes.

Every function raises :class:`ValueError` with a message fit to show the person who wrote the
value. Money comes out as integer nanodollars, durations as :class:`~decimal.Decimal` seconds;
no float is involved in either.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from tailgate.config.model import NANODOLLARS_PER_DOLLAR

RATE_PERIODS: dict[str, int] = {
    "min": 60,
    "hour": 3600,
    "day": 86_400,
    "week": 7 * 86_400,
    "month": 30 * 86_400,
}
"""Refill-rate units and their length in seconds (a month is 30 days)."""

_DOLLARS = re.compile(r"\$(\d+(?:\.\d+)?)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_DURATION_UNITS: dict[str, Decimal] = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "μs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86_400),
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_dollars(text: str) -> int:
    """``"$10.00"`` → 10_000_000_000 nanodollars. Exact; more than 9 decimals is refused."""
    match = _DOLLARS.fullmatch(text.strip())
    if match is None:
        raise ValueError(f'amount "{text}" must look like "$10.00"')
    nanodollars = Decimal(match.group(1)) * NANODOLLARS_PER_DOLLAR
    if nanodollars != nanodollars.to_integral_value():
        raise ValueError(f'amount "{text}" is finer than a nanodollar ($0.000000001)')
    return int(nanodollars)


def parse_rate(text: str) -> tuple[int, int]:
    """``"$5.00/day"`` → (nanodollars, period in seconds)."""
    amount, slash, unit = text.strip().partition("/")
    if not slash:
        raise ValueError(f'rate "{text}" must look like "$5.00/day"')
    period = RATE_PERIODS.get(unit.strip())
    if period is None:
        units = ", ".join(RATE_PERIODS)
        raise ValueError(f'rate "{text}" has unknown unit "{unit.strip()}" (use one of: {units})')
    try:
        return parse_dollars(amount), period
    except ValueError:
        raise ValueError(f'rate "{text}" must look like "$5.00/day"') from None


def format_dollars(nanodollars: int) -> str:
    """10_000_000_000 → ``"$10.00"``; keeps every significant decimal beyond the cents."""
    sign = "-" if nanodollars < 0 else ""
    dollars, fraction = divmod(abs(nanodollars), NANODOLLARS_PER_DOLLAR)
    decimals = f"{fraction:09d}".rstrip("0").ljust(2, "0")
    return f"{sign}${dollars}.{decimals}"


def parse_duration(text: str, *, allow_days: bool = False) -> Decimal:
    """A Go duration (``"5s"``, ``"1h30m"``, ``"500ms"``, ``"0"``) → seconds; ``d`` if allowed."""
    compact = text.strip()
    if compact == "0":
        return Decimal(0)
    total, pos = Decimal(0), 0
    while pos < len(compact):
        match = _DURATION_PART.match(compact, pos)
        if match is None or (match.group(2) == "d" and not allow_days):
            break
        total += Decimal(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(compact):
        example = '"30d", "720h" or "0"' if allow_days else '"30s", "1m30s", "500ms" or "0"'
        raise ValueError(f'duration "{text}" must look like {example}')
    return total


def parse_seconds(value: object) -> Decimal:
    """A number of seconds, or a duration string (``"30s"``) → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration, got a boolean")
    if isinstance(value, int | Decimal | float):
        return Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return parse_duration(value)
    raise ValueError(f"expected seconds or a duration, got {type_name(value)}")


def parse_byte_size(value: object) -> int:
    """An integer, or ``"32MiB"`` / ``"10 MB"`` / ``"512k"`` → bytes (KB = 1000, KiB = 1024)."""
    if isinstance(value, bool):
        raise ValueError("expected a byte count, got a boolean")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a byte count, got {type_name(value)}")
    match = _SIZE.fullmatch(value.strip())
    factor = _SIZE_UNITS.get(match.group(2).lower()) if match else None
    if match is None or factor is None:
        raise ValueError(f'size "{value}" must be a number of bytes or look like "32MiB"')
    return int(Decimal(match.group(1)) * factor)


def type_name(value: object) -> str:
    """The JSON name of a parsed value's type, with its article: ``a string``, ``an array``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
