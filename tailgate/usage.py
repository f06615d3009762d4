"""Token usage, normalised across dialects.

One convention for every provider (the one genai-prices uses): ``input_tokens`` is the *total*
input including cache reads and writes, ``output_tokens`` the total output including reasoning;
the cache and reasoning fields are parts of those totals, never added on top.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from tailgate.dialects import OPERATIONS, Operation
from tailgate.streams import Reassembled, count_tool_calls, reassemble


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    """All input tokens, cached or not (Anthropic's ``input_tokens`` plus both cache fields)."""
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    """All cache-write tokens; ``cache_write_5m_tokens + cache_write_1h_tokens`` when split."""
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    """All output tokens, reasoning included (Gemini thoughts added to candidates)."""
    reasoning_tokens: int = 0
    tool_calls: int = 0
    web_search_requests: int = 0
    partial: bool = False
    """The stream ended before its final usage arrived; these are the last totals seen."""
    service_tier: str | None = None
    response_model: str | None = None
    """The model id the upstream reported in its answer, when it reported one."""
    speed: str | None = None
    """Anthropic's ``usage.speed`` (``fast`` is priced higher on the models that offer it)."""
    input_audio_tokens: int = 0
    """Part of ``input_tokens`` that is audio (cached audio included)."""
    input_image_tokens: int = 0
    """Part of ``input_tokens`` that is images or documents (cached ones included)."""
    cache_audio_read_tokens: int = 0
    """Part of ``cache_read_tokens`` that is audio."""
    cache_image_read_tokens: int = 0
    """Part of ``cache_read_tokens`` that is images or documents."""
    output_audio_tokens: int = 0
    output_image_tokens: int = 0

    @property
    def uncached_input_tokens(self) -> int:
        return max(self.input_tokens - self.cache_read_tokens - self.cache_write_tokens, 0)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def usage_from_response(operation: Operation, response: Mapping[str, Any]) -> Usage | None:
    """The usage a final (or reassembled) answer reports; ``None`` when it reports none.

    Count-tokens operations are not metered and always give ``None``. Missing or null fields
    count as zero and malformed ones are ignored: this never raises on a mapping.
    """
    if not OPERATIONS[operation].metered or not _is_mapping(response):
        return None
    if operation is Operation.CHAT_COMPLETIONS:
        usage = _openai_usage(response, "prompt_tokens", "completion_tokens", "prompt_tokens_details")
    elif operation is Operation.RESPONSES:
        usage = _openai_usage(response, "input_tokens", "output_tokens", "input_tokens_details")
    elif operation is Operation.MESSAGES:
        usage = _anthropic_usage(response)
    else:
        usage = _gemini_usage(response)
    if usage is not None:
        usage.tool_calls = count_tool_calls(operation, response)
    return usage


def usage_from_stream(
    operation: Operation, raw: bytes, *, sse: bool = True
) -> tuple[Usage | None, Reassembled]:
    """Reassemble a streamed answer and read its usage; ``partial`` when the stream was cut.

    A cut stream keeps the last running totals it carried (Anthropic's ``message_start`` usage,
    Gemini's last ``usageMetadata``); OpenAI streams carry none before the end, so give ``None``.
    """
    reassembled = reassemble(operation, raw, sse=sse)
    if reassembled.response is None:
        return None, reassembled
    usage = usage_from_response(operation, reassembled.response)
    if usage is not None and not reassembled.complete:
        usage.partial = True
    return usage, reassembled


def _count(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and math.isfinite(value):
        return max(int(value), 0)
    return 0


def _counts(source: object, *keys: str) -> list[int]:
    """:func:`_count` of each key's value in ``source``; all zero when it is not a mapping."""
    if type(source) is not dict and (source is None or not isinstance(source, Mapping)):
        return [0] * len(keys)
    counts = []
    for key in keys:
        value = source.get(key)
        # A plain int or a missing value are the common cases, and need no call.
        if type(value) is int:
            counts.append(value if value > 0 else 0)
        else:
            counts.append(0 if value is None else _count(value))
    return counts


def _is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    # The ABC check is several times slower than the exact type check that answers for JSON.
    return type(value) is dict or (value is not None and isinstance(value, Mapping))


def _mapping(value: object) -> Mapping[str, Any]:
    return value if _is_mapping(value) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _openai_usage(
    response: Mapping[str, Any], input_key: str, output_key: str, input_details_key: str
) -> Usage | None:
    raw = response.get("usage")
    if not _is_mapping(raw):
        return None
    input_tokens, output_tokens = _counts(raw, input_key, output_key)
    cache_read, cache_write, input_audio, input_image = _counts(
        raw.get(input_details_key), "cached_tokens", "cache_write_tokens", "audio_tokens", "image_tokens"
    )
    reasoning, output_audio, output_image = _counts(
        raw.get(output_key + "_details"), "reasoning_tokens", "audio_tokens", "image_tokens"
    )
    return Usage(
        input_tokens=input_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=output_tokens,
        reasoning_tokens=reasoning,
        web_search_requests=_openai_web_searches(response),
        service_tier=_text(response.get("service_tier")),
        response_model=_text(response.get("model")),
        input_audio_tokens=input_audio,
        input_image_tokens=input_image,
        output_audio_tokens=output_audio,
        output_image_tokens=output_image,
    )


def _openai_web_searches(response: Mapping[str, Any]) -> int:
    tool_usage = response.get("tool_usage")
    if tool_usage is not None:
        reported = _mapping(_mapping(tool_usage).get("web_search"))
        if "num_requests" in reported:
            return _count(reported.get("num_requests"))
    output = response.get("output")
    if not isinstance(output, list):
        return 0
    return sum(1 for item in output if _is_mapping(item) and item.get("type") == "web_search_call")


def _anthropic_usage(response: Mapping[str, Any]) -> Usage | None:
    raw = response.get("usage")
    if not _is_mapping(raw):
        return None
    uncached, cache_read, cache_creation, output_tokens = _counts(
        raw, "input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens"
    )
    write_1h, write_5m_reported = _counts(
        raw.get("cache_creation"), "ephemeral_1h_input_tokens", "ephemeral_5m_input_tokens"
    )
    cache_write = max(cache_creation, write_5m_reported + write_1h)
    (reasoning,) = _counts(raw.get("output_tokens_details"), "thinking_tokens")
    (web_searches,) = _counts(raw.get("server_tool_use"), "web_search_requests")
    return Usage(
        input_tokens=uncached + cache_read + cache_write,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        # Creation the split does not account for was written with the default 5-minute TTL.
        cache_write_5m_tokens=cache_write - write_1h,
        cache_write_1h_tokens=write_1h,
        output_tokens=output_tokens,
        reasoning_tokens=reasoning,
        web_search_requests=web_searches,
        service_tier=_text(raw.get("service_tier")),
        speed=_text(raw.get("speed")),
        response_model=_text(response.get("model")),
    )


_GEMINI_TRAFFIC_TIERS = {"ON_DEMAND_PRIORITY": "priority", "ON_DEMAND_FLEX": "flex"}


def _gemini_usage(response: Mapping[str, Any]) -> Usage | None:
    raw = response.get("usageMetadata")
    if not _is_mapping(raw):
        return None
    prompt, tool_prompt, candidates, thoughts, cached = _counts(
        raw,
        "promptTokenCount",
        "toolUsePromptTokenCount",
        "candidatesTokenCount",
        "thoughtsTokenCount",
        "cachedContentTokenCount",
    )
    total = raw.get("totalTokenCount")
    # Older answers counted thoughts inside candidates; the total tells which convention is used.
    if isinstance(total, int) and thoughts and prompt + tool_prompt + candidates == total:
        output = candidates
    else:
        output = candidates + thoughts
    prompt_modes = _gemini_modalities(raw.get("promptTokensDetails"), raw.get("toolUsePromptTokensDetails"))
    cache_modes = _gemini_modalities(raw.get("cacheTokensDetails"))
    output_modes = _gemini_modalities(raw.get("candidatesTokensDetails"))
    tier = _text(raw.get("serviceTier")) or _text(raw.get("trafficType"))
    return Usage(
        input_tokens=prompt + tool_prompt,
        cache_read_tokens=cached,
        output_tokens=output,
        reasoning_tokens=thoughts,
        web_search_requests=_gemini_grounded(response),
        service_tier=_GEMINI_TRAFFIC_TIERS.get(tier, tier.lower()) if tier else None,
        response_model=_text(response.get("modelVersion")),
        input_audio_tokens=prompt_modes.get("AUDIO", 0),
        input_image_tokens=prompt_modes.get("IMAGE", 0) + prompt_modes.get("DOCUMENT", 0),
        cache_audio_read_tokens=cache_modes.get("AUDIO", 0),
        cache_image_read_tokens=cache_modes.get("IMAGE", 0) + cache_modes.get("DOCUMENT", 0),
        output_audio_tokens=output_modes.get("AUDIO", 0),
        output_image_tokens=output_modes.get("IMAGE", 0) + output_modes.get("DOCUMENT", 0),
    )


def _gemini_modalities(*lists: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for items in lists:
        if not isinstance(items, list):
            continue
        for item in items:
            if _is_mapping(item) and isinstance(modality := item.get("modality"), str):
                counts[modality] = counts.get(modality, 0) + _count(item.get("tokenCount"))
    return counts


def _gemini_grounded(response: Mapping[str, Any]) -> int:
    """1 when Google Search grounding ran (Gemini bills grounded prompts, not queries)."""
    candidates = response.get("candidates")
    if not isinstance(candidates, list):
        return 0
    for candidate in candidates:
        grounding = _mapping(_mapping(candidate).get("groundingMetadata"))
        if grounding.get("webSearchQueries"):
            return 1
    return 0
