"""One error type for the whole request path.

Every failure a client can see is an :class:`ApiError`: it carries the HTTP status and renders the
body both the product's clients (``detail``) and the official ``openai`` SDKs (``error``) understand.
"""

from __future__ import annotations

from typing import Any

import orjson

# OpenAI's ``error.type`` for each status we answer with; the SDKs pick their exception class from
# the status, the type is for humans and for clients that switch on it.
_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    501: "server_error",
    502: "upstream_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}

_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limit_exceeded",
    500: "internal_error",
    501: "not_implemented",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}


class ApiError(Exception):
    """An error answered to the client as JSON with a fixed status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODES.get(status, "error")
        self.param = param
        self.type = type or _TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        self.headers = headers or []

    def error_object(self) -> dict[str, Any]:
        """OpenAI's ``error`` object."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def to_dict(self) -> dict[str, Any]:
        return {"detail": self.message, "error": self.error_object()}

    def body(self) -> bytes:
        return orjson.dumps(self.to_dict())


def shown(text: str, limit: int = 128) -> str:
    """Client-controlled text as it may appear in an error or log message: cut to ``limit``
    characters, so that a huge path, field name or value costs nothing to scrub and log."""
    return text if len(text) <= limit else text[:limit] + "..."


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(message: str, code: str = "not_found", param: str | None = None) -> ApiError:
    return ApiError(404, message, code=code, param=param)


def client_closed() -> ApiError:
    """The client went away before its answer (nginx's 499: only ever seen in logs and metrics)."""
    return ApiError(499, "The client closed the request", code="client_closed_request")


def answer_too_large(size: int, limit: int, n: int) -> ApiError:
    """An answer over ``IIR_MAX_ANSWER_BYTES``: the request asked for more text than one answer
    may carry (``n`` choices of a long text), so it is refused rather than built in memory."""
    return ApiError(
        400,
        f"The answer would hold {size} bytes over {n} choice(s), more than the {limit} bytes "
        "one answer may carry (IIR_MAX_ANSWER_BYTES); ask for fewer choices ('n') or fewer "
        "tokens ('max_tokens')",
        code="answer_too_large",
        param="n" if n > 1 else "max_tokens",
    )
