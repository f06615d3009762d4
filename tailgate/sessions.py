"""Which session a request belongs to, from what each client sends (pure).

Claude Code sends ``x-claude-code-session-id`` (and a session in ``metadata.user_id``), Codex
``session-id``, OpenCode ``x-session-id``. Without one, the turns of a conversation are grouped
by a fingerprint of its beginning (system prompt and first user message), which every later
turn repeats; a request with nothing to fingerprint gets a session of its own.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

_SESSION_HEADERS = (b"x-claude-code-session-id", b"session-id", b"x-session-id", b"conversation-id")
_USER_ID_SESSION = re.compile(r"session_([0-9A-Za-z-]{8,})")


def session_id(
    headers: list[tuple[bytes, bytes]],
    body: Mapping[str, Any] | None,
    principal: str,
    record_id: str,
) -> str:
    for name in _SESSION_HEADERS:
        for key, value in headers:
            if key == name and value:
                return value.decode("latin-1")[:200]
    if body is not None:
        metadata = body.get("metadata")
        if isinstance(metadata, dict):
            user_id = metadata.get("user_id")
            if isinstance(user_id, str) and user_id:
                match = _USER_ID_SESSION.search(user_id)
                if match:
                    return match.group(1)
        prefix = conversation_prefix(body)
        if prefix is not None:
            digest = hashlib.sha256(principal.encode() + b"\0" + orjson.dumps(prefix)).hexdigest()
            return "fp_" + digest[:20]
    return "req_" + record_id


def conversation_prefix(body: Mapping[str, Any]) -> list[Any] | None:
    """The part of a request every later turn of the same conversation repeats, or None."""
    messages = body.get("messages")
    if isinstance(messages, list):  # OpenAI chat, Anthropic
        system = body.get("system")
        head: list[Any] = [system] if system else []
        for message in messages:
            if not isinstance(message, dict):
                continue
            role = message.get("role")
            head.append([role, message.get("content")])
            if role == "user":
                return head
        return None
    items = body.get("input")
    if isinstance(items, str):  # Responses, one-shot
        return [body.get("instructions"), items]
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and item.get("role") == "user":
                return [body.get("instructions"), item.get("content")]
        return None
    contents = body.get("contents")
    if isinstance(contents, list):  # Gemini
        system = body.get("systemInstruction") or body.get("system_instruction")
        for content in contents:
            if isinstance(content, dict) and content.get("role", "user") == "user":
                return [system, content.get("parts")]
    return None
