"""How the dashboard writes numbers, money and times for people (pure functions).

Money arrives as integer nanodollars and is formatted with :class:`~decimal.Decimal`, never
float. ``None`` money is *unpriced* — unknown, not zero — and says so. Times are UTC.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from tailgate.config.model import NANODOLLARS_PER_DOLLAR
from tailgate.config.units import format_dollars

UNPRICED = "unpriced"
_NANO = Decimal(NANODOLLARS_PER_DOLLAR)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def dollars(nanodollars: int | None) -> str:
    """Dollars for reading: cents from $1 up, three significant digits below; ``unpriced`` for None."""
    if nanodollars is None:
        return UNPRICED
    if nanodollars == 0:
        return "$0.00"
    sign = "-" if nanodollars < 0 else ""
    amount = Decimal(abs(nanodollars)) / _NANO
    if amount >= 1:
        return f"{sign}${amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_EVEN):,}"
    # Three significant digits, at least two decimals and never finer than a nanodollar.
    exponent = min(amount.adjusted() - 2, -2)
    rounded = amount.quantize(Decimal(1).scaleb(max(exponent, -9)), rounding=ROUND_HALF_EVEN)
    text = f"{rounded:f}"
    whole, _, decimals = text.partition(".")
    decimals = decimals.rstrip("0").ljust(2, "0")
    return f"{sign}${whole}.{decimals}"


def exact_dollars(nanodollars: int | None) -> str:
    """Every significant digit: ``$0.000123456``; ``unpriced`` for None (for titles and tooltips)."""
    return UNPRICED if nanodollars is None else format_dollars(nanodollars)


def plain_dollars(nanodollars: int) -> str:
    """Nanodollars as a plain decimal number of dollars with all nine decimals (for CSV)."""
    sign = "-" if nanodollars < 0 else ""
    whole, fraction = divmod(abs(nanodollars), NANODOLLARS_PER_DOLLAR)
    return f"{sign}{whole}.{fraction:09d}"


def per_million(price: str | None) -> str:
    """A genai-prices ``$/Mtok`` decimal string → ``$3.00`` or ``$0.075``; ``—`` when absent."""
    if price is None:
        return "—"
    value = Decimal(price)
    text = f"{value.normalize():f}"
    whole, _, decimals = text.partition(".")
    return f"${int(whole):,}.{decimals.ljust(2, '0')}"


def integer(n: int) -> str:
    """``1234567`` → ``1,234,567``."""
    return f"{n:,}"


def compact(n: int | float) -> str:
    """A short count: ``999``, ``1.2k``, ``12k``, ``3.4M``, ``1.2B``."""
    value = float(n)
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size * 0.9995:  # what would round to 1000k is 1M
            return _short(value / size) + suffix
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def _short(scaled: float) -> str:
    return f"{scaled:.0f}" if abs(scaled) >= 9.95 else f"{scaled:.1f}".removesuffix(".0")


def utc_datetime(ts_ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ts_ms)


def utc_text(ts_ms: int) -> str:
    """``2026-01-02 03:04:05 UTC``."""
    return utc_datetime(ts_ms).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(ts_ms: int) -> str:
    """``2026-01-02T03:04:05.678Z`` (for ``<time datetime>``)."""
    return utc_datetime(ts_ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def relative(ts_ms: int, now_ms: int) -> str:
    """``just now``, ``5 min ago``, ``3 h ago``, ``2 days ago``, ``in 4 min``; a date past 60 days."""
    delta = (now_ms - ts_ms) // 1000
    future = delta < 0
    seconds = abs(delta)
    if seconds < 45:
        return "just now"
    if seconds < 3600:
        text = f"{max(1, round(seconds / 60))} min"
    elif seconds < 86_400:
        text = f"{round(seconds / 3600)} h"
    elif seconds < 60 * 86_400:
        days = round(seconds / 86_400)
        text = f"{days} day" + ("s" if days != 1 else "")
    else:
        return utc_datetime(ts_ms).strftime("%Y-%m-%d")
    return f"in {text}" if future else f"{text} ago"


def duration_us(us: int | None) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 5 s``, ``2 h 3 min``; ``—`` for None."""
    if us is None:
        return "—"
    if us < 1000:
        return f"{us} µs"
    if us < 1_000_000:
        return f"{us // 1000} ms"
    return duration_ms(us // 1000)


def duration_ms(ms: int) -> str:
    """A span of milliseconds, as :func:`duration_us` writes it."""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    seconds = ms // 1000
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    if seconds < 86_400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86_400} d {seconds % 86_400 // 3600} h"


def day_label(day: date) -> str:
    """``Jan 2``."""
    return f"{day:%b} {day.day}"


def pretty_body(data: bytes, limit: int) -> tuple[str, str]:
    """A captured body for reading, and what it is: ``json``, ``text``, ``binary`` or ``empty``.

    JSON is re-indented (key order kept); text over ``limit`` bytes is cut; binary is described.
    """
    if not data:
        return "", "empty"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"{len(data):,} bytes of binary data (not shown)", "binary"
    if len(data) <= limit:
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False), "json"
        except ValueError:
            pass
    if len(data) > limit:
        cut = data[:limit].decode("utf-8", errors="ignore")
        return f"{cut}\n… ({len(data) - limit:,} more bytes not shown)", "text"
    return text, "text"


def pretty_json(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
