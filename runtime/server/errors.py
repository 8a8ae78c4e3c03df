"""The one error shape every refusal takes: OpenAI's `{"error": {"message", "type", "param", "code"}}`
with a 4xx/5xx status. Nothing else (no traceback, no plain text) ever reaches a client."""

from __future__ import annotations

from dataclasses import dataclass, field

#: OpenAI's error types by HTTP status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}


@dataclass
class APIError(Exception):
    """A request refused (4xx) or failed (5xx). headers: extra response headers (Retry-After)."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)
