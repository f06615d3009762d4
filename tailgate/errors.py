"""The gateway's one error hierarchy, and how each error is written in the caller's dialect.

    GatewayError                     500  the base; also "internal error"
    ├── BadRequest                   400  malformed JSON, missing model, bad field
    │   └── EndpointNotEnabled       400  the model's provider does not serve this endpoint
    ├── Unauthenticated              401  a revoked, expired or unknown gateway API key
    ├── AccessDenied                 403  no role granted, model not granted, unknown caller
    ├── NotFound                     404  unknown path
    │   └── UnknownModel             404  no enabled provider serves the model
    ├── MethodNotAllowed             405
    ├── PayloadTooLarge              413
    ├── QuotaExceeded                429  a quota bucket is empty; carries Retry-After
    ├── UpstreamUnreachable          502  connect failure, reset, garbage from the upstream
    ├── IdentityUnavailable          503  the identity source (tailscaled) cannot be asked
    ├── QuotaUnavailable             503  quota balances cannot be read (the store is down)
    └── UpstreamTimeout              504

Domain code raises these and never builds a response. The edge renders them with
:func:`error_body` (JSON) or :func:`stream_error_event` (inside an already-started stream).
Messages are written for the person reading them; they never contain a provider key.
"""

from __future__ import annotations

import orjson

from tailgate.dialects import Dialect


class GatewayError(Exception):
    status: int = 500
    openai_type: str = "server_error"
    openai_code: str | None = "internal_error"
    anthropic_type: str = "api_error"
    gemini_status: str = "INTERNAL"

    def __init__(self, message: str, *, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class BadRequest(GatewayError):
    status = 400
    openai_type = "invalid_request_error"
    openai_code = "invalid_request"
    anthropic_type = "invalid_request_error"
    gemini_status = "INVALID_ARGUMENT"


class EndpointNotEnabled(BadRequest):
    openai_code = "unsupported_endpoint"


class Unauthenticated(GatewayError):
    status = 401
    openai_type = "invalid_request_error"
    openai_code = "invalid_api_key"
    anthropic_type = "authentication_error"
    gemini_status = "UNAUTHENTICATED"


class AccessDenied(GatewayError):
    status = 403
    openai_type = "permission_error"
    openai_code = "access_denied"
    anthropic_type = "permission_error"
    gemini_status = "PERMISSION_DENIED"


class NotFound(GatewayError):
    status = 404
    openai_type = "invalid_request_error"
    openai_code = "not_found"
    anthropic_type = "not_found_error"
    gemini_status = "NOT_FOUND"


class UnknownModel(NotFound):
    openai_code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    openai_type = "invalid_request_error"
    openai_code = "method_not_allowed"
    anthropic_type = "invalid_request_error"
    gemini_status = "INVALID_ARGUMENT"


class PayloadTooLarge(GatewayError):
    status = 413
    openai_type = "invalid_request_error"
    openai_code = "request_too_large"
    anthropic_type = "request_too_large"
    gemini_status = "INVALID_ARGUMENT"


class QuotaExceeded(GatewayError):
    status = 429
    openai_type = "insufficient_quota"
    openai_code = "insufficient_quota"
    anthropic_type = "rate_limit_error"
    gemini_status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after: int, buckets: tuple[str, ...] = ()) -> None:
        super().__init__(message, headers=(("retry-after", str(max(1, retry_after))),))
        self.retry_after = max(1, retry_after)
        self.buckets = buckets


class UpstreamUnreachable(GatewayError):
    status = 502
    openai_type = "server_error"
    openai_code = "upstream_unreachable"
    anthropic_type = "api_error"
    gemini_status = "UNAVAILABLE"


class IdentityUnavailable(GatewayError):
    status = 503
    openai_type = "server_error"
    openai_code = "identity_unavailable"
    anthropic_type = "api_error"
    gemini_status = "UNAVAILABLE"


class QuotaUnavailable(GatewayError):
    """503: the quota balances cannot be read, so requests that use quotas are refused."""

    status = 503
    openai_type = "server_error"
    openai_code = "quota_unavailable"
    anthropic_type = "api_error"
    gemini_status = "UNAVAILABLE"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers=(("retry-after", str(max(1, retry_after))),))
        self.retry_after = max(1, retry_after)


class UpstreamTimeout(GatewayError):
    status = 504
    openai_type = "server_error"
    openai_code = "upstream_timeout"
    anthropic_type = "timeout_error"
    gemini_status = "DEADLINE_EXCEEDED"


def error_body(error: GatewayError, dialect: Dialect) -> bytes:
    """The JSON error body for ``error`` in the caller's dialect."""
    if dialect is Dialect.ANTHROPIC:
        anthropic = {"type": error.anthropic_type, "message": error.message}
        return orjson.dumps({"type": "error", "error": anthropic})
    if dialect is Dialect.GEMINI:
        gemini = {"code": error.status, "message": error.message, "status": error.gemini_status}
        return orjson.dumps({"error": gemini})
    if isinstance(error, QuotaExceeded):
        # The exact body Aperture documents for an exhausted bucket (no "param").
        return orjson.dumps(
            {"error": {"message": error.message, "type": error.openai_type, "code": error.openai_code}}
        )
    return orjson.dumps(
        {
            "error": {
                "message": error.message,
                "type": error.openai_type,
                "param": None,
                "code": error.openai_code,
            }
        }
    )


def stream_error_event(error: GatewayError, dialect: Dialect, *, responses_api: bool = False) -> bytes:
    """An SSE event that ends a stream with ``error`` after the 200 status was already sent."""
    if dialect is Dialect.ANTHROPIC:
        payload = {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}}
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
    if dialect is Dialect.GEMINI:
        payload = {"error": {"code": error.status, "message": error.message, "status": error.gemini_status}}
        return b"data: " + orjson.dumps(payload) + b"\n\n"
    if responses_api:
        payload2: dict[str, object] = {
            "type": "error",
            "code": error.openai_code,
            "message": error.message,
            "param": None,
        }
        return b"event: error\ndata: " + orjson.dumps(payload2) + b"\n\n"
    return b"data: " + error_body(error, Dialect.OPENAI) + b"\n\n"
