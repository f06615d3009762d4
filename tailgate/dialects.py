"""The client-facing API dialects and the operations each one offers.

A *dialect* is the API family a caller speaks (and the shape its errors must take). An
*operation* is one client-facing endpoint: it belongs to a dialect, is enabled on a provider
by one ``compatibility`` flag, and says where the model name lives.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Dialect(enum.StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"


class Operation(enum.StrEnum):
    CHAT_COMPLETIONS = "chat_completions"
    RESPONSES = "responses"
    MESSAGES = "messages"
    COUNT_TOKENS = "count_tokens"
    GENERATE_CONTENT = "generate_content"
    STREAM_GENERATE_CONTENT = "stream_generate_content"
    GEMINI_COUNT_TOKENS = "gemini_count_tokens"


@dataclass(frozen=True, slots=True)
class OperationInfo:
    operation: Operation
    dialect: Dialect
    compat_flag: str
    metered: bool
    """Whether the answer carries billable usage (count-tokens calls do not)."""


OPERATIONS: dict[Operation, OperationInfo] = {
    info.operation: info
    for info in (
        OperationInfo(Operation.CHAT_COMPLETIONS, Dialect.OPENAI, "openai_chat", True),
        OperationInfo(Operation.RESPONSES, Dialect.OPENAI, "openai_responses", True),
        OperationInfo(Operation.MESSAGES, Dialect.ANTHROPIC, "anthropic_messages", True),
        OperationInfo(Operation.COUNT_TOKENS, Dialect.ANTHROPIC, "anthropic_messages", False),
        OperationInfo(Operation.GENERATE_CONTENT, Dialect.GEMINI, "gemini_generate_content", True),
        OperationInfo(Operation.STREAM_GENERATE_CONTENT, Dialect.GEMINI, "gemini_generate_content", True),
        OperationInfo(Operation.GEMINI_COUNT_TOKENS, Dialect.GEMINI, "gemini_generate_content", False),
    )
}
