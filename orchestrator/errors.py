"""One tree of domain errors. The HTTP layer maps them to contract bodies in one place (api/errors.py)."""

from __future__ import annotations

from typing import Any

from orchestrator.core.vocabulary import ErrorCode


class SwitchyardError(Exception):
    """Root of every error this code base raises on purpose."""

    code = "internal"

    def __init__(self, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidRequest(SwitchyardError):
    """The request is malformed or fails validation; nothing was changed."""

    code = "invalid_request"


class DefinitionInvalid(InvalidRequest):
    """A workflow definition was refused; ``details.problems`` lists every reason."""


class PayloadTooLarge(SwitchyardError):
    """A value in the request is over its size limit; ``details`` say which and the limit."""

    code = "payload_too_large"


class NotFound(SwitchyardError):
    """No such thing in this tenant."""

    code = "not_found"


class Conflict(SwitchyardError):
    """The action clashes with the current state."""

    code = "conflict"


class WorkflowArchived(Conflict):
    """The workflow is archived (DELETE /workflows/{id}): it starts no run until a new version is published."""

    code = "workflow_archived"


class InvalidTransitionError(Conflict):
    """The run's status does not allow this action; details carry ``status`` and ``allowed_from``."""

    code = "invalid_transition"


class IdempotencyConflict(Conflict):
    """The same Idempotency-Key was used with a different body."""

    code = "idempotency_conflict"


class RuntimeNotApplicable(InvalidRequest):
    """A run action on a conversational workflow."""

    code = "runtime_not_applicable"


class Unauthorized(SwitchyardError):
    """No token, or a token that is unknown or revoked."""

    code = "unauthorized"


class Forbidden(SwitchyardError):
    """The token's role is too low for the action."""

    code = "forbidden"


# --- errors of a step's execution (raised by executors, mapped to outcomes by the worker) ---


class StepError(SwitchyardError):
    """A step attempt failed. Subclasses say whether another attempt may help."""

    code = "step_failed"
    retryable = True

    def __init__(self, message: str, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message, details)
        if code:
            self.code = code


class RetryableStepError(StepError):
    """A failure another attempt may cure (a tool error, a timeout, a provider hiccup)."""


class PermanentStepError(StepError):
    """A failure no retry can cure (bad arguments, a template error, an unknown tool)."""

    retryable = False


class InvalidArguments(PermanentStepError):
    """A tool's arguments do not fit its argument schema (or the tool's own checks): the step error
    ``invalid_arguments``; another attempt with the same arguments cannot help. ``details`` may name the
    ``tool``, the ``field`` and the ``problems``."""

    code = "invalid_arguments"

    def __init__(self, message: str, details: dict[str, Any] | None = None):
        super().__init__(message, details=details)


class StepCancelled(StepError):
    """The step stopped because its run was cancelled or failed elsewhere."""

    code = ErrorCode.RUN_STOPPED.value
    retryable = False
