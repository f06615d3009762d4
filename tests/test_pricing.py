from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal

import genai_prices
import pytest

from tailgate.config.model import Compatibility, Config, CostMapEntry, Provider
from tailgate.pricing import DEFAULT_MAX_OUTPUT_TOKENS, PriceBook, go_path_match
from tailgate.usage import Usage
from tests.golden_corpus import CASES, GoldenCase

AT = datetime(2026, 11, 20, 12, tzinfo=UTC)
GENAI_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "google": "google"}


def provider(basis: str | None = None, *, flags: dict[str, bool] | None = None, **kwargs: object) -> Provider:
    compatibility = Compatibility(**(flags or {}))
    return Provider(id="p", models=(), cost_basis=basis, compatibility=compatibility, **kwargs)  # type: ignore[arg-type]


BOOK = PriceBook(Config())


def direct_nanodollars(
    usage: Usage, model: str, provider_id: str, *, at: datetime = AT, **context: str
) -> int:
    """``genai_prices.calc_price`` on the usage, converted independently of tailgate.pricing."""
    values = {
        "input_tokens": usage.input_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cache_write_5m_tokens": usage.cache_write_5m_tokens,
        "cache_write_1h_tokens": usage.cache_write_1h_tokens,
        "output_tokens": usage.output_tokens,
        "output_reasoning_tokens": usage.reasoning_tokens,
        "web_searches": usage.web_search_requests,
        "input_audio_tokens": usage.input_audio_tokens,
    }
    price = genai_prices.calc_price(
        genai_prices.Usage(**{k: v for k, v in values.items() if v}),
        model,
        provider_id=provider_id,
        genai_request_timestamp=at,
        price_context=context or None,
    )
    return int((price.total_price * 10**9).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


# The golden corpus -----------------------------------------------------------------------------

PRICED = [case for case in CASES if case.usage is not None]


@pytest.mark.parametrize("case", PRICED, ids=lambda case: case.name)
def test_corpus_cost(case: GoldenCase) -> None:
    usage, _ = case.extract()
    assert usage is not None
    cost = BOOK.cost(provider(case.cost_basis), case.model, usage, at=case.priced_at)
    assert cost.nanodollars == case.nanodollars
    assert cost.cost_basis == case.cost_basis
    assert (cost.priced_as is None) is (case.nanodollars is None)


@pytest.mark.parametrize("case", PRICED, ids=lambda case: case.name)
def test_corpus_expected_cost_is_genai_prices(case: GoldenCase) -> None:
    """The stored expectation is what genai-prices itself says, or its model lookup fails."""
    assert case.usage is not None
    provider_id = GENAI_PROVIDER[case.cost_basis]
    if case.nanodollars is None:
        with pytest.raises(LookupError):
            genai_prices.calc_price(genai_prices.Usage(input_tokens=1), case.model, provider_id=provider_id)
        return
    expected = direct_nanodollars(
        case.usage, case.model, provider_id, at=case.priced_at, **case.price_context
    )
    assert expected == case.nanodollars


# Cost basis ------------------------------------------------------------------------------------


def test_explicit_basis_wins() -> None:
    assert BOOK.basis_for(provider("bedrock-eu", flags={"anthropic_messages": True})) == "bedrock-eu"


@pytest.mark.parametrize(
    ("flags", "basis"),
    [
        ({}, "openai"),
        ({"openai_chat": False, "anthropic_messages": True}, "anthropic"),
        ({"openai_chat": True, "openai_responses": True}, "openai"),
        ({"openai_chat": False, "gemini_generate_content": True}, "google"),
        ({"openai_chat": True, "google_generate_content": True}, "vertex"),
        ({"openai_chat": False, "google_raw_predict": True}, "vertex"),
        ({"openai_chat": False, "bedrock_converse": True, "bedrock_model_invoke": True}, None),
    ],
)
def test_basis_inferred_from_compatibility(flags: dict[str, bool], basis: str | None) -> None:
    assert BOOK.basis_for(provider(flags=flags)) == basis


def test_no_inference_when_auto_cost_basis_is_off() -> None:
    book = PriceBook(Config(auto_cost_basis=False))
    assert book.basis_for(provider(flags={"anthropic_messages": True})) is None
    assert book.basis_for(provider("anthropic")) == "anthropic"
    cost = book.cost(provider(flags={"anthropic_messages": True}), "claude-haiku-4-5", Usage(input_tokens=5))
    assert cost.nanodollars is None and cost.cost_basis is None


@pytest.mark.parametrize(
    ("basis", "model", "genai_provider", "genai_model"),
    [
        ("anthropic", "claude-haiku-4-5", "anthropic", "claude-haiku-4-5"),
        ("openai", "gpt-5-mini", "openai", "gpt-5-mini"),
        ("google", "models/gemini-2.5-flash", "google", "gemini-2.5-flash"),
        ("vertex", "gemini-2.5-pro", "google", "gemini-2.5-pro"),
        ("vertex", "claude-sonnet-4-5@20250929", "google", "claude-sonnet-4-5@20250929"),
        (
            "bedrock",
            "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "aws",
            "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        (
            "bedrock-us",
            "us.anthropic.claude-haiku-4-5-20251001-v1%3A0",
            "aws",
            "us.anthropic.claude-haiku-4-5-20251001-v1:0",
        ),
        (
            "bedrock-eu",
            "eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "aws",
            "eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        (
            "bedrock-ap",
            "arn:aws:bedrock:ap-northeast-1:123456789012:inference-profile/apac.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "aws",
            "apac.anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        ("azure", "gpt-4o", "azure", "gpt-4o"),
        ("azure-eu", "gpt-5-mini", "azure", "gpt-5-mini"),
        ("openrouter", "anthropic/claude-sonnet-4.5", "openrouter", "anthropic/claude-sonnet-4.5"),
        ("vercel", "anthropic/claude-sonnet-4.5", "anthropic", "claude-sonnet-4.5"),
        ("vercel", "openai/gpt-5", "openai", "gpt-5"),
    ],
)
def test_every_basis_prices_through_genai_prices(
    basis: str, model: str, genai_provider: str, genai_model: str
) -> None:
    usage = Usage(input_tokens=120_000, cache_read_tokens=20_000, output_tokens=3_000)
    cost = BOOK.cost(provider(basis), model, usage, at=AT)
    assert cost.nanodollars == direct_nanodollars(usage, genai_model, genai_provider)
    assert cost.nanodollars > 0
    assert cost.cost_basis == basis


def test_regional_bedrock_prices_differ_from_global() -> None:
    usage = Usage(input_tokens=1_000_000)
    regional = BOOK.cost(provider("bedrock-eu"), "eu.anthropic.claude-sonnet-4-5-20250929-v1:0", usage, at=AT)
    global_ = BOOK.cost(provider("bedrock"), "global.anthropic.claude-sonnet-4-5-20250929-v1:0", usage, at=AT)
    assert (regional.nanodollars, global_.nanodollars) == (3_300_000_000, 3_000_000_000)


def test_unknown_model_or_basis_is_unpriced_not_free() -> None:
    usage = Usage(input_tokens=10, output_tokens=10)
    for basis, model in [
        ("openai", "my-local-llama"),
        ("nonsense", "gpt-5"),
        ("vercel", "gpt-5"),
        ("openai", ""),
    ]:
        cost = BOOK.cost(provider(basis), model, usage)
        assert cost.nanodollars is None and cost.priced_as is None
    assert BOOK.cost(provider(flags={"openai_chat": False}), "gpt-5", usage).nanodollars is None
    assert BOOK.estimate(provider("openai"), "my-local-llama", input_bytes=300, max_output_tokens=10) == 0
    assert BOOK.unit_prices(provider("openai"), "my-local-llama") is None
    assert BOOK.unit_prices(provider(flags={"openai_chat": False}), "gpt-5") is None


def test_zero_usage_of_a_known_model_costs_zero() -> None:
    cost = BOOK.cost(provider("openai"), "gpt-5", Usage())
    assert cost.nanodollars == 0 and cost.priced_as == "gpt-5"


def test_response_model_prices_an_unknown_alias() -> None:
    usage = Usage(input_tokens=1000, output_tokens=100, response_model="claude-haiku-4-5-20251001")
    cost = BOOK.cost(provider("anthropic"), "team-default-model", usage, at=AT)
    assert cost.priced_as == "claude-haiku-4-5"
    assert cost.nanodollars == direct_nanodollars(usage, "claude-haiku-4-5", "anthropic")


# model_cost_map --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("claude-opus-9-*", "claude-opus-9-20270101", True),
        ("claude-*-preview*", "claude-sonnet-9-preview-2", True),
        ("claude-*", "claude-x/y", False),
        ("*", "a/b", False),
        ("*/*", "a/b", True),
        ("gpt-?", "gpt-5", True),
        ("gpt-?", "gpt-55", False),
        ("gpt-?", "gpt-/", False),
        ("gpt-[45]", "gpt-4", True),
        ("gpt-[^45]", "gpt-4", False),
        ("gpt-[^45]", "gpt-6", True),
        ("gpt-[a-c]x", "gpt-bx", True),
        ("gpt-[a-c]x", "gpt-dx", False),
        ("a\\*b", "a*b", True),
        ("a\\*b", "axb", False),
        ("a.b", "axb", False),
        ("[", "[", False),
        ("[]a]", "]", False),
        ("[z-a]", "m", False),
        ("ab\\", "ab\\", False),
        ("", "", True),
    ],
)
def test_go_path_match(pattern: str, name: str, matches: bool) -> None:
    assert go_path_match(pattern, name) is matches


def test_cost_map_reprices_first_match_with_adjustment() -> None:
    mapped = provider(
        "anthropic",
        model_cost_map=(
            CostMapEntry("claude-*-preview*", "claude-sonnet-4-5", Decimal("1.1")),
            CostMapEntry("claude-*", "claude-opus-4-5"),
        ),
    )
    usage = Usage(input_tokens=1000, output_tokens=1000)
    preview = BOOK.cost(mapped, "claude-next-preview-1", usage, at=AT)
    sonnet = direct_nanodollars(usage, "claude-sonnet-4-5", "anthropic")
    assert preview.priced_as == "claude-sonnet-4-5"
    assert preview.nanodollars == int((Decimal(sonnet) * Decimal("1.1")).quantize(Decimal(1)))
    other = BOOK.cost(mapped, "claude-haiku-4-5", usage, at=AT)
    assert other.priced_as == "claude-opus-4-5"
    assert BOOK.unit_prices(mapped, "claude-next-preview-1") == {
        "cost_basis": "anthropic",
        "priced_as": "claude-sonnet-4-5",
        "input": "3.3",
        "output": "16.5",
        "cache_read": "0.33",
        "cache_write": "4.125",
        "cache_write_1h": "6.6",
    }
    unknown_target = provider("anthropic", model_cost_map=(CostMapEntry("x-*", "no-such-model"),))
    assert BOOK.cost(unknown_target, "x-1", usage).nanodollars is None


# Variants, tiers, rounding ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("basis", "model", "usage", "context"),
    [
        (
            "openai",
            "gpt-5",
            Usage(input_tokens=1000, output_tokens=100, service_tier="priority"),
            {"service_tier": "priority"},
        ),
        (
            "openai",
            "gpt-5",
            Usage(input_tokens=1000, output_tokens=100, service_tier="flex"),
            {"service_tier": "flex"},
        ),
        (
            "anthropic",
            "claude-haiku-4-5",
            Usage(input_tokens=1000, output_tokens=100, service_tier="batch"),
            {"processing": "batch"},
        ),
        (
            "anthropic",
            "claude-opus-4-8",
            Usage(input_tokens=1000, output_tokens=100, speed="fast"),
            {"speed": "fast"},
        ),
        (
            "google",
            "gemini-3.8-flash-tts",
            Usage(input_tokens=1000, output_tokens=100, service_tier="priority"),
            {"service_tier": "priority"},
        ),
    ],
)
def test_price_variants(basis: str, model: str, usage: Usage, context: dict[str, str]) -> None:
    standard = direct_nanodollars(usage, model, GENAI_PROVIDER[basis])
    variant = direct_nanodollars(usage, model, GENAI_PROVIDER[basis], **context)
    assert variant != standard
    assert BOOK.cost(provider(basis), model, usage, at=AT).nanodollars == variant


def test_prices_follow_the_request_date() -> None:
    usage = Usage(input_tokens=1000, output_tokens=100, service_tier="priority")
    before = datetime(2026, 9, 1, tzinfo=UTC)
    after = BOOK.cost(provider("openai"), "gpt-5", usage, at=AT).nanodollars
    assert BOOK.cost(provider("openai"), "gpt-5", usage, at=before).nanodollars == direct_nanodollars(
        usage, "gpt-5", "openai", at=before, service_tier="priority"
    )
    assert BOOK.cost(provider("openai"), "gpt-5", usage, at=before).nanodollars != after
    naive = BOOK.cost(provider("openai"), "gpt-5", usage, at=AT.replace(tzinfo=None))
    assert naive.nanodollars == after


def test_long_context_tier_reprices_every_token() -> None:
    below = Usage(input_tokens=200_000, output_tokens=1000)
    above = Usage(input_tokens=200_001, output_tokens=1000)
    sonnet = provider("anthropic")
    assert BOOK.cost(sonnet, "claude-sonnet-4-5", below, at=AT).nanodollars == 600_000_000 + 15_000_000
    assert BOOK.cost(sonnet, "claude-sonnet-4-5", above, at=AT).nanodollars == 1_200_006_000 + 22_500_000


def test_nanodollars_round_half_even_once() -> None:
    google = provider("google")
    # gemini-flash-1.5-8b input: $0.0375 per million tokens = 37.5 nanodollars per token.
    assert BOOK.cost(google, "gemini-flash-1.5-8b", Usage(input_tokens=1), at=AT).nanodollars == 38
    assert BOOK.cost(google, "gemini-flash-1.5-8b", Usage(input_tokens=3), at=AT).nanodollars == 112
    assert BOOK.cost(google, "gemini-flash-1.5-8b", Usage(input_tokens=2), at=AT).nanodollars == 75


def test_inconsistent_usage_still_prices_the_whole() -> None:
    usage = Usage(input_tokens=10, cache_read_tokens=50, output_tokens=0)
    assert BOOK.cost(provider("openai"), "gpt-5", usage, at=AT).nanodollars == 50 * 125


# Estimate, unit prices, version ----------------------------------------------------------------


def test_estimate_reserves_input_bytes_and_max_output() -> None:
    sonnet = provider("anthropic")
    # ceil(3001 / 3) = 1001 input tokens at $3/M, 500 output tokens at $15/M.
    assert (
        BOOK.estimate(sonnet, "claude-sonnet-4-5", input_bytes=3001, max_output_tokens=500)
        == 3_003_000 + 7_500_000
    )
    default = BOOK.estimate(sonnet, "claude-sonnet-4-5", input_bytes=0, max_output_tokens=None)
    assert default == DEFAULT_MAX_OUTPUT_TOKENS * 15_000
    huge = BOOK.estimate(sonnet, "claude-sonnet-4-5", input_bytes=3 * 300_000, max_output_tokens=0)
    assert huge == 300_000 * 6_000
    assert (
        BOOK.estimate(provider(flags={"openai_chat": False}), "gpt-5", input_bytes=9, max_output_tokens=9)
        == 0
    )


def test_unit_prices_for_the_models_page() -> None:
    assert BOOK.unit_prices(provider("openai"), "gpt-5-mini") == {
        "cost_basis": "openai",
        "priced_as": "gpt-5-mini",
        "input": "0.25",
        "output": "2",
        "cache_read": "0.025",
        "cache_write": None,
        "cache_write_1h": None,
    }


def test_price_version_names_the_data() -> None:
    assert BOOK.price_version == f"genai-prices=={genai_prices.__version__}"
    assert BOOK.cost(provider("openai"), "gpt-5", Usage()).price_version == BOOK.price_version


def test_caches_are_bounded() -> None:
    book = PriceBook(Config())
    usage = Usage(input_tokens=1)
    for number in range(1500):
        book.cost(provider("openai"), f"unknown-model-{number}", usage)
    assert len(book._models) <= 1024


def test_cost_is_cheap_after_warm_up() -> None:
    usage = Usage(
        input_tokens=2090, cache_read_tokens=2048, output_tokens=187, response_model="claude-sonnet-4-5"
    )
    sonnet = provider("anthropic")
    BOOK.cost(sonnet, "claude-sonnet-4-5", usage)
    calls = 2000
    started = time.perf_counter()
    for _ in range(calls):
        BOOK.cost(sonnet, "claude-sonnet-4-5", usage)
    per_call_us = (time.perf_counter() - started) / calls * 1e6
    # Measured ≈7 µs here; the bound leaves room for slow CI machines, not for a lost cache.
    assert per_call_us < 60
