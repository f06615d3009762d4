"""What a request cost, in integer nanodollars, from the genai-prices data and nowhere else.

A provider's *cost basis* (Aperture's ``cost_basis``) says whose list prices apply. Each basis
maps to one genai-prices provider:

    anthropic → anthropic          openai → openai            google, vertex → google
    bedrock, bedrock-us, bedrock-eu, bedrock-ap → aws   (the model id's ``global.``/``us.``/``eu.``…
                                                         prefix selects the regional price)
    azure, azure-eu → azure        (Global deployment prices; genai-prices has no EU Data Zone
                                    prices, so ``azure-eu`` is priced as Global)
    openrouter → openrouter
    vercel → the model's creator   (genai-prices has no Vercel data; Vercel resells at list
                                    price, so ``anthropic/claude-sonnet-4.5`` is priced by anthropic)

Prices are resolved once per (basis, model, price context, day) and kept in bounded caches;
the arithmetic then follows genai-prices exactly (leaf decomposition of overlapping usage
units, tier cliffs on total input) in nanodollar Decimals, rounded half-even once.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from typing import Any, Generic, TypeVar
from urllib.parse import unquote

import genai_prices
from genai_prices import types as gp
from genai_prices.data_snapshot import DataSnapshot, find_provider_by_id, get_snapshot
from genai_prices.data_units import unit_data
from genai_prices.units import UnitRegistry

from tailgate.config.model import NANODOLLARS_PER_DOLLAR, Config, Provider
from tailgate.usage import Usage

BASIS_PROVIDERS: Mapping[str, str] = {
    "anthropic": "anthropic",
    "openai": "openai",
    "google": "google",
    "vertex": "google",
    "bedrock": "aws",
    "bedrock-us": "aws",
    "bedrock-eu": "aws",
    "bedrock-ap": "aws",
    "azure": "azure",
    "azure-eu": "azure",
    "openrouter": "openrouter",
}
"""Cost basis → genai-prices provider id. ``vercel`` is absent: it is priced by the model's creator."""

INFERRED_BASES: tuple[tuple[str, str], ...] = (
    ("anthropic_messages", "anthropic"),
    ("gemini_generate_content", "google"),
    ("google_generate_content", "vertex"),
    ("google_raw_predict", "vertex"),
    ("openai_responses", "openai"),
    ("openai_chat", "openai"),
)
"""Compatibility flag → cost basis, most specific first (``openai_chat`` is on by default)."""

DEFAULT_MAX_OUTPUT_TOKENS = 4096
"""Output tokens reserved by :meth:`PriceBook.estimate` when the request sets no limit."""

_CACHE_SIZE = 1024
_NANO = Decimal(NANODOLLARS_PER_DOLLAR)


@dataclass(frozen=True, slots=True)
class Cost:
    nanodollars: int | None
    """``None`` when unpriced (no cost basis, or a model the price data does not know)."""
    cost_basis: str | None
    priced_as: str | None
    """The genai-prices model id the price came from (after ``model_cost_map``)."""
    price_version: str


def go_path_match(pattern: str, name: str) -> bool:
    """Go's ``path.Match``: ``*`` never crosses ``/``, ``?`` is one character, ``[...]`` a class.

    A malformed pattern matches nothing (Go returns ``ErrBadPattern``).
    """
    compiled = _compile_glob(pattern)
    return compiled is not None and compiled.fullmatch(name) is not None


@functools.lru_cache(maxsize=256)
def _compile_glob(pattern: str) -> re.Pattern[str] | None:
    out: list[str] = []
    i, size = 0, len(pattern)
    while i < size:
        char = pattern[i]
        i += 1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\":
            if i >= size:
                return None
            out.append(re.escape(pattern[i]))
            i += 1
        elif char == "[":
            cls, i = _glob_class(pattern, i)
            if cls is None:
                return None
            out.append(cls)
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def _glob_class(pattern: str, i: int) -> tuple[str | None, int]:
    size = len(pattern)
    negated = i < size and pattern[i] == "^"
    i += negated
    ranges: list[str] = []
    while True:
        if i >= size:
            return None, i
        if pattern[i] == "]" and ranges:
            return ("[^" if negated else "[") + "".join(ranges) + "]", i + 1
        low, i = _glob_class_char(pattern, i)
        if low is None:
            return None, i
        if i < size and pattern[i] == "-":
            high, i = _glob_class_char(pattern, i + 1)
            if high is None or high < low:
                return None, i
            ranges.append(re.escape(low) + "-" + re.escape(high))
        else:
            ranges.append(re.escape(low))


def _glob_class_char(pattern: str, i: int) -> tuple[str | None, int]:
    if i >= len(pattern) or pattern[i] in "-]":
        return None, i
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            return None, i
    return pattern[i], i + 1


K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """A bounded mapping that forgets the least recently used entry.

    Thread-safe: estimates are made on the quota thread while costs are computed on the
    recorder's thread.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            if len(self._items) > self._size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class _Model:
    provider: gp.Provider
    info: gp.ModelInfo
    by_time_of_day: bool
    """Some price depends on the time of day, so a resolved price lasts a minute, not a day."""


@dataclass(frozen=True, slots=True)
class _Unit:
    usage_key: str
    base: Decimal
    """Nanodollars per counted unit below the first tier."""
    tiers: tuple[tuple[int, Decimal], ...]
    """(start, nanodollars per unit), highest start first; applies when total input > start."""
    descendants: tuple[int, ...]
    """Indices of earlier units that are parts of this one (their leaves are subtracted)."""


@dataclass(frozen=True, slots=True)
class _Plan:
    model_id: str
    units: tuple[_Unit, ...]
    source: gp.ModelPrice

    def nanodollars(self, counts: Mapping[str, int]) -> Decimal:
        total_input = counts.get("input_tokens", 0)
        leaves: list[int] = []
        total = Decimal(0)
        for unit in self.units:
            leaf = counts.get(unit.usage_key, 0)
            if leaf > 0 and unit.descendants:
                leaf -= sum(leaves[i] for i in unit.descendants)
            if leaf <= 0:
                # Nothing counted, or inconsistent upstream numbers (parts larger than the
                # whole): price the whole only.
                leaves.append(0)
                continue
            leaves.append(leaf)
            rate = unit.base
            for start, tier_rate in unit.tiers:
                if total_input > start:
                    rate = tier_rate
                    break
            total += rate * leaf
        return total


_MISSING = object()
_REGISTRY = UnitRegistry(unit_data)


class PriceBook:
    """Cost of requests under one configuration: its cost bases and ``model_cost_map`` entries."""

    def __init__(self, config: Config, *, snapshot: DataSnapshot | None = None) -> None:
        self._config = config
        self._snapshot = snapshot or get_snapshot()
        self._models: _Lru[tuple[str, str], Any] = _Lru(_CACHE_SIZE)
        self._plans: _Lru[tuple[int, tuple[tuple[str, str], ...], date | datetime], _Plan] = _Lru(_CACHE_SIZE)
        version = f"genai-prices=={genai_prices.__version__}"
        if self._snapshot.from_auto_update:
            version += "+update:" + self._snapshot.timestamp.isoformat(timespec="seconds")
        self.price_version = version
        """The price data the costs were computed from, so they can be recomputed later."""

    def basis_for(self, provider: Provider) -> str | None:
        """``provider.cost_basis``; else inferred from its compatibility flags when allowed."""
        if provider.cost_basis:
            return provider.cost_basis
        if not self._config.auto_cost_basis:
            return None
        for flag, basis in INFERRED_BASES:
            if provider.compatibility.enabled(flag):
                return basis
        return None

    def cost(self, provider: Provider, model: str, usage: Usage, *, at: datetime | None = None) -> Cost:
        """The cost of ``usage`` on ``provider``, pricing the requested model, else the answered one.

        ``at`` is when the request was made (default now): prices change over time.
        """
        basis = self.basis_for(provider)
        if basis is None:
            return Cost(None, None, None, self.price_version)
        context = _price_context(usage)
        for candidate in _candidates(model, usage.response_model):
            found = self._plan(provider, basis, candidate, context, at)
            if found is not None:
                plan, adjustment = found
                exact = plan.nanodollars(_counts(usage)) * adjustment
                nano = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
                return Cost(nano, basis, plan.model_id, self.price_version)
        return Cost(None, basis, None, self.price_version)

    def estimate(
        self, provider: Provider, model: str, *, input_bytes: int, max_output_tokens: int | None
    ) -> int:
        """Nanodollars to reserve before forwarding a request; 0 when the model is unpriced.

        Input is taken as ``ceil(input_bytes / 3)`` tokens (no tokenizer yields fewer than one
        token per three bytes of JSON for real prompts), output as ``max_output_tokens`` or
        :data:`DEFAULT_MAX_OUTPUT_TOKENS`, both at the standard (uncached) rates including any
        long-context tier the estimate reaches; rounded up.
        """
        basis = self.basis_for(provider)
        if basis is None:
            return 0
        found = self._plan(provider, basis, model, (), None)
        if found is None:
            return 0
        plan, adjustment = found
        output = DEFAULT_MAX_OUTPUT_TOKENS if max_output_tokens is None else max(max_output_tokens, 0)
        counts = {"input_tokens": -(-max(input_bytes, 0) // 3), "output_tokens": output, "requests": 1}
        exact = plan.nanodollars(counts) * adjustment
        return int(exact.quantize(Decimal(1), rounding=ROUND_CEILING))

    def unit_prices(self, provider: Provider, model: str) -> dict[str, str | None] | None:
        """Standard-tier dollars per million tokens for the Models page; ``None`` when unpriced.

        Keys: ``cost_basis``, ``priced_as``, ``input``, ``output``, ``cache_read``,
        ``cache_write``, ``cache_write_1h`` (base tier; ``None`` where the model has no such price).
        """
        basis = self.basis_for(provider)
        if basis is None:
            return None
        found = self._plan(provider, basis, model, (), None)
        if found is None:
            return None
        plan, adjustment = found
        prices: dict[str, str | None] = {"cost_basis": basis, "priced_as": plan.model_id}
        for name, key in (
            ("input", "input_mtok"),
            ("output", "output_mtok"),
            ("cache_read", "cache_read_mtok"),
            ("cache_write", "cache_write_mtok"),
            ("cache_write_1h", "cache_write_1h_mtok"),
        ):
            value = getattr(plan.source, key, None)
            if isinstance(value, gp.TieredPrices):
                value = value.base
            prices[name] = str((value * adjustment).normalize()) if isinstance(value, Decimal) else None
        return prices

    def _plan(
        self,
        provider: Provider,
        basis: str,
        model: str,
        context: tuple[tuple[str, str], ...],
        at: datetime | None,
    ) -> tuple[_Plan, Decimal] | None:
        priced_as, adjustment = model, Decimal(1)
        for entry in provider.model_cost_map:
            if go_path_match(entry.match, model):
                priced_as, adjustment = entry.as_model, entry.adjustment
                break
        found = self._model(basis, priced_as)
        if found is None:
            return None
        if at is None:
            when = datetime.now(UTC)
        else:
            when = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        day: date | datetime = when.replace(second=0, microsecond=0) if found.by_time_of_day else when.date()
        key = (id(found.info), context, day)
        plan = self._plans.get(key)
        if plan is None:
            plan = _compile(found, context, when)
            self._plans.put(key, plan)
        return plan, adjustment

    def _model(self, basis: str, model: str) -> _Model | None:
        key = (basis, model)
        found = self._models.get(key)
        if found is None:
            found = self._lookup(basis, model) or _MISSING
            self._models.put(key, found)
        return found if isinstance(found, _Model) else None

    def _lookup(self, basis: str, model: str) -> _Model | None:
        providers = self._snapshot.providers
        if basis == "vercel":
            creator, slash, model = model.partition("/")
            provider_id = creator if slash else None
        else:
            provider_id = BASIS_PROVIDERS.get(basis)
        if not provider_id or not model:
            return None
        provider = find_provider_by_id(providers, provider_id)
        if provider is None:
            return None
        if provider.id == "google":
            model = model.rpartition("models/")[2]
        elif provider.id == "aws":
            model = unquote(model).rpartition("/")[2]
        info = provider.find_model(model, all_providers=providers)
        if info is None:
            return None
        return _Model(provider, info, _by_time_of_day(info))


def _candidates(requested: str, answered: str | None) -> tuple[str, ...]:
    if answered and answered != requested:
        return (requested, answered)
    return (requested,)


def _price_context(usage: Usage) -> tuple[tuple[str, str], ...]:
    context: list[tuple[str, str]] = []
    if usage.service_tier == "batch":
        context.append(("processing", "batch"))
    elif usage.service_tier:
        context.append(("service_tier", usage.service_tier))
    if usage.speed:
        context.append(("speed", usage.speed))
    return tuple(context)


def _counts(usage: Usage) -> dict[str, int]:
    """The usage in genai-prices' unit names."""
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cache_write_5m_tokens": usage.cache_write_5m_tokens,
        "cache_write_1h_tokens": usage.cache_write_1h_tokens,
        "output_reasoning_tokens": usage.reasoning_tokens,
        "web_searches": usage.web_search_requests,
        "input_audio_tokens": usage.input_audio_tokens,
        "input_image_tokens": usage.input_image_tokens,
        "cache_audio_read_tokens": usage.cache_audio_read_tokens,
        "cache_image_read_tokens": usage.cache_image_read_tokens,
        "output_audio_tokens": usage.output_audio_tokens,
        "output_image_tokens": usage.output_image_tokens,
        "requests": 1,
    }


def genai_usage(usage: Usage) -> gp.Usage:
    """The same usage as a genai-prices ``Usage`` (for cross-checks and direct ``calc_price``)."""
    values = {key: value for key, value in _counts(usage).items() if value and key != "requests"}
    return gp.Usage(**values)


def _by_time_of_day(info: gp.ModelInfo) -> bool:
    constraints: list[object] = []
    if isinstance(info.prices, list):
        constraints.extend(conditional.constraint for conditional in info.prices)
    constraints.extend(variant.constraint for variant in info.price_variants or ())
    return any(isinstance(constraint, gp.TimeOfDateConstraint) for constraint in constraints)


def _compile(found: _Model, context: tuple[tuple[str, str], ...], when: datetime) -> _Plan:
    # genai-prices ignores price variants for a model borrowed from a fallback provider.
    own = any(found.info is model for model in found.provider.models)
    source = found.info.get_prices(when, dict(context) if context and own else None)
    units = []
    for key, value in source.__dict__.items():
        if key.startswith("_") or value is None:
            continue
        try:
            units.append((_REGISTRY.unit_for_price_key(key), value))
        except KeyError:
            continue  # a price genai-prices itself cannot apply (it warns and skips it)
    # Most specific first, as genai-prices decomposes overlapping units into leaves.
    units.sort(key=lambda pair: (-len(pair[0].dimensions), pair[0].usage_key))
    compiled: list[_Unit] = []
    for position, (unit, price) in enumerate(units):
        scale = _NANO / unit.per
        descendants = tuple(
            earlier
            for earlier in range(position)
            if unit.dimensions.items() <= units[earlier][0].dimensions.items()
        )
        if isinstance(price, gp.TieredPrices):
            tiers = tuple((tier.start, tier.price * scale) for tier in sorted(price.tiers, key=_tier_start))
            compiled.append(_Unit(unit.usage_key, price.base * scale, tiers[::-1], descendants))
        else:
            compiled.append(_Unit(unit.usage_key, price * scale, (), descendants))
    return _Plan(found.info.id, tuple(compiled), source)


def _tier_start(tier: gp.Tier) -> int:
    return tier.start
