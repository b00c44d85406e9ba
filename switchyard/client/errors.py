"""One exception per error code of the API, under one root that carries what the API said.

The API answers every error as ``{"error": {"code", "message", "details"}}``; ``error_for`` maps a
code to its class here, in one place (a test holds ``ERRORS`` to the codes the API answers). A code this
client does not know yet becomes an ``ApiError``. A step's failure is no refusal: its code
(``invalid_arguments``, ``policy_denied``, …) is in the run's ``models.StepError``, not an exception.
"""

from __future__ import annotations

from typing import Any


class SwitchyardClientError(Exception):
    """The root of every error this client raises."""


class ApiError(SwitchyardClientError):
    """The API refused the request: its ``code``, ``message`` and ``details``, and the HTTP ``status``."""

    code = "api_error"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None,
                 status: int = 0, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or type(self).code
        self.details = details or {}
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ValidationFailed(ApiError):
    """400 invalid_request: a malformed body or parameter, an input or definition the API refused."""

    code = "invalid_request"


class RuntimeNotApplicable(ApiError):
    """400 runtime_not_applicable: a run action on a conversational workflow."""

    code = "runtime_not_applicable"


class Unauthorized(ApiError):
    """401: no token, or one the API does not know (or revoked)."""

    code = "unauthorized"


class Forbidden(ApiError):
    """403: the token's role is too low for the action."""

    code = "forbidden"


class NotFound(ApiError):
    """404: no such thing in the token's tenant."""

    code = "not_found"


class MethodNotAllowed(ApiError):
    """405: the path exists, not with this method."""

    code = "method_not_allowed"


class InvalidTransition(ApiError):
    """409: the action does not apply to the run's status (``details``: ``status``, ``allowed_from``)."""

    code = "invalid_transition"


class IdempotencyConflict(ApiError):
    """409: the Idempotency-Key was used before with another body (``details.run_id``: the first run)."""

    code = "idempotency_conflict"


class WorkflowArchived(ApiError):
    """409: the workflow is archived; publishing a new version restores it."""

    code = "workflow_archived"


class PayloadTooLarge(ApiError):
    """413: the body (or the run's input) is over the API's limit."""

    code = "payload_too_large"


class RateLimited(ApiError):
    """429: over the tenant's rate limit; ``retry_after`` says when to try again."""

    code = "rate_limited"


class Unavailable(ApiError):
    """503: the API's database does not answer; ``retry_after`` says when to try again."""

    code = "unavailable"


class InternalError(ApiError):
    """500: the API failed; the request was not applied."""

    code = "internal"


class Unreachable(SwitchyardClientError):
    """No answer from the API: wrong URL, server down, network error or timeout."""


class WaitTimeout(SwitchyardClientError, TimeoutError):
    """``wait`` gave up before the run ended; ``run`` is the run as last read."""

    def __init__(self, message: str, run: Any = None):
        super().__init__(message)
        self.run = run


ERRORS: dict[str, type[ApiError]] = {cls.code: cls for cls in (
    ValidationFailed, RuntimeNotApplicable, Unauthorized, Forbidden, NotFound, MethodNotAllowed,
    InvalidTransition, IdempotencyConflict, WorkflowArchived, PayloadTooLarge, RateLimited, Unavailable,
    InternalError,
)}


def error_for(status: int, body: Any, retry_after: str | None = None) -> ApiError:
    """The exception for an error answer; a body not in the API's shape still gives an ``ApiError``."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ApiError(f"HTTP {status} without an error body", code=f"http_{status}", status=status)
    code = str(error.get("code") or f"http_{status}")
    cls = ERRORS.get(code, ApiError)
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
    wait = float(retry_after) if retry_after and retry_after.isdigit() else None
    return cls(str(error.get("message") or code), code=code, details=details, status=status, retry_after=wait)
