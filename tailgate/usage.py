"""Token usage, normalised across dialects.

One convention for every provider (the one genai-prices uses): ``input_tokens`` is the *total*
input including cache reads and writes, ``output_tokens`` the total output including reasoning;
the cache and reasoning fields are parts of those totals, never added on top.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def uncached_input_tokens(self) -> int:
        return max(self.input_tokens - self.cache_read_tokens - self.cache_write_tokens, 0)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens
