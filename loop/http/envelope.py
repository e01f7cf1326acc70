"""The HTTP layer's values: the one error type (`HttpError`), the response, and the JSON
envelope every answer is wrapped in.

    success: {"success": true,  "message": "…" | null, "data": …}
    failure: {"success": false, "message": "human sentence", "error": "machine_code",
              "data": null}

Errors are values at the edges: `HttpError` and the media domain's `MediaError` become the
failure envelope in one place, `Api.handle` (loop/http/api.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 408: "bad_request", 409: "conflict",
                411: "length_required", 413: "payload_too_large", 414: "bad_request",
                415: "unsupported_media", 421: "forbidden", 422: "validation_failed",
                429: "rate_limited", 431: "bad_request", 500: "internal",
                501: "not_implemented", 503: "busy", 507: "insufficient_storage"}


class HttpError(Exception):
    """A protocol-level refusal (framing, admission, deadlines) answered before or instead of
    the route's own answer."""

    def __init__(self, status: int, code: str, message: str, headers=None, close=False):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        self.close = close


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)
    route_class: str = "none"  # the route's rate class, set by the API; for /metrics
    # A streamed body instead of `body`: an iterable of byte chunks adding up to exactly
    # `length` bytes (sent as Content-Length). Iterated while the answer is written, after the
    # admission slot is released; an iterable that fails or comes up short cuts the connection.
    stream: Iterable[bytes] | None = None
    length: int = 0

    @property
    def content_length(self) -> int:
        return self.length if self.stream is not None else len(self.body)


def json_bytes(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def envelope(status: int, data, message: str | None = None, headers=None) -> Response:
    body = json_bytes({"success": True, "message": message, "data": data})
    return Response(status, body, "application/json", dict(headers or {}))


def envelope_error(status: int, code: str, message: str) -> Response:
    body = json_bytes({"success": False, "message": message, "error": code, "data": None})
    return Response(status, body, "application/json", {})


