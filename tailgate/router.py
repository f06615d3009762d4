"""Which handler answers a request: the inference endpoints by pattern, the rest by exact path.

The inference surface is matched on its ``:method`` suffix, not its prefix, because
``GET /v1/models`` (a list) and ``POST /v1/models/{m}:generateContent`` (Gemini) share one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tailgate.dialects import Dialect, Operation
from tailgate.http.messages import Request, Response, StreamingResponse

Handler = Callable[[Request], Awaitable[Response | StreamingResponse | None]]

_BODY_MODEL_PATHS: dict[str, Operation] = {
    "/v1/chat/completions": Operation.CHAT_COMPLETIONS,
    "/chat/completions": Operation.CHAT_COMPLETIONS,
    "/v1/responses": Operation.RESPONSES,
    "/v1/messages": Operation.MESSAGES,
    "/v1/messages/count_tokens": Operation.COUNT_TOKENS,
}
_GEMINI_METHODS: dict[str, Operation] = {
    "generateContent": Operation.GENERATE_CONTENT,
    "streamGenerateContent": Operation.STREAM_GENERATE_CONTENT,
    "countTokens": Operation.GEMINI_COUNT_TOKENS,
}
_GEMINI_PREFIXES = ("/v1beta/models/", "/v1/models/")


def match_inference(path: str) -> tuple[Operation, str | None] | None:
    """The inference operation at ``path`` and, for Gemini, the model named in the path."""
    operation = _BODY_MODEL_PATHS.get(path)
    if operation is not None:
        return operation, None
    for prefix in _GEMINI_PREFIXES:
        if path.startswith(prefix):
            model, sep, method = path[len(prefix) :].rpartition(":")
            gemini = _GEMINI_METHODS.get(method) if sep else None
            if gemini is not None and model:
                return gemini, model
    return None


def dialect_for_path(path: str) -> Dialect:
    """The API dialect a caller of ``path`` speaks (for error bodies on any path)."""
    if path.startswith("/v1/messages"):
        return Dialect.ANTHROPIC
    if path.startswith("/v1beta/") or (path.startswith("/v1/models/") and ":" in path):
        return Dialect.GEMINI
    return Dialect.OPENAI


class Router:
    """Exact-path routes with per-method handlers, plus prefix routes (``/ui/``, ``/api/logs/``)."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._prefixes: list[tuple[str, dict[str, Handler]]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._exact.setdefault(path, {})[method] = handler
        if method == "GET":
            self._exact[path].setdefault("HEAD", handler)

    def add_prefix(self, method: str, prefix: str, handler: Handler) -> None:
        for existing, handlers in self._prefixes:
            if existing == prefix:
                handlers[method] = handler
                return
        self._prefixes.append((prefix, {method: handler}))
        self._prefixes.sort(key=lambda item: -len(item[0]))

    def lookup(self, path: str) -> dict[str, Handler] | None:
        """The handlers by method for ``path``, or None when nothing is mounted there."""
        handlers = self._exact.get(path)
        if handlers is not None:
            return handlers
        for prefix, prefixed in self._prefixes:
            if path.startswith(prefix):
                return prefixed
        return None
