"""One error hierarchy for the whole server, and the one place that maps it to HTTP."""

from __future__ import annotations

import math


class GobError(Exception):
    """Base of every error the server raises on purpose."""

    #: HTTP status this error maps to.
    status = 500
    #: Prometheus API errorType for JSON endpoints.
    error_type = "internal"


class BadRequest(GobError):
    """The client sent data that can never succeed: never retried by senders."""

    status = 400
    error_type = "bad_data"


class Unauthorized(GobError):
    """No credential, or not a valid one (or no tenant where one is required)."""

    status = 401
    error_type = "unauthorized"

    def __init__(self, message: str, challenge: str = ""):
        super().__init__(message)
        #: WWW-Authenticate scheme to ask for ("Basic" or "Bearer"), if any.
        self.challenge = challenge


class Forbidden(GobError):
    """A valid credential asked for something it may not do (another tenant's data)."""

    status = 403
    error_type = "forbidden"


class PayloadTooLarge(BadRequest):
    """A body is over a compressed or decompressed size limit."""

    status = 413


class UnsupportedMediaType(BadRequest):
    """Wrong Content-Type or Content-Encoding."""

    status = 415


class TooManyRequests(GobError):
    """A rate limit was hit; retry after ``retry_after`` seconds."""

    status = 429
    error_type = "unavailable"

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(GobError):
    """The server is overloaded or shutting down; retry after ``retry_after`` seconds."""

    status = 503
    error_type = "unavailable"

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class ExecutionError(GobError):
    """A query that parsed but cannot be evaluated, or that passed a query limit: 422,
    Prometheus' errorType "execution"."""

    status = 422
    error_type = "execution"


class QueryTimeout(GobError):
    """A query ran past its timeout: 503, Prometheus' errorType "timeout"."""

    status = 503
    error_type = "timeout"


class QueryCanceled(GobError):
    """The client went away before its query finished (Prometheus' ``errorCanceled``)."""

    status = 499  # "client closed request", the status Prometheus answers it with
    error_type = "canceled"


class ConfigError(GobError):
    """A configuration key has a bad value; the message names the key."""


def http_status(exc: BaseException) -> int:
    """Return the HTTP status for an exception; unknown ones are server errors."""
    if isinstance(exc, GobError):
        return exc.status
    return 500


def response_headers(exc: BaseException) -> dict[str, str]:
    """HTTP headers an error answer carries: Retry-After, WWW-Authenticate."""
    headers: dict[str, str] = {}
    retry = retry_after(exc)
    if retry is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    challenge = getattr(exc, "challenge", "")
    if challenge:
        headers["WWW-Authenticate"] = f'{challenge} realm="gob-metrics"'
    return headers


def retry_after(exc: BaseException) -> float | None:
    """Seconds a sender should wait before retrying, for statuses that ask for it."""
    value = getattr(exc, "retry_after", None)
    if value is not None:
        return float(value)
    if http_status(exc) >= 500:
        return 1.0
    return None
